"""Lung-density features (LungDensity / LungDensityd): fixed bins, the fractions, the volume, both intensities."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctmil.synthetic.chest import make_phantom
from ctmil.transforms import DENSITY_FEATURES, LungDensity, LungDensityd, LungMask, density_vector, preprocessing_transforms
from ctmil.transforms.intensity import LUNG_WINDOW_HU

AXIS = 1


def _stack(vol, spacing, intensity):
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(vol)[None], affine=affine, meta={"intensity": intensity})


def _features(seed: int, involvement: float, intensity: str) -> dict:
    vol, _, info = make_phantom(seed, involvement=involvement, consolidation_fraction=0.4, dtype=np.float32)
    if intensity == "windowed":
        low, high = LUNG_WINDOW_HU
        vol = np.clip((vol - low) / (high - low), 0, 1).astype(np.float32)
    img = _stack(vol, info["spacing"], intensity)
    mask, stride = LungMask(slice_axis=AXIS).working_mask(img)
    return LungDensity(slice_axis=AXIS)(img, mask, stride)


@pytest.mark.parametrize("intensity", ["hu", "windowed"])
def test_dense_lungs_have_more_ground_glass_and_consolidation(intensity):
    mild, severe = _features(1, 0.05, intensity), _features(1, 0.6, intensity)
    assert severe["consolidation_fraction"] > mild["consolidation_fraction"] + 0.05
    assert severe["ggo_fraction"] > mild["ggo_fraction"]
    for f in (mild, severe):
        assert abs(sum(f["histogram"]) - 1.0) < 1e-3 and len(f["bin_edges"]) == len(f["histogram"]) + 1
        assert density_vector(f).shape == (len(DENSITY_FEATURES),)


@pytest.mark.parametrize("intensity,has_volume", [("hu", True), ("windowed", False)])
def test_volume_only_with_spacing(intensity, has_volume):
    f = _features(2, 0.1, intensity)
    assert np.isfinite(f["volume_ml"]) == has_volume
    if has_volume:
        assert 1000 < f["volume_ml"] < 15000


def test_dict_wrapper_records_into_the_bag_meta(tmp_path):
    from ctmil.synthetic.nifti_writer import write_nifti

    vol, _, info = make_phantom(0, shape=(24, 96, 96), spacing=(8.0, 3.6, 3.6))
    path = write_nifti(vol, info["spacing"], tmp_path / "c.nii.gz")
    bag = preprocessing_transforms()({"image": str(path), "case_id": "c", "label": 1})
    assert bag["meta"]["density"]["intensity"] == "hu" and len(bag["meta"]["density"]["histogram"]) == 24
    d = LungDensityd("image", slice_axis=AXIS)({"image": _stack(vol.astype(np.float32), info["spacing"], "hu"),
                                               "lung": np.ones((1, *vol.shape), bool)})
    assert "density" in d["image_meta"]


def test_mismatched_grid_is_refused():
    img = _stack(np.zeros((4, 16, 16), np.float32), (1.0, 1.0, 1.0), "hu")
    with pytest.raises(ValueError, match="does not match"):
        LungDensity(slice_axis=AXIS)(img, np.ones((1, 4, 8, 8), bool), stride=1)
