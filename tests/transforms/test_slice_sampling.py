"""Slice sampling to bound the bag size K (issue 12 point 2): the decision, applying it, and the bag it gives."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from ctmil.transforms import (
    LungBoxCropd, LungMaskd, SampleSlices, SampleSlicesd, SelectLungSlicesd, StoreCaseMetad, ToBagd, WindowHUd,
    preprocessing_transforms,
)

AXIS = 1  # ctmil's (1, S, H, W) stacks unless a test says otherwise


@pytest.mark.parametrize(
    "n,max_slices,slab_mm,spacing,expected",
    [
        (10, None, None, None, [[i] for i in range(10)]),
        (10, 5, None, None, [[1], [3], [5], [7], [9]]),  # the centre of each fifth
        (23, 18, None, None, [[i] for i in (0, 1, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 17, 18, 19, 21, 22)]),
        (5, 18, None, None, [[i] for i in range(5)]),  # fewer than max_slices: all
        (7, 1, None, None, [[3]]),
        (0, 3, None, None, []),
        (10, None, 10.0, 5.0, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]),
        (10, None, 4.0, 1.5, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]),  # round(4 / 1.5) = 3 slices, sizes as equal as can be
        (10, 2, 10.0, 5.0, [[2, 3], [6, 7]]),  # 5 slabs, then 2 of them
        (4, None, 1.0, 5.0, [[0], [1], [2], [3]]),  # slabs thinner than a slice: single slices
    ],
)
def test_groups(n, max_slices, slab_mm, spacing, expected):
    sampler = SampleSlices(max_slices, slab_mm, slice_axis=AXIS)
    assert sampler.compute_groups(n, spacing) == expected
    assert sampler.compute_groups(n, spacing) == expected  # deterministic: the same answer every time


@pytest.mark.parametrize("max_slices,n", [(18, 300), (8, 9), (18, 19), (3, 1000)])
def test_at_most_max_slices_distinct_and_spread(max_slices, n):
    picked = [g[0] for g in SampleSlices(max_slices, slice_axis=AXIS).compute_groups(n)]
    assert len(picked) == max_slices and picked == sorted(set(picked))
    gaps = np.diff(picked)
    assert gaps.max() - gaps.min() <= 1  # evenly spaced


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("slice_axis", [1, -1])
def test_apply_selects_and_averages(as_torch, slice_axis):
    img = np.arange(6, dtype=np.int16)[None, :, None, None] * np.ones((1, 6, 4, 5), np.int16)  # slice s holds s
    mask = np.zeros((1, 6, 4, 5), bool)
    mask[0, 1, 0, 0] = mask[0, 4, 3, 4] = True
    if slice_axis == -1:
        img, mask = np.moveaxis(img, 1, -1), np.moveaxis(mask, 1, -1)
    if as_torch:
        img, mask = torch.from_numpy(img), torch.from_numpy(mask)
    sampler = SampleSlices(slice_axis=slice_axis)
    picked = sampler(img, [[1], [4]])
    slabs, slab_mask = sampler(img, [[0, 1], [4, 5]]), sampler(mask, [[0, 1], [4, 5]])
    to_stack = (lambda x: np.moveaxis(np.asarray(x), -1, 1)) if slice_axis == -1 else np.asarray
    assert type(picked) is type(img) and to_stack(picked)[0, :, 0, 0].tolist() == [1, 4] and picked.dtype == img.dtype
    assert to_stack(slabs)[0, :, 2, 2].tolist() == [0.5, 4.5] and to_stack(slabs).dtype == np.float32
    assert to_stack(slab_mask).dtype == bool and to_stack(slab_mask)[0, 0, 0, 0] and to_stack(slab_mask)[0, 1, 3, 4]
    assert to_stack(slab_mask).sum() == 2


def test_spacing_for_slabs():
    stack = np.zeros((1, 8, 4, 4), np.float32)
    with pytest.raises(ValueError, match="needs the slice spacing"):
        SampleSlices(slab_mm=10.0, slice_axis=AXIS).groups_of(stack)
    assert len(SampleSlices(slab_mm=10.0, slice_axis=AXIS, spacing=2.5).groups_of(stack)) == 2
    meta = MetaTensor(torch.from_numpy(stack), affine=torch.diag(torch.tensor([5.0, 1.0, 1.0, 1.0])))
    assert len(SampleSlices(slab_mm=10.0, slice_axis=AXIS).groups_of(meta)) == 4  # from the affine
    meta.meta.update(input_kind="slices", spacing=None)  # LoadCT's slice images: no spacing, whatever the affine
    with pytest.raises(ValueError, match="slice images"):
        SampleSlices(slab_mm=10.0, slice_axis=AXIS).groups_of(meta)
    assert len(SampleSlices(max_slices=3, slice_axis=AXIS).groups_of(meta)) == 3  # max_slices needs no spacing


@pytest.mark.parametrize("args,match", [((0, None), "max_slices"), ((2.5, None), "max_slices"), ((True, None), "max_slices"),
                                        ((None, 0.0), "slab_mm"), ((None, float("inf")), "slab_mm"), ((None, "5"), "slab_mm")])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        SampleSlices(*args)


def test_dict_records_original_indices_groups_and_meta():
    img = MetaTensor(torch.arange(10.0)[None, :, None, None].expand(1, 10, 3, 3).contiguous(),
                     affine=torch.diag(torch.tensor([5.0, 1.0, 1.0, 1.0])))
    d = {"image": img, "lung": np.ones((1, 10, 3, 3), bool), "kept_slices": np.arange(3, 13), "image_meta": {"spacing": [5.0, 1, 1]}}
    out = SampleSlicesd(["image", "lung"], max_slices=2, slab_mm=10.0, slice_axis=AXIS)(d)
    assert out["slice_groups"] == [[5, 6], [9, 10]] and out["kept_slices"].tolist() == [6, 10]  # original indices, slab middle
    assert out["image"][0, :, 0, 0].tolist() == [2.5, 6.5] and out["lung"].shape == (1, 2, 3, 3)
    assert out["image_meta"]["slice_groups"] == [[5, 6], [9, 10]] and "slice_groups" not in d["image_meta"]  # input untouched
    op = out["image"].applied_operations[-1]
    assert op["class"] == "SampleSlices" and op["extra_info"]["slice_groups"] == [[2, 3], [6, 7]]
    assert float(out["image"].affine[0, 3]) == 15.0  # the affine starts at the first slab's middle slice (position 3)
    single = SampleSlicesd("image", max_slices=3, slice_axis=AXIS)({"image": img, "image_meta": {}})
    assert single["kept_slices"].tolist() == [1, 5, 8] and single["image_meta"] == {"n_lung_slices": 10}  # no slab groups
    assert out["image_meta"]["n_lung_slices"] == 10


def _phantom(tmp_path):
    from ctmil.synthetic.phantoms import generate_cohort

    generate_cohort(tmp_path, n=1, seed=5, formats=("nifti",), shape=(40, 96, 96), spacing=(4.0, 3.6, 3.6), progress=False)
    return str(tmp_path / "nifti" / "case_0000.nii.gz")


@pytest.fixture(scope="module")
def phantom_bags(tmp_path_factory):
    path = _phantom(tmp_path_factory.mktemp("sampling"))
    settings = {"all": {}, "n8": {"max_slices": 8}, "slab": {"slab_mm": 8.0}, "slab_n5": {"slab_mm": 8.0, "max_slices": 5}}
    bags = {k: preprocessing_transforms(**{"max_slices": None, **s})({"image": path, "case_id": "c", "label": 1.0}) for k, s in settings.items()}
    return path, bags


@pytest.mark.parametrize("name", ["all", "n8", "slab", "slab_n5"])
def test_bag_keys_stay_aligned_with_the_patches(phantom_bags, name):
    bag = phantom_bags[1][name]
    kept = bag["kept_slices"]
    assert bag["patches"].shape[0] == 12 * kept.numel() == 12 * bag["boxes"].shape[0] == bag["slice_index"].numel()
    assert torch.equal(bag["slice_index"], kept.repeat_interleave(12)) and torch.equal(bag["position"], torch.arange(12).repeat(kept.numel()))
    assert kept.numel() <= {"all": 99, "n8": 8, "slab": 99, "slab_n5": 5}[name]
    groups = bag["meta"].get("slice_groups")
    assert bag["meta"]["n_lung_slices"] == phantom_bags[1]["all"]["kept_slices"].numel()  # before sampling
    if name.startswith("slab"):
        assert [g[len(g) // 2] for g in groups] == kept.tolist() and {len(g) for g in groups} <= {1, 2}  # 8 mm of 4 mm slices
        if name == "slab":  # the slabs tile the kept lung range
            assert sum(groups, []) == phantom_bags[1]["all"]["kept_slices"].tolist()
    else:
        assert groups is None


def test_sampled_slices_are_those_of_the_full_bag(phantom_bags):
    """Without slabs a sampled bag is a subset of the full one: same slices, boxes and patches (painting maps back)."""
    full, sampled = phantom_bags[1]["all"], phantom_bags[1]["n8"]
    assert full["kept_slices"].numel() > 8
    where = [full["kept_slices"].tolist().index(s) for s in sampled["kept_slices"].tolist()]
    assert torch.equal(full["boxes"][where], sampled["boxes"])
    rows = torch.tensor([12 * w + p for w in where for p in range(12)])
    assert torch.equal(full["patches"][rows], sampled["patches"])


def test_monai_loader_compose_samples_like_ctmils_chain(phantom_bags):
    """LoadImaged + Orientationd (spatial-last) with SampleSlicesd gives ctmil's sampled bag, bit for bit."""
    path, bags = phantom_bags
    user = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        Orientationd(keys="image", axcodes="PLS", labels=None),
        StoreCaseMetad(keys="image", intensity="hu", slice_axis=-1),
        LungMaskd(keys="image", mask_key="lung", intensity="hu", full_resolution=False, slice_axis=-1),
        SelectLungSlicesd(keys=["image", "lung"], source_key="lung", slice_axis=-1),
        SampleSlicesd(keys=["image", "lung"], max_slices=5, slab_mm=8.0, slice_axis=-1),
        LungBoxCropd(keys="image", source_key="lung", slice_axis=-1),
        WindowHUd(keys="image", intensity="hu"),
        ToBagd(keys="image", slice_axis=-1),
    ])
    bag, ref = user({"image": path, "case_id": "c", "label": 1.0}), bags["slab_n5"]
    for key in ("patches", "position", "slice_index", "kept_slices", "boxes"):
        assert torch.equal(bag[key], ref[key]), key
    assert bag["slice_groups"] == bag["image_meta"]["slice_groups"] == ref["meta"]["slice_groups"]
