import numpy as np
import pytest
import torch

from ctmil.transforms import LungBoxCrop, LungBoxCropd, NormalizePatches, SelectLungSlices, SelectLungSlicesd, TilePatches


def _mask(n=6, h=40, w=50):
    m = np.zeros((1, n, h, w), bool)
    m[0, 1, 10:20, 5:15] = True
    m[0, 2, 8:30, 5:45] = True
    m[0, 3, 5:35, 2:48] = True
    m[0, 4, 12:14, 20:22] = True  # a sliver of lung
    return m


@pytest.mark.parametrize("frac,expected", [(0.05, [1, 2, 3]), (0.5, [2, 3]), (0.7, [3]), (0.001, [1, 2, 3, 4])])
def test_slice_selection_by_area_fraction(frac, expected):
    assert SelectLungSlices(frac).compute_kept_slices(_mask()).tolist() == expected


@pytest.mark.parametrize("as_torch", [False, True])
def test_slice_selection_applies_to_images(as_torch):
    img = np.arange(6 * 40 * 50, dtype=np.float32).reshape(1, 6, 40, 50)
    img = torch.from_numpy(img) if as_torch else img
    out = SelectLungSlices(0.05)(img, mask=_mask())
    assert tuple(out.shape) == (1, 3, 40, 50)
    assert float(out[0, 0, 0, 0]) == float(img[0, 1, 0, 0])


def test_non_contiguous_selection_and_recorded_indices():
    m = _mask()
    m[0, 2] = False
    d = SelectLungSlicesd(["image", "lung"], source_key="lung", min_area_fraction=0.05)({"image": np.zeros((1, 6, 40, 50)), "lung": m})
    assert d["kept_slices"].tolist() == [1, 3] and d["image"].shape[1] == 2
    d2 = SelectLungSlicesd(["image", "lung"], source_key="lung", min_area_fraction=1.0)(d)
    assert d2["kept_slices"].tolist() == [3]  # composed with the earlier selection


@pytest.mark.parametrize("mask,err", [(np.zeros((1, 3, 8, 8), bool), "no lungs"), (np.zeros((3, 8, 8), bool), "expected")])
def test_slice_selection_errors(mask, err):
    with pytest.raises(ValueError, match=err):
        SelectLungSlices().compute_kept_slices(mask)


def test_boxes_are_tight_with_margin_and_empty_slices_get_the_union():
    boxes = LungBoxCrop(margin_fraction=0.0).compute_boxes(_mask())
    assert boxes[1].tolist() == [10, 5, 20, 15]
    assert boxes[3].tolist() == [5, 2, 35, 48]
    assert boxes[0].tolist() == [5, 2, 35, 48]  # no lung on slice 0: union box
    grown = LungBoxCrop(margin_fraction=0.1).compute_boxes(_mask())
    assert grown[1].tolist() == [9, 4, 21, 16] and grown[3].tolist() == [2, 0, 38, 50]  # clipped at the image edge


@pytest.mark.parametrize("as_torch", [False, True])
def test_crop_resamples_only_the_box(as_torch):
    img = np.zeros((1, 2, 100, 120), np.float32)
    img[0, :, 20:50, 30:90] = 1.0
    boxes = np.array([[20, 30, 50, 90], [0, 0, 100, 120]])
    out = LungBoxCrop((18, 24), margin_fraction=0)(torch.from_numpy(img) if as_torch else img, boxes)
    assert out.shape == (1, 2, 18, 24) and out.dtype == torch.float32
    assert torch.allclose(out[0, 0], torch.ones(18, 24))  # the box is all ones
    assert 0.1 < out[0, 1].mean() < 0.25  # the whole image: the square covers 15 %


def test_crop_dict_records_boxes():
    d = LungBoxCropd("image", source_key="lung")({"image": np.random.rand(1, 6, 40, 50).astype(np.float32), "lung": _mask()})
    assert d["image"].shape == (1, 6, 180, 240) and d["boxes"].shape == (6, 4)


def test_tiling_positions_and_content():
    s = 2
    img = torch.zeros(1, s, 180, 240)
    for r in range(3):
        for c in range(4):
            img[0, :, r * 60 : (r + 1) * 60, c * 60 : (c + 1) * 60] = r * 4 + c
    img[0, 1] += 100
    patches, pos, order = TilePatches()(img)
    assert patches.shape == (24, 1, 60, 60)
    assert pos.tolist() == list(range(12)) * 2 and order.tolist() == [0] * 12 + [1] * 12
    for k in range(24):
        assert torch.all(patches[k] == pos[k] + 100 * order[k])


@pytest.mark.parametrize("shape", [(1, 2, 170, 240), (2, 2, 180, 240)])
def test_tiling_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        TilePatches()(torch.zeros(shape))


def test_normalize_each_patch_independently():
    x = torch.stack([torch.linspace(-1000, 0, 3600).reshape(1, 60, 60), torch.full((1, 60, 60), 7.0), torch.rand(1, 60, 60) * 5 + 3])
    y = NormalizePatches()(x.numpy())
    assert torch.isclose(y[0].min(), torch.tensor(0.0)) and torch.isclose(y[0].max(), torch.tensor(1.0))
    assert torch.all(y[1] == 0)  # flat patch
    assert torch.isclose(y[2].min(), torch.tensor(0.0)) and torch.isclose(y[2].max(), torch.tensor(1.0))
