import pytest
import torch

from ctmil.networks import DIRECTION_OFFSETS, DIRECTIONS, pairs_for_batch, relative_pairs
from tests.networks._bags import make_bag


def _row_col(p):
    return divmod(int(p), 4)


def _check_geometry(pairs, labels, position, slice_index):
    """Every pair: same slice, anchor at 5 or 6, (row, col) difference equals its label's offset."""
    for (i, j), lab in zip(pairs.tolist(), labels.tolist()):
        assert slice_index[i] == slice_index[j]
        assert int(position[i]) in (5, 6)
        (ri, ci), (rj, cj) = _row_col(position[i]), _row_col(position[j])
        assert (rj - ri, cj - ci) == DIRECTION_OFFSETS[lab]


def test_direction_convention():
    assert DIRECTIONS == ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
    assert len(set(DIRECTION_OFFSETS)) == 8 and (0, 0) not in DIRECTION_OFFSETS


def test_complete_slice_is_fig7():
    position = torch.arange(12)
    pairs, labels = relative_pairs(position, torch.zeros(12, dtype=torch.long))
    # a0 = position 5 with neighbours 0,1,2,4,6,8,9,10; b0 = position 6 with 1,2,3,5,7,9,10,11
    expected = [(5, q) for q in (0, 1, 2, 4, 6, 8, 9, 10)] + [(6, q) for q in (1, 2, 3, 5, 7, 9, 10, 11)]
    assert pairs.tolist() == [list(e) for e in expected]
    assert labels.tolist() == list(range(8)) * 2
    _check_geometry(pairs, labels, position, torch.zeros(12))


BAG_CASES = [
    # (n_slices, dropped instance indices, expected pair count)
    (1, (), 16),
    (3, (), 48),
    (2, (5,), 16 - 8 - 1 + 16),  # a0 of slice 0 missing: its 8 pairs and (b0, left) vanish
    (2, (0, 11), 16 - 1 - 1 + 16),  # corners: one pair each
    (1, (5, 6), 0),  # no anchor left
    (2, tuple(range(12)), 16),  # a whole slice missing
    (1, (1, 2, 9, 10), 16 - 4 - 4),  # the four neighbours shared by both anchors
]


@pytest.mark.parametrize("n_slices,drop,n_pairs", BAG_CASES)
def test_pairs_follow_grid_geometry(n_slices, drop, n_pairs):
    bag = make_bag(n_slices, seed=0, drop=drop)
    pairs, labels = relative_pairs(bag["position"], bag["slice_index"])
    assert pairs.shape == (n_pairs, 2) and labels.shape == (n_pairs,)
    assert pairs.dtype == torch.long and labels.dtype == torch.long
    _check_geometry(pairs, labels, bag["position"], bag["slice_index"])
    assert len(set(map(tuple, pairs.tolist()))) == n_pairs


def test_order_of_instances_does_not_matter():
    bag = make_bag(3, seed=0, drop=(3, 17))
    perm = torch.randperm(bag["position"].numel(), generator=torch.Generator().manual_seed(0))
    pos, sl = bag["position"][perm], bag["slice_index"][perm]
    pairs, labels = relative_pairs(pos, sl)
    ref_pairs, ref_labels = relative_pairs(bag["position"], bag["slice_index"])
    assert pairs.shape == ref_pairs.shape
    _check_geometry(pairs, labels, pos, sl)
    as_orig = {(int(perm[i]), int(perm[j]), lab) for (i, j), lab in zip(pairs.tolist(), labels.tolist())}
    assert as_orig == {(i, j, lab) for (i, j), lab in zip(ref_pairs.tolist(), ref_labels.tolist())}


def test_batch_padding():
    bags = [make_bag(2, 0), make_bag(1, 1, drop=(6,)), make_bag(1, 2, drop=(5, 6))]
    k_max = 24
    position = torch.full((3, k_max), -1)
    slice_index = torch.full((3, k_max), -1)
    for i, b in enumerate(bags):
        position[i, : b["position"].numel()] = b["position"]
        slice_index[i, : b["slice_index"].numel()] = b["slice_index"]
    pairs, labels = pairs_for_batch(position, slice_index)
    assert pairs.shape == (3, 32, 2) and labels.shape == (3, 32)
    for i, n in enumerate((32, 8 - 1, 0)):
        assert (labels[i, :n] >= 0).all() and (labels[i, n:] == -1).all() and (pairs[i, n:] == -1).all()
        ref_pairs, ref_labels = relative_pairs(position[i], slice_index[i])
        assert torch.equal(pairs[i, :n], ref_pairs) and torch.equal(labels[i, :n], ref_labels)


@pytest.mark.parametrize(
    "position,slice_index",
    [
        (torch.tensor([5, 12]), torch.tensor([0, 0])),  # position out of grid
        (torch.tensor([5, -2]), torch.tensor([0, 0])),
        (torch.tensor([5, 5]), torch.tensor([3, 3])),  # duplicate (slice, position)
        (torch.tensor([[5]]), torch.tensor([[0]])),  # not (K,)
        (torch.tensor([5.0]), torch.tensor([0])),  # float
    ],
)
def test_bad_inputs_raise(position, slice_index):
    with pytest.raises(ValueError):
        relative_pairs(position, slice_index)


def test_empty_inputs():
    pairs, labels = relative_pairs(torch.full((4,), -1), torch.full((4,), -1))
    assert pairs.shape == (0, 2) and labels.shape == (0,)
    pairs, labels = pairs_for_batch(torch.full((2, 4), -1), torch.full((2, 4), -1))
    assert pairs.shape == (2, 0, 2) and labels.shape == (2, 0)
