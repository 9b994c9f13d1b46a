import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmil.transforms import LungMask, LungMaskd, lung_mask_hu, lung_mask_windowed
from tests.conftest import simple_chest

AXIS = 1  # these tests use ctmil's (1, S, H, W) slice stacks; tests/transforms/test_layouts.py covers the others


def _meta(arr: np.ndarray, spacing, intensity: str = "hu") -> MetaTensor:
    """A LoadCT-like MetaTensor: ``(1, S, H, W)`` with the affine of ``spacing`` (dz, dy, dx) and ctmil's intensity record."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(arr), affine=affine, meta={"intensity": intensity})


@pytest.mark.parametrize("as_torch", [False, True])
def test_lung_mask_finds_both_lungs_not_air_or_couch(as_torch):
    vol = simple_chest()
    img = torch.from_numpy(vol)[None] if as_torch else vol[None]
    mask = LungMask(intensity="hu", working_mm=1.0, slice_axis=AXIS)(img)
    assert isinstance(mask, torch.Tensor) == as_torch
    m = np.asarray(mask)[0]
    assert m.shape == vol.shape and m.dtype == bool
    yy, xx = np.mgrid[: vol.shape[1], : vol.shape[2]]
    inner = (vol < -500) & ((yy > 30) & (yy < 70) & (((xx > 14) & (xx < 44)) | ((xx > 52) & (xx < 82))))[None]
    assert m[inner].mean() > 0.99  # lungs inside
    assert not m[:, :12].any() and not m[:, -12:].any()  # outside air and the air around the couch excluded
    assert not m[:2].any() and not m[-2:].any()  # slices without lung stay empty


def test_dense_consolidation_along_the_chest_wall_stays_inside():
    vol = simple_chest(lesion=True)  # no ribs: the 8 mm dilation of before the chest-wall growth keeps it inside
    m = lung_mask_hu(vol, spacing=(5.0, 1.0, 1.0), working_mm=1.0, dilate_mm=8.0)[0]
    lesion = vol[6] == 20.0  # the consolidation of the right lung
    assert lesion.sum() > 100
    assert m[6][lesion].mean() > 0.9


def test_stride_follows_pixel_spacing():
    vol = simple_chest(size=96)
    small, stride = lung_mask_hu(vol, spacing=(5.0, 0.75, 0.75), working_mm=3.0)
    assert stride == 4 and small.shape == (vol.shape[0], 24, 24)


def test_windowed_mask_on_synthetic_lung_window():
    vol = np.clip((simple_chest() + 1000.0) / 1100.0, 0, 1)  # a crude lung window
    m = lung_mask_windowed(vol)
    assert m[6, 50, 29] and m[6, 50, 67] and not m[6, 80, 48] and not m[6, 2, 2]


def test_intensity_none_reads_ctmils_record():
    vol = np.clip((simple_chest() + 1000.0) / 1100.0, 0, 1)
    img = MetaTensor(torch.from_numpy(vol)[None], meta={"intensity": "windowed"})
    assert np.asarray(LungMask(slice_axis=AXIS)(img))[0, 6, 50, 29]
    d = LungMaskd("image", mask_key="lung", slice_axis=AXIS)({"image": img})
    assert "lung" in d and d["lung"].shape == img.shape


@pytest.mark.parametrize("kwargs", [{"intensity": "ct"}, {"intensity": "auto"}, {"min_component_fraction": 0.0}, {"working_mm": 0},
                                    {"slice_axis": 0}, {"slice_axis": 4}, {"spacing": (1.0, 0.0, 1.0)}, {"spacing": (1.0, 1.0)}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LungMask(**kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match="one-channel 3D image"):
        LungMask(intensity="hu")(np.zeros((4, 8, 8)))


# --- working grid: LungMask.working_mask, LungMaskd(full_resolution=False), the z grid ---


def _repeat_crop(mask: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    full = np.repeat(np.repeat(np.asarray(mask), stride, axis=-2), stride, axis=-1)
    return full[..., : shape[0], : shape[1]]


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("size,spacing,working_mm,stride", [
    (96, None, 3.0, 3),  # plain arrays: 1 mm pixels assumed
    (97, None, 4.0, 4),  # H, W not multiples of the stride: the full mask is cropped
    (100, (2.0, 0.5, 0.5), 4.0, 8),
    (98, (5.0, 0.75, 0.75), 3.0, 4),
])
def test_full_mask_is_the_working_mask_repeated_and_cropped(as_torch, size, spacing, working_mm, stride):
    vol = simple_chest(size=size)
    arr = vol[None]
    if spacing is not None:
        img = _meta(arr, spacing)
    else:
        img = torch.from_numpy(arr) if as_torch else arr
    masker = LungMask(intensity="hu" if spacing is None else None, working_mm=working_mm, slice_axis=AXIS)
    small, got_stride = masker.working_mask(img)
    full = masker(img)
    assert got_stride == stride
    is_torch = isinstance(img, torch.Tensor)
    assert isinstance(small, torch.Tensor) == is_torch and isinstance(full, torch.Tensor) == is_torch
    small, full = np.asarray(small), np.asarray(full)
    assert small.dtype == bool and full.dtype == bool
    assert small.shape == (1, vol.shape[0], _ceil(size, stride), _ceil(size, stride))
    assert full.shape == (1, *vol.shape)
    np.testing.assert_array_equal(full, _repeat_crop(small, stride, (size, size)))
    np.testing.assert_array_equal(small[0], lung_mask_hu(vol, spacing, working_mm=working_mm)[0])
    assert small[0, 6].any() and not small[0, 0].any()  # lungs in the middle, none in the first slice


@pytest.mark.parametrize("source", ["meta", "argument"])
@pytest.mark.parametrize("as_torch", [False, True])
def test_windowed_working_mask_has_stride_one(source, as_torch):
    vol = np.clip((simple_chest() + 1000.0) / 1100.0, 0, 1).astype(np.float32)
    if source == "meta":
        img, masker = _meta(vol[None], (1.0, 0.5, 0.5), "windowed"), LungMask(slice_axis=AXIS)
    else:
        img, masker = (torch.from_numpy(vol)[None] if as_torch else vol[None]), LungMask(intensity="windowed", slice_axis=AXIS)
    small, stride = masker.working_mask(img)
    assert stride == 1 and tuple(small.shape) == tuple(img.shape)
    assert isinstance(small, torch.Tensor) == isinstance(img, torch.Tensor)
    np.testing.assert_array_equal(np.asarray(small), np.asarray(masker(img)))
    np.testing.assert_array_equal(np.asarray(small)[0], lung_mask_windowed(vol))


def test_working_mask_rejects_bad_shape():
    with pytest.raises(ValueError, match="one-channel 3D image"):
        LungMask(intensity="hu").working_mask(np.zeros((2, 3, 8, 8)))


def _lung_cells(vol: np.ndarray, stride: int) -> np.ndarray:
    """Lung voxels (below -500 HU inside the body) of ``simple_chest`` at the working grid points."""
    truth = np.zeros(vol.shape, bool)
    truth[:, 30:71, 12:85] = vol[:, 30:71, 12:85] < -500
    return truth[:, ::stride, ::stride]


def test_z_grid_keeps_every_slice_and_empty_ends():
    vol = simple_chest(n_slices=12)
    m, stride = lung_mask_hu(vol, (1.0, 1.0, 1.0), working_mm=2.0)  # stride 2, z_stride 2
    assert stride == 2 and m.shape == (12, 48, 48) and m.dtype == bool
    assert not m[0].any() and not m[-2:].any()  # far from any lung: empty
    assert m[5].sum() > _lung_cells(vol, 2)[5].sum()  # a mid-chest slice: both lungs, generously
    # 6 working slices for 12 slices: every slice shares its mask with a neighbour, at most 6 distinct masks
    assert len({m[s].tobytes() for s in range(12)}) <= 6
    assert all(np.array_equal(m[s], m[s - 1]) or np.array_equal(m[s], m[s + 1]) for s in range(1, 11))
    # working_mm = pixel size: no z grid, the mask follows the phantom slice by slice
    fine = lung_mask_hu(vol, (1.0, 1.0, 1.0), working_mm=1.0)[0]
    assert fine.shape == vol.shape and [bool(fine[s].any()) for s in range(12)] == [2 <= s <= 9 for s in range(12)]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.4, 1.0, 1.0), (0.5, 1.0, 1.0), (0.6, 1.0, 1.0), (1.5, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_z_grid_every_lung_slice_is_inside_its_own_mask(spacing):
    """Whatever the z stride, the lung voxels of each slice lie in that slice's mask (the slab that sampled
    the slice's air is the one whose mask the slice takes)."""
    vol = simple_chest(n_slices=12)
    m, stride = lung_mask_hu(vol, spacing, working_mm=2.0)
    truth = _lung_cells(vol, stride)
    missed = {s: int((truth[s] & ~m[s]).sum()) for s in range(vol.shape[0]) if (truth[s] & ~m[s]).any()}
    assert not missed, f"lung cells outside their slice's mask (slice: count): {missed}"


