"""Patch normalisation (patch_norm): the paper's per-patch min-max, the volume-wide window, or both as channels."""

import numpy as np
import pytest
import torch

from ctmil.transforms.tiling import PATCH_NORMS, ScalePatches, ToBagd, normalise_patches

WINDOW = (-1350.0, 150.0)


def _patches():
    """Two flat patches: aerated lung (-850 HU) and consolidation (+30 HU)."""
    return torch.stack([torch.full((1, 6, 6), -850.0), torch.full((1, 6, 6), 30.0)])


def test_minmax_erases_absolute_density_and_window_keeps_it():
    minmax = normalise_patches(_patches(), "minmax", WINDOW, "float32")
    window = normalise_patches(_patches(), "window", WINDOW, "float32")
    assert torch.equal(minmax[0], minmax[1])  # both flat patches become 0: density gone
    assert window[0].mean() == pytest.approx(500 / 1500) and window[1].mean() == pytest.approx(1380 / 1500)


@pytest.mark.parametrize("norm,channels", [("minmax", 1), ("window", 1), ("both", 2)])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_channels_dtype_and_range(norm, channels, dtype):
    out = normalise_patches(torch.randn(5, 1, 6, 6) * 500 - 500, norm, WINDOW, dtype)
    assert out.shape == (5, channels, 6, 6) and out.dtype == getattr(torch, dtype)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_slice_images_are_already_windowed():
    x = torch.rand(3, 1, 6, 6)
    assert torch.allclose(ScalePatches(None)(x), x)


@pytest.mark.parametrize("kwargs", [{"patch_norm": "zscore"}, {"patch_norm": "window", "window_hu": None}, {"patch_norm": "both", "window_hu": None}, {"window_hu": None}])
def test_bad_settings_are_refused_before_work(kwargs):
    with pytest.raises(ValueError):
        ToBagd("image", **kwargs)


def test_modes_are_listed():
    assert PATCH_NORMS == ("minmax", "window", "both")
    with pytest.raises(ValueError):
        ScalePatches((1.0, 1.0))
    np.testing.assert_array_equal(normalise_patches(_patches(), "both", WINDOW, "float32")[:, 1:].numpy(),
                                  normalise_patches(_patches(), "window", WINDOW, "float32").numpy())
