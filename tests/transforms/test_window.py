"""The HU window before the per-patch min-max (issue 12 point 1): clipping, what it leaves alone, and its effect."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmil.synthetic.phantoms import make_phantom
from ctmil.transforms import (
    LUNG_WINDOW_HU, LungBoxCropd, LungMaskd, NormalizePatches, SelectLungSlicesd, TilePatches, WindowHU, WindowHUd,
    preprocessing_transforms,
)

HU = np.array([-3024.0, -1350.0, -850.0, -460.0, 20.0, 150.0, 650.0], np.float32)


def _image(values, kind):
    x = np.broadcast_to(values[:, None, None], (len(values), 2, 3)).copy()[None]  # (1, S, H, W)
    return torch.from_numpy(x) if kind == "torch" else MetaTensor(torch.from_numpy(x)) if kind == "meta" else x


@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
@pytest.mark.parametrize(
    "window,expected",
    [
        (LUNG_WINDOW_HU, [-1350, -1350, -850, -460, 20, 150, 150]),
        ((-1000, 400), [-1000, -1000, -850, -460, 20, 150, 400]),
        ([-500, -400], [-500, -500, -500, -460, -400, -400, -400]),  # a JSON list works too
        (None, HU.tolist()),
    ],
)
def test_hu_is_clipped_to_the_window(kind, window, expected):
    img = _image(HU, kind)
    out = WindowHU(window, intensity="hu")(img)
    assert type(out) is type(img) and out.shape == img.shape
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0, 0], np.asarray(expected, np.float32))
    if kind == "meta":
        assert out.applied_operations[-1]["class"] == "WindowHU"
        assert out.applied_operations[-1]["extra_info"]["window_hu"] == (None if window is None else [float(v) for v in window])


@pytest.mark.parametrize("kind", ["numpy", "torch", "meta"])
def test_windowed_images_pass_unchanged(kind):
    img = _image(np.linspace(0.0, 1.0, 7, dtype=np.float32), kind)
    out = WindowHU((0.2, 0.8), intensity="windowed")(img)  # a window that would change [0, 1] values if applied
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_intensity_comes_from_loadct_or_the_argument():
    img = MetaTensor(torch.from_numpy(_image(HU, "numpy")), meta={"intensity": "windowed"})
    assert torch.equal(WindowHU()(img).as_tensor(), img.as_tensor())  # LoadCT's record: slice images
    img.meta["intensity"] = "hu"
    assert float(WindowHU()(img).max()) == 150.0
    with pytest.raises(ValueError, match="does not record its intensity"):
        WindowHU()(_image(HU, "torch"))
    assert float(WindowHU(None)(_image(HU, "torch")).min()) == -3024.0  # no window: nothing to decide


@pytest.mark.parametrize("window,match", [((150, -1350), "low < high"), ((1, 2, 3), "pair"), ("lung", "pair"), (5, "pair")])
def test_bad_windows(window, match):
    with pytest.raises(ValueError, match=match):
        WindowHU(window)
    with pytest.raises(ValueError, match="intensity"):
        WindowHU(intensity="ct")


def test_dict_wrapper_clips_each_key():
    d = WindowHUd(["a", "b"], window_hu=(-1000, 0), intensity="hu")({"a": _image(HU, "torch"), "b": _image(HU, "numpy"), "c": 1})
    assert float(d["a"].max()) == 0.0 and float(d["b"].min()) == -1000.0 and d["c"] == 1


def _contrast(window, seed):
    """Mean normalised intensity of lesion pixels minus that of lesion-free lung pixels in a phantom's patches."""
    vol, lesion, info = make_phantom(seed, shape=(12, 128, 128), spacing=(20.0, 2.7, 2.7), involvement=0.35, consolidation_fraction=0.3)
    d = {
        "image": MetaTensor(torch.from_numpy(vol[None].astype(np.float32)), affine=torch.diag(torch.tensor([20.0, 2.7, 2.7, 1.0]))),
        "lesion": (lesion[None] > 0).astype(np.float32),
        "lung_only": (info["lung_mask"][None] & (lesion[None] == 0)).astype(np.float32),
    }
    d = LungMaskd("image", intensity="hu", full_resolution=False, slice_axis=1)(d)
    d = SelectLungSlicesd(["image", "lung", "lesion", "lung_only"], slice_axis=1)(d)
    d = LungBoxCropd(["image", "lesion", "lung_only"], slice_axis=1)(d)  # masks resampled as the image is
    d = WindowHUd("image", window_hu=window, intensity="hu")(d)
    tile = TilePatches(slice_axis=1)
    patches = NormalizePatches()(tile(d["image"])[0])
    on_lesion, on_lung = tile(d["lesion"])[0] > 0.99, tile(d["lung_only"])[0] > 0.99
    assert on_lesion.sum() > 1000 and on_lung.sum() > 1000
    return float(patches[on_lesion].mean() - patches[on_lung].mean())


@pytest.mark.parametrize("seed", [7, 11])
def test_the_lung_window_raises_lesion_lung_contrast_in_patches(seed):
    """Ribs (600 HU) and the spine at the edge of the lung box take the top of a patch's min-max without the
    window; with it lesions sit higher above the lung (seed 7: 0.38 → 0.49)."""
    without, with_window = _contrast(None, seed), _contrast(LUNG_WINDOW_HU, seed)
    assert with_window > without + 0.05, (without, with_window)


def test_the_chain_windows_hu_inputs(tmp_path):
    from ctmil.synthetic.phantoms import generate_cohort

    generate_cohort(tmp_path, n=1, seed=3, formats=("nifti",), shape=(16, 96, 96), spacing=(15.0, 3.6, 3.6), progress=False)
    item = {"image": str(tmp_path / "nifti" / "case_0000.nii.gz"), "case_id": "c", "label": 1.0}
    # the min-max channel alone: without a window there is no second channel to scale
    bags = {w: preprocessing_transforms(window_hu=w, patch_norm="minmax")(dict(item)) for w in (None, LUNG_WINDOW_HU, (-1000.0, 400.0))}
    assert torch.equal(bags[None]["kept_slices"], bags[LUNG_WINDOW_HU]["kept_slices"])  # the mask sees raw HU
    assert not torch.equal(bags[None]["patches"], bags[LUNG_WINDOW_HU]["patches"])
    assert not torch.equal(bags[(-1000.0, 400.0)]["patches"], bags[LUNG_WINDOW_HU]["patches"])
    assert all(float(b["patches"].min()) == 0.0 and float(b["patches"].max()) == 1.0 for b in bags.values())
