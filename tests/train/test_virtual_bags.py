"""VirtualBagHandler on an Ignite Engine whose update returns scripted step outputs."""

from __future__ import annotations

import io
import math

import pytest
import torch
from ignite.engine import Engine, Events

from ctmil.data.bags import BagDataset
from ctmil.train.handlers.virtual_bags import VirtualBagHandler
from tests.train._bags import make_bags, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ALPHA, GAMMA = 0.025, 0.2


def step_output(ds, i, prob, attention=None, is_virtual=False):
    """The step output of a batch holding bag ``i`` of ``ds`` alone."""
    k = ds.bag_size(i)
    if attention is None:
        attention = torch.arange(k, dtype=torch.float32).roll(i)  # a distinct permutation per bag
    return {
        "prob": torch.tensor([prob]),
        "label": ds[i]["label"].reshape(1),
        "attention": (attention / attention.sum()).reshape(1, k),
        "mask": torch.ones(1, k, dtype=torch.bool),
        "case_id": [ds[i]["case_id"]],
        "is_virtual": torch.tensor([is_virtual]),
    }


class Sink:
    def __init__(self):
        self.calls = []

    def __call__(self, refs):
        self.calls.append([r.clone() for r in refs])


def run(handler, outputs, epochs=1):
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.run(outputs, max_epochs=epochs)
    return engine


@pytest.mark.parametrize(
    "label,prob,is_virtual,collected",
    [
        (1, 0.9, False, True),
        (1, 0.5, False, True),  # prob >= 0.5 counts as severe
        (1, 0.49, False, False),  # positive bag predicted wrongly
        (0, 0.9, False, False),  # negative bag
        (0, 0.1, False, False),
        (1, 0.9, True, False),  # virtual bags never feed the pools
    ],
)
def test_only_correct_real_positive_bags_fill_the_pools(label, prob, is_virtual, collected):
    ds = BagDataset(make_bags([label, 1 - label], 4))
    handler = VirtualBagHandler(ds, Sink(), start_epoch=5)
    run(handler, [step_output(ds, 0, prob, is_virtual=is_virtual)])
    assert (handler.key_pool.shape[0] > 0) == collected
    assert (handler.regular_pool.shape[0] > 0) == collected


@pytest.mark.parametrize("n_slices", [1, 4, 10, 20])
def test_pool_sizes_and_members(n_slices):
    ds = BagDataset(make_bags([1, 0], [n_slices, 1]))
    k = 12 * n_slices
    attention = torch.rand(k, generator=torch.Generator().manual_seed(n_slices)) + 0.01
    handler = VirtualBagHandler(ds, Sink(), alpha=ALPHA, gamma=GAMMA, start_epoch=5)
    run(handler, [step_output(ds, 0, 0.8, attention)])
    n_key = max(1, math.floor(ALPHA * k))
    n_reg = max(1, math.floor(GAMMA * k))
    assert handler.key_pool.shape == (n_key, 2) and handler.regular_pool.shape == (n_reg, 2)
    assert (handler.key_pool[:, 0] == 0).all() and (handler.regular_pool[:, 0] == 0).all()
    ranked = torch.argsort(attention, descending=True)
    assert set(handler.key_pool[:, 1].tolist()) == set(ranked[:n_key].tolist())
    assert set(handler.regular_pool[:, 1].tolist()) == set(ranked[k - n_reg :].tolist())


def test_split_sizes_of_tiny_bags_never_overlap():
    handler = VirtualBagHandler(BagDataset(make_bags([1, 0])), Sink())
    assert handler.split_sizes(12) == (1, 2)  # floor(0.3) = 0 -> 1 key instance
    assert handler.split_sizes(1) == (1, 0)
    assert handler.split_sizes(2) == (1, 1)
    assert handler.split_sizes(100) == (2, 20)


def test_virtual_bags_are_published_from_start_epoch_on():
    # 2 positives, 4 negatives -> 2 virtual bags by default
    ds = BagDataset(make_bags([1, 1, 0, 0, 0, 0], [2, 3, 2, 2, 2, 2]))
    outputs = [step_output(ds, 0, 0.9), step_output(ds, 1, 0.2), step_output(ds, 2, 0.7), step_output(ds, 3, 0.1)]
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=3, seed=0)
    published_at = []
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: published_at.append((e.state.epoch, len(sink.calls))))
    engine.run(outputs, max_epochs=4)
    assert published_at == [(1, 0), (2, 0), (3, 1), (4, 2)]  # nothing before epoch 3, then every epoch
    mean_k = sum(ds.bag_size(i) for i in range(len(ds))) / len(ds)
    n_key, n_reg = max(1, math.floor(ALPHA * mean_k)), math.floor((1 - ALPHA) * mean_k)
    for bags in sink.calls:
        assert len(bags) == 2
        for refs in bags:
            assert refs.shape == (n_key + n_reg, 2)
            assert set(refs[:, 0].tolist()) == {0}  # only bag 0 was a correctly predicted positive
    key = set(map(tuple, handler.key_pool.tolist()))
    regular = set(map(tuple, handler.regular_pool.tolist()))
    last = [set(map(tuple, r.tolist())) for r in sink.calls[-1]]
    for refs in last:
        assert len(refs & key) >= 1 and refs <= key | regular
    assert engine.state.metrics["n_virtual_bags"] == 2


