import numpy as np
import pytest
import torch

from ctmil.transforms import LungBoxCrop, LungBoxCropd, NormalizePatches, SelectLungSlices, SelectLungSlicesd, TilePatches

AXIS = 1  # these tests use ctmil's (1, S, H, W) slice stacks; tests/transforms/test_layouts.py covers the others


def _mask(n=6, h=40, w=50):
    m = np.zeros((1, n, h, w), bool)
    m[0, 1, 10:20, 5:15] = True
    m[0, 2, 8:30, 5:45] = True
    m[0, 3, 5:35, 2:48] = True
    m[0, 4, 12:14, 20:22] = True  # a sliver of lung
    return m


@pytest.mark.parametrize("frac,expected", [(0.05, [1, 2, 3]), (0.5, [2, 3]), (0.7, [3]), (0.001, [1, 2, 3, 4])])
def test_slice_selection_by_area_fraction(frac, expected):
    assert SelectLungSlices(frac, slice_axis=AXIS).compute_kept_slices(_mask()).tolist() == expected


@pytest.mark.parametrize("as_torch", [False, True])
def test_slice_selection_applies_to_images(as_torch):
    img = np.arange(6 * 40 * 50, dtype=np.float32).reshape(1, 6, 40, 50)
    img = torch.from_numpy(img) if as_torch else img
    out = SelectLungSlices(0.05, slice_axis=AXIS)(img, mask=_mask())
    assert tuple(out.shape) == (1, 3, 40, 50)
    assert float(out[0, 0, 0, 0]) == float(img[0, 1, 0, 0])


def test_a_slice_inside_the_lung_run_stays_even_with_little_lung():
    """Slices 1 and 3 qualify at 0.5; slice 2 between them has some lung (a consolidated slice) and stays, slice 4
    after the run does not."""
    m = _mask()
    m[0, 2] = False
    m[0, 2, 12:14, 20:22] = True  # 4 px: far below half of the largest slice
    m[0, 1, 5:35, 2:48] = True
    assert SelectLungSlices(0.5, slice_axis=AXIS).compute_kept_slices(m).tolist() == [1, 2, 3]


def test_non_contiguous_selection_and_recorded_indices():
    m = _mask()
    m[0, 2] = False
    d = SelectLungSlicesd(["image", "lung"], source_key="lung", min_area_fraction=0.05, slice_axis=AXIS)({"image": np.zeros((1, 6, 40, 50)), "lung": m})
    assert d["kept_slices"].tolist() == [1, 3] and d["image"].shape[1] == 2
    d2 = SelectLungSlicesd(["image", "lung"], source_key="lung", min_area_fraction=1.0, slice_axis=AXIS)(d)
    assert d2["kept_slices"].tolist() == [3]  # composed with the earlier selection


@pytest.mark.parametrize("mask,err", [(np.zeros((1, 3, 8, 8), bool), "no lungs"), (np.zeros((3, 8, 8), bool), "expected")])
def test_slice_selection_errors(mask, err):
    with pytest.raises(ValueError, match=err):
        SelectLungSlices(slice_axis=AXIS).compute_kept_slices(mask)


def test_boxes_are_tight_with_margin_and_empty_slices_get_the_union():
    boxes = LungBoxCrop(margin_fraction=0.0, slice_axis=AXIS).compute_boxes(_mask())
    assert boxes[1].tolist() == [10, 5, 20, 15]
    assert boxes[3].tolist() == [5, 2, 35, 48]
    assert boxes[0].tolist() == [5, 2, 35, 48]  # no lung on slice 0: union box
    grown = LungBoxCrop(margin_fraction=0.1, slice_axis=AXIS).compute_boxes(_mask())
    assert grown[1].tolist() == [9, 4, 21, 16] and grown[3].tolist() == [2, 0, 38, 50]  # clipped at the image edge


@pytest.mark.parametrize("as_torch", [False, True])
def test_crop_resamples_only_the_box(as_torch):
    img = np.zeros((1, 2, 100, 120), np.float32)
    img[0, :, 20:50, 30:90] = 1.0
    boxes = np.array([[20, 30, 50, 90], [0, 0, 100, 120]])
    out = LungBoxCrop((18, 24), margin_fraction=0, slice_axis=AXIS)(torch.from_numpy(img) if as_torch else img, boxes)
    assert isinstance(out, torch.Tensor) == as_torch  # numpy in, numpy out
    out = torch.as_tensor(out)
    assert out.shape == (1, 2, 18, 24) and out.dtype == torch.float32
    assert torch.allclose(out[0, 0], torch.ones(18, 24))  # the box is all ones
    assert 0.1 < out[0, 1].mean() < 0.25  # the whole image: the square covers 15 %


def test_crop_dict_records_boxes():
    d = LungBoxCropd("image", source_key="lung", slice_axis=AXIS)({"image": np.random.rand(1, 6, 40, 50).astype(np.float32), "lung": _mask()})
    assert d["image"].shape == (1, 6, 180, 240) and d["boxes"].shape == (6, 4)