@pytest.mark.parametrize("parity", [0, 1])
def test_z_grid_lung_air_in_any_slice_of_a_slab_counts(parity):
    """Lungs whose air shows only in every other slice (the others consolidated): per slice they are separate
    pieces, but on the 2-slice working grid every slab holds air and the lungs are found on all lung slices."""
    vol = simple_chest(n_slices=12)
    for s in range(2, 10):
        if s % 2 != parity:
            vol[s][vol[s] == -850.0] = 40.0
    air_slices = [s for s in range(2, 10) if s % 2 == parity]
    truth = _lung_cells(vol, 2)
    assert all(truth[s].sum() > 100 for s in air_slices)
    m, stride = lung_mask_hu(vol, (1.0, 1.0, 1.0), working_mm=2.0)
    assert stride == 2 and m.shape == (12, 48, 48)
    for s in air_slices:
        assert int((truth[s] & ~m[s]).sum()) == 0, f"slice {s}: its lung air is outside its mask"
    assert not m[0].any() and not m[-1].any()
    # slice by slice (no z grid: spacing None or thick slices) the pieces are separate components and only
    # the largest one or two are kept: fewer slices get a mask
    per_slice = lung_mask_hu(vol, None, working_mm=2.0)[0]
    np.testing.assert_array_equal(per_slice, lung_mask_hu(vol, (5.0, 1.0, 1.0), working_mm=2.0)[0])
    assert sum(per_slice[s].any() for s in air_slices) < len(air_slices)


