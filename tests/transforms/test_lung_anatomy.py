"""Lung masks on the anatomy real scans have (issue 23): the lungs are never merged with the air outside the body, and
bowel or stomach gas is never taken for lung while lungs are there.

The phantom variants of :mod:`ctmil.synthetic.variants` are checked against their ground truth, the real thorax series
of ``../shared/data`` against an independent full-resolution 2D reference. Before the mask decided what is outside at
full resolution, every ``neck_to_abdomen`` phantom here came out with lung recall 0: its lungs joined the outside air
through the apex and the "lung" was bowel gas (docs/preprocessing.md "Lungs under the skin").
"""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from ctmil.synthetic.labels import TISSUE_LABELS
from ctmil.synthetic.phantoms import make_phantom
from ctmil.transforms import LoadCT, LungBoxCropd, LungMaskd, SelectLungSlicesd
from tests.conftest import shared_data

AXIS = 1
GEOMETRY = dict(shape=(80, 160, 160), spacing=(3.0, 2.2, 2.2))
VARIANTS = {
    "neck_to_abdomen-0": (0, dict(field_of_view="neck_to_abdomen")),
    "neck_to_abdomen-1": (1, dict(field_of_view="neck_to_abdomen")),
    "neck_to_abdomen-4": (4, dict(field_of_view="neck_to_abdomen", severe=True)),
    "neck_to_abdomen+air_pockets": (5, dict(field_of_view="neck_to_abdomen", air_pockets=True)),
    "neck_to_abdomen+off_centre": (2, dict(field_of_view="neck_to_abdomen", offset_mm=(10.0, 45.0))),
    "air_pockets": (3, dict(air_pockets=True)),
    "consolidated_lung": (6, dict(consolidated_lung=0.85)),
    "consolidated_lung+neck_to_abdomen": (7, dict(consolidated_lung=0.85, field_of_view="neck_to_abdomen")),
    "off_centre": (8, dict(offset_mm=(-20.0, -50.0))),
}


def decide(vol: np.ndarray, spacing) -> dict:
    """The preprocessing chain's mask → slice selection → boxes, on a LoadCT-like ``(1, S, H, W)`` stack."""
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    img = MetaTensor(torch.from_numpy(vol.astype(np.float32))[None], affine=affine, meta={"intensity": "hu"})
    d = LungMaskd("image", full_resolution=True, slice_axis=AXIS)({"image": img})
    mask = np.asarray(d["lung"])[0].astype(bool)
    d = SelectLungSlicesd(["image", "lung"], slice_axis=AXIS)(d)
    d = LungBoxCropd("image", slice_axis=AXIS)(d)
    return {"mask": mask, "kept": np.asarray(d["kept_slices"]), "boxes": np.asarray(d["boxes"])}


def box_coverage(lung: np.ndarray, kept, boxes) -> tuple[float, float]:
    """The share of the kept slices' ``lung`` pixels inside their boxes, pooled, and the least on a slice whose
    ``lung`` area is at least a fifth of the largest slice's (the slices a 2D method would keep: the bases' last
    slivers of lung are left to the pooled share)."""
    areas = lung.sum(axis=(1, 2))
    inside, total, least = 0, 0, 1.0
    for s, (r0, c0, r1, c1) in zip(kept.tolist(), boxes.tolist()):
        share = lung[s, r0:r1, c0:c1].sum()
        inside, total = inside + share, total + areas[s]
        if areas[s] >= 0.2 * areas.max():
            least = min(least, share / areas[s])
    return inside / max(total, 1), least


def aerated(vol: np.ndarray, info: dict) -> np.ndarray:
    """The phantom's lung that a 2D air reference finds: its lung voxels below -400 HU. Consolidated lung is as
    dense as the chest wall; whether the crop keeps it is measured in test_consolidated_crop.py."""
    return info["lung_mask"] & (vol < -400)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    seed, options = VARIANTS[request.param]
    vol, _, info = make_phantom(seed, **GEOMETRY, **options)
    return request.param, vol, info, decide(vol, info["spacing"])


def test_kept_slices_are_lung_slices(variant):
    name, _, info, got = variant
    first, last = info["lung_slices"]
    assert got["kept"].size >= 8 and first <= got["kept"].min() and got["kept"].max() <= last, (name, got["kept"])


def test_boxes_hold_the_lungs(variant):
    name, vol, info, got = variant
    pooled, least = box_coverage(aerated(vol, info), got["kept"], got["boxes"])
    assert pooled >= 0.97 and least >= 0.97, (name, pooled, least)


def test_no_gas_and_no_outside_air_in_the_mask(variant):
    name, vol, info, got = variant
    tissue = info["tissue_map"]
    assert not (got["mask"] & (tissue == TISSUE_LABELS["gas"])).any(), name
    lung = aerated(vol, info)
    recall = (got["mask"] & lung).sum() / lung.sum()
    assert recall > 0.95, (name, recall)
    far_outside = ndimage.distance_transform_edt(tissue == TISSUE_LABELS["air"], sampling=info["spacing"]) > 15.0
    assert not (got["mask"] & far_outside).any(), name  # mm: the dilation and closing reach less far than this


def reference_lungs(hu: np.ndarray) -> np.ndarray:
    """An independent full-resolution 2D lung reference for one slice: air (< -400 HU) regions that no path through
    air joins to the image border, at least 1 % of the image each."""
    labels, n = ndimage.label(hu < -400)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[edge] = 0
    sizes[0] = 0
    return np.isin(labels, np.flatnonzero(sizes >= 0.01 * hu.size))


def test_real_thorax_boxes_hold_the_reference_lungs_on_every_kept_slice():
    img = LoadCT()(str(shared_data("thorax_ct_dicom")))
    hu = np.asarray(img[0])
    got = decide(hu, img.meta["spacing"])
    reference = np.stack([reference_lungs(hu[s]) for s in range(hu.shape[0])])
    pooled, least = box_coverage(reference, got["kept"], got["boxes"])
    assert got["kept"].size > 60 and pooled >= 0.97 and least >= 0.97, (pooled, least)
    ref_slices = np.flatnonzero(reference.sum(axis=(1, 2)) >= 0.2 * reference.sum(axis=(1, 2)).max())
    assert set(ref_slices.tolist()) <= set(got["kept"].tolist())  # every slice with much lung is kept


@pytest.mark.parametrize("dtype, bone, expected", [(np.uint8, 300.0, 0), (np.int16, 150.0, None)])
def test_a_threshold_no_value_of_the_dtype_reaches_is_never_met(dtype, bone, expected):
    from ctmil.transforms.lung_masks import _level

    volume = np.full((2, 4, 4), 255 if dtype == np.uint8 else 200, dtype)
    level = _level(volume, bone)
    assert int((volume >= level).sum()) == (0 if expected == 0 else volume.size)


def test_the_background_is_never_a_second_lung():
    """Without a second-lung floor (min_component_fraction 0) the background (label 0, size 0) must not be picked."""
    from ctmil.transforms.lung_masks import lung_mask_hu

    vol, _, info = make_phantom(3, shape=(24, 96, 96), spacing=(8.0, 3.6, 3.6))
    full, _ = lung_mask_hu(vol, info["spacing"])
    loose, _ = lung_mask_hu(vol, info["spacing"], min_component_fraction=0.0)
    assert loose.sum() <= 1.05 * full.sum()