def test_tiling_positions_and_content():
    s = 2
    img = torch.zeros(1, s, 180, 240)
    for r in range(3):
        for c in range(4):
            img[0, :, r * 60 : (r + 1) * 60, c * 60 : (c + 1) * 60] = r * 4 + c
    img[0, 1] += 100
    patches, pos, order = TilePatches(slice_axis=AXIS)(img)
    assert patches.shape == (24, 1, 60, 60)
    assert pos.tolist() == list(range(12)) * 2 and order.tolist() == [0] * 12 + [1] * 12
    for k in range(24):
        assert torch.all(patches[k] == pos[k] + 100 * order[k])


@pytest.mark.parametrize("shape", [(1, 2, 170, 240), (2, 2, 180, 240)])
def test_tiling_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        TilePatches(slice_axis=AXIS)(torch.zeros(shape))


def test_normalize_each_patch_independently():
    x = torch.stack([torch.linspace(-1000, 0, 3600).reshape(1, 60, 60), torch.full((1, 60, 60), 7.0), torch.rand(1, 60, 60) * 5 + 3])
    y = NormalizePatches()(x.numpy())
    assert torch.isclose(y[0].min(), torch.tensor(0.0)) and torch.isclose(y[0].max(), torch.tensor(1.0))
    assert torch.all(y[1] == 0)  # flat patch
    assert torch.isclose(y[2].min(), torch.tensor(0.0)) and torch.isclose(y[2].max(), torch.tensor(1.0))


# --- boxes from a mask on a coarser working grid (LungMask.working_mask / LungMaskd(full_resolution=False)) ---


