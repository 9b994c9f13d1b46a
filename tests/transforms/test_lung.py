import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmil.transforms import LungMask, LungMaskd, lung_mask_hu, lung_mask_windowed
from tests.conftest import simple_chest


@pytest.mark.parametrize("as_torch", [False, True])
def test_lung_mask_finds_both_lungs_not_air_or_couch(as_torch):
    vol = simple_chest()
    img = torch.from_numpy(vol)[None] if as_torch else vol[None]
    mask = LungMask(intensity="hu", working_mm=1.0)(img)
    assert isinstance(mask, torch.Tensor) == as_torch
    m = np.asarray(mask)[0]
    assert m.shape == vol.shape and m.dtype == bool
    yy, xx = np.mgrid[: vol.shape[1], : vol.shape[2]]
    inner = (vol < -500) & ((yy > 30) & (yy < 70) & (((xx > 14) & (xx < 44)) | ((xx > 52) & (xx < 82))))[None]
    assert m[inner].mean() > 0.99  # lungs inside
    assert not m[:, :12].any() and not m[:, -12:].any()  # outside air and the air around the couch excluded
    assert not m[:2].any() and not m[-2:].any()  # slices without lung stay empty


def test_dense_consolidation_along_the_chest_wall_stays_inside():
    vol = simple_chest(lesion=True)
    m = lung_mask_hu(vol, spacing=(5.0, 1.0, 1.0), working_mm=1.0)[0]
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


def test_auto_intensity_reads_metadata():
    vol = np.clip((simple_chest() + 1000.0) / 1100.0, 0, 1)
    img = MetaTensor(torch.from_numpy(vol)[None], meta={"intensity": "windowed"})
    assert np.asarray(LungMask()(img))[0, 6, 50, 29]
    d = LungMaskd("image", mask_key="lung")({"image": img})
    assert "lung" in d and d["lung"].shape == img.shape


@pytest.mark.parametrize("kwargs", [{"intensity": "ct"}, {"min_component_fraction": 0.0}, {"working_mm": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LungMask(**kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(1, S, H, W\)"):
        LungMask()(np.zeros((4, 8, 8)))