def test_spacing_none_keeps_z_stride_one():
    vol = simple_chest(n_slices=12)
    m, stride = lung_mask_hu(vol, None, working_mm=2.0)
    assert stride == 2 and m.shape == (12, 48, 48)
    assert [bool(m[s].any()) for s in range(12)] == [2 <= s <= 9 for s in range(12)]
    np.testing.assert_array_equal(m, lung_mask_hu(vol, (5.0, 1.0, 1.0), working_mm=2.0)[0])  # z_stride round(0.4) → 1
    # slices with the same content get the same mask; slices differ where the phantom differs
    assert np.array_equal(m[4], m[7]) and not np.array_equal(m[3], m[4])


@pytest.mark.parametrize("as_meta", [False, True])
def test_lung_maskd_working_resolution_writes_mask_and_stride(as_meta):
    vol = simple_chest(size=100)
    img = _meta(vol[None], (2.0, 0.5, 0.5)) if as_meta else vol[None]
    stride = 8 if as_meta else 4
    d = LungMaskd("image", mask_key="lung", full_resolution=False, intensity="hu", slice_axis=AXIS)({"image": img, "other": 1})
    assert d["lung_stride"] == stride and isinstance(d["lung_stride"], int)
    assert tuple(d["lung"].shape) == (1, 12, _ceil(100, stride), _ceil(100, stride))
    assert isinstance(d["lung"], torch.Tensor) == as_meta
    assert d["image"] is img and d["other"] == 1
    full = LungMaskd("image", mask_key="lung", intensity="hu", slice_axis=AXIS)({"image": img})
    assert "lung_stride" not in full and tuple(full["lung"].shape) == (1, 12, 100, 100)
    np.testing.assert_array_equal(np.asarray(full["lung"]), _repeat_crop(d["lung"], stride, (100, 100)))


@pytest.mark.parametrize("size,spacing", [
    (96, (2.0, 0.5, 0.5)),  # stride 8, z_stride 2
    (100, (2.0, 0.5, 0.5)),  # stride 8, 100 not a multiple of it
    (96, (2.0, 1.0, 1.0)),  # stride 4
    (97, (5.0, 0.75, 0.75)),  # stride 5, z_stride 1
])
def test_working_resolution_chain_matches_full_resolution_chain(size, spacing):
    from ctmil.transforms import LungBoxCropd, SelectLungSlicesd

    vol = simple_chest(n_slices=12, size=size)

    def chain(full_resolution):
        img = _meta(vol.copy()[None], spacing)
        d = LungMaskd("image", mask_key="lung", full_resolution=full_resolution, slice_axis=AXIS)({"image": img})
        d = SelectLungSlicesd(["image", "lung"], source_key="lung", slice_axis=AXIS)(d)
        return LungBoxCropd("image", source_key="lung", spatial_size=(18, 24), slice_axis=AXIS)(d)

    coarse, full = chain(False), chain(True)
    assert coarse["lung_stride"] > 1 or spacing[1] == 1.0
    np.testing.assert_array_equal(coarse["kept_slices"], full["kept_slices"])
    np.testing.assert_array_equal(coarse["boxes"], full["boxes"])
    assert torch.equal(coarse["image"], full["image"])
    assert coarse["lung"].shape[-2:] != full["lung"].shape[-2:]


@pytest.mark.parametrize("transposed", [False, True])
def test_the_second_lung_is_found_across_the_body_whatever_the_in_plane_order(transposed):
    """``simple_chest``'s lungs are not joined: the second one is kept for lying on the other side of the body,
    which the affine tells (world x); a plain array is read as displayed (columns across the body)."""
    vol = simple_chest()[None]  # (1, S, rows A→P, columns R→L)
    affine = torch.tensor([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)  # (s, r, c) → RAS
    if transposed:  # rows run across the body
        vol, affine = np.ascontiguousarray(vol.transpose(0, 1, 3, 2)), affine[:, [0, 2, 1, 3]]
    masker = LungMask(intensity="hu", working_mm=1.0, slice_axis=AXIS)
    both = np.asarray(masker(MetaTensor(torch.from_numpy(vol), affine=affine)))[0, 6]
    plain = np.asarray(masker(vol))[0, 6]
    both, plain = (both.T, plain.T) if transposed else (both, plain)
    assert both[50, 29] and both[50, 67]  # right and left lung
    assert masker.left_right_axis(MetaTensor(torch.from_numpy(vol), affine=affine)) == (1 if transposed else 2)
    assert (plain[50, 29] and plain[50, 67]) != transposed  # read as displayed, a transposed array loses one lung