@pytest.mark.parametrize("n_bags,expected", [(None, 3), (0, 0), (5, 5)])
def test_number_of_virtual_bags(n_bags, expected):
    ds = BagDataset(make_bags([1, 0, 0, 0, 0]))
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=1, n_bags=n_bags)
    run(handler, [step_output(ds, 0, 0.9)])
    assert len(sink.calls[-1]) == expected


@pytest.mark.parametrize("gap_fraction,expected", [(1.0, 7), (0.5, 4), (0.0, 0), (2.0, 14)])
def test_share_of_the_class_gap(gap_fraction, expected):
    ds = BagDataset(make_bags([1] + [0] * 8))  # a gap of 7
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=1, gap_fraction=gap_fraction)
    run(handler, [step_output(ds, 0, 0.9)])
    assert handler.n_bags == expected == len(sink.calls[-1])
    from ctmil.train.handlers.virtual_bags import virtual_slots

    assert virtual_slots(ds, None, True, gap_fraction) == expected  # the data loader makes room for exactly these


def test_ramp_grows_the_number_of_virtual_bags_from_the_start_epoch():
    ds = BagDataset(make_bags([1] + [0] * 7))  # a gap of 6
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=2, ramp_epochs=3)
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    counts = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: counts.append(len(handler.virtual)))
    engine.run([step_output(ds, 0, 0.9)], max_epochs=6)
    assert counts == [0, 2, 4, 6, 6, 6]  # ceil(6 k / 3) at the k-th epoch from epoch 2, then all 6
    assert [handler.count(e) for e in range(1, 7)] == counts


def test_no_correct_positive_means_no_virtual_bags():
    ds = BagDataset(make_bags([1, 0, 0]))
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=1)
    run(handler, [step_output(ds, 0, 0.1), step_output(ds, 1, 0.9)])
    assert sink.calls == [[]]


def test_pools_reset_every_epoch():
    ds = BagDataset(make_bags([1, 0, 0], 2))
    handler = VirtualBagHandler(ds, Sink(), start_epoch=10)
    run(handler, [step_output(ds, 0, 0.9)] * 3, epochs=2)
    assert handler.key_pool.shape[0] == 3 * max(1, math.floor(ALPHA * 24))  # one epoch's worth, not two


def test_skips_none_outputs():
    ds = BagDataset(make_bags([1, 0]))
    handler = VirtualBagHandler(ds, Sink(), start_epoch=1)
    run(handler, [None, step_output(ds, 0, 0.9), None])
    assert handler.key_pool.shape[0] == 1


def test_state_dict_round_trip_through_weights_only_file():
    ds = BagDataset(make_bags([1, 1, 0, 0, 0], 2))
    sink = Sink()
    handler = VirtualBagHandler(ds, sink, start_epoch=1, seed=3)
    run(handler, [step_output(ds, 0, 0.9), step_output(ds, 1, 0.8)], epochs=2)
    buffer = io.BytesIO()
    torch.save(handler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    sink2 = Sink()
    restored = VirtualBagHandler(ds, sink2, start_epoch=1, seed=99)
    restored.load_state_dict(state)
    assert len(sink2.calls) == 1 and all(torch.equal(a, b) for a, b in zip(sink2.calls[0], handler.virtual))
    assert torch.equal(restored.key_pool, handler.key_pool) and torch.equal(restored.regular_pool, handler.regular_pool)
    assert restored.made_at_epoch == handler.made_at_epoch == 2
    for a, b in zip(restored.make_bags(), handler.make_bags()):  # same RNG state -> same draws
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"gamma": -0.1}, {"start_epoch": 0}, {"n_bags": -1}, {"alpha": True},
              {"gap_fraction": -0.5}, {"gap_fraction": "1"}, {"ramp_epochs": -1}, {"ramp_epochs": 1.5}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        VirtualBagHandler(BagDataset(make_bags([1, 0])), Sink(), **kwargs)