def _repeat_crop(coarse: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """The full-size mask of a working-grid mask: each cell repeated ``stride`` times, cropped to (H, W)."""
    full = np.repeat(np.repeat(coarse, stride, axis=-2), stride, axis=-1)
    return full[..., : shape[0], : shape[1]]


def _random_coarse_mask(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """(1, n, h, w): per slice a random rectangle plus a few scattered cells; some slices empty, some touching
    the last row / column (where the full-size mask is cropped)."""
    m = np.zeros((1, n, h, w), bool)
    for s in range(n):
        kind = rng.integers(4)
        if kind == 0:
            continue  # no lung on this slice: it gets the union box
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        r1, c1 = rng.integers(r0, h) + 1, rng.integers(c0, w) + 1
        if kind == 3:  # reach the bottom-right border
            r1, c1 = h, w
        m[0, s, r0:r1, c0:c1] = True
        m[0, s, rng.integers(0, h, 2), rng.integers(0, w, 2)] = True
    m[0, int(rng.integers(n)), h // 2, w // 2] = True  # never an all-empty stack
    return m


@pytest.mark.parametrize("margin", [0.0, 0.1])
@pytest.mark.parametrize(
    "stride,shape",
    [(1, (20, 17)), (2, (40, 30)), (2, (41, 29)), (3, (30, 33)), (3, (31, 35)), (4, (48, 36)), (4, (50, 37)), (4, (49, 45))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_of_a_coarse_mask_equal_boxes_of_the_repeated_full_mask(seed, stride, shape, margin):
    rng = np.random.default_rng(seed * 100 + stride)
    h, w = -(-shape[0] // stride), -(-shape[1] // stride)  # ceil: the working-grid shape
    coarse = _random_coarse_mask(rng, 7, h, w)
    full = _repeat_crop(coarse, stride, shape)
    assert full.shape == (1, 7, *shape)
    cropper = LungBoxCrop(margin_fraction=margin, slice_axis=AXIS)
    expected = cropper.compute_boxes(full)
    got = cropper.compute_boxes(coarse, stride, shape)
    assert got.dtype == expected.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    assert np.all(got[:, 2] <= shape[0]) and np.all(got[:, 3] <= shape[1]) and np.all(got[:, :2] >= 0)
    # torch masks give the same boxes
    np.testing.assert_array_equal(cropper.compute_boxes(torch.from_numpy(coarse), stride, shape), expected)


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_coarse_boxes_default_image_shape_is_the_uncropped_grid(stride):
    coarse = _random_coarse_mask(np.random.default_rng(7), 5, 9, 11)
    full = _repeat_crop(coarse, stride, (9 * stride, 11 * stride))
    cropper = LungBoxCrop(margin_fraction=0.1, slice_axis=AXIS)
    np.testing.assert_array_equal(cropper.compute_boxes(coarse, stride), cropper.compute_boxes(full))


def test_coarse_boxes_known_values_with_clipping_and_union():
    coarse = np.zeros((1, 3, 13, 10), bool)  # H=50, W=37 at stride 4: 13 x 10 cells, last ones cropped
    coarse[0, 0, 2:5, 1:3] = True
    coarse[0, 2, 10:13, 7:10] = True  # reaches the cropped border cells
    boxes = LungBoxCrop(margin_fraction=0.0, slice_axis=AXIS).compute_boxes(coarse, 4, (50, 37))
    assert boxes[0].tolist() == [8, 4, 20, 12]
    assert boxes[2].tolist() == [40, 28, 50, 37]  # 52 → 50 and 40 → 37: clipped to the image
    assert boxes[1].tolist() == [8, 4, 50, 37]  # no lung: the union box
    grown = LungBoxCrop(margin_fraction=0.1, slice_axis=AXIS).compute_boxes(coarse, 4, (50, 37))
    assert grown[0].tolist() == [6, 3, 22, 13] and grown[2].tolist() == [39, 27, 50, 37]


@pytest.mark.parametrize("stride", [0, -1])
def test_coarse_boxes_reject_bad_stride(stride):
    with pytest.raises(ValueError, match="stride"):
        LungBoxCrop(slice_axis=AXIS).compute_boxes(_mask(), stride)


@pytest.mark.parametrize("stride,shape", [(1, (40, 50)), (4, (50, 37)), (3, (31, 35))])
def test_crop_dict_reads_the_mask_stride(stride, shape):
    h, w = -(-shape[0] // stride), -(-shape[1] // stride)
    coarse = _random_coarse_mask(np.random.default_rng(stride), 4, h, w)
    img = torch.rand(1, 4, *shape)
    d = {"image": img, "lung": coarse}
    if stride > 1:
        d["lung_stride"] = stride
    out = LungBoxCropd("image", source_key="lung", spatial_size=(18, 24), slice_axis=AXIS)(d)
    expected = LungBoxCrop((18, 24), slice_axis=AXIS).compute_boxes(_repeat_crop(coarse, stride, shape))
    np.testing.assert_array_equal(out["boxes"], expected)
    assert torch.allclose(out["image"], LungBoxCrop((18, 24), slice_axis=AXIS)(img, expected))


# --- the whole preprocessing chain on a tiny DICOM / NIfTI phantom ---


def _true_lungs(vol: np.ndarray) -> np.ndarray:
    """Lung voxels of ``simple_chest``: below -500 HU in rows 30..70, columns 12..84 (inside the body)."""
    truth = np.zeros(vol.shape, bool)
    truth[:, 30:71, 12:85] = vol[:, 30:71, 12:85] < -500
    return truth


def _write_case(tmp_path, fmt, vol, spacing):
    from ctmil.synthetic.dicom_writer import write_dicom_series
    from ctmil.synthetic.phantoms import write_nifti

    if fmt == "dicom":
        write_dicom_series(vol, spacing, tmp_path / "dcm", rng=11)
        return str(tmp_path / "dcm")
    return str(write_nifti(vol.astype(np.int16), spacing, tmp_path / "ct.nii.gz"))


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
@pytest.mark.parametrize("spacing", [(5.0, 1.0, 1.0), (2.0, 1.0, 1.0), (2.0, 0.75, 0.75)])
def test_preprocessing_bag_boxes_contain_the_true_lungs(tmp_path, fmt, spacing):
    from ctmil.transforms import preprocessing_transforms
    from tests.conftest import simple_chest

    vol = simple_chest(n_slices=12)
    bag = preprocessing_transforms()({"image": _write_case(tmp_path, fmt, vol, spacing), "case_id": "c", "label": 1.0})
    truth = _true_lungs(vol)
    kept, boxes = bag["kept_slices"].numpy(), bag["boxes"].numpy()
    assert kept.size > 0 and boxes.shape == (kept.size, 4)
    assert bag["patches"].shape == (12 * kept.size, 2, 60, 60)  # min-max and window
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 96) and np.all(boxes[:, 3] <= 96)
    for s, (r0, c0, r1, c1) in zip(kept.tolist(), boxes.tolist()):
        outside = truth[s].copy()
        outside[r0:r1, c0:c1] = False
        assert int(outside.sum()) == 0, f"slice {s}: {outside.sum()} lung voxels outside its box {(r0, c0, r1, c1)}"
        if truth[s].any():  # both lungs: the box spans the two of them (right lung from column 14, left to 81), not one
            cols = np.flatnonzero(truth[s].any(0))
            assert c0 <= 14 <= cols[0] and c1 > cols[-1] >= 75
    assert bag["meta"]["spacing"] == pytest.approx(spacing)


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
@pytest.mark.parametrize("spacing", [(5.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_preprocessing_keeps_exactly_the_slices_with_lung(tmp_path, fmt, spacing):
    """Slices 2..9 of ``simple_chest`` hold lung (the smallest at 0.36 of the largest area, above the 0.2
    threshold), slices 0, 1, 10, 11 none: the bag holds exactly 2..9 whatever the working grid along z."""
    from ctmil.transforms import preprocessing_transforms
    from tests.conftest import simple_chest

    vol = simple_chest(n_slices=12)
    bag = preprocessing_transforms()({"image": _write_case(tmp_path, fmt, vol, spacing), "case_id": "c", "label": 1.0})
    with_lung = np.flatnonzero(_true_lungs(vol).any(axis=(1, 2))).tolist()
    assert with_lung == list(range(2, 10))
    assert bag["kept_slices"].tolist() == with_lung
