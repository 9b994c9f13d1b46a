"""ctmil's transforms behind MONAI's own loaders (issue 10, point 4): a user-style ``Compose`` of ``LoadImaged`` +
``EnsureChannelFirstd`` + ``Orientationd`` and ctmil's transforms gives the bag ctmil's own chain gives."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from ctmil.transforms import (
    LungBoxCropd, LungMaskd, SampleSlicesd, SelectLungSlicesd, StoreCaseMetad, ToBagd, WindowHUd, preprocessing_transforms,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "preprocessing.md"
GEOMETRIES = {"default": {}, "demo": {"shape": (32, 112, 112), "spacing": (7.5, 3.0, 3.0)}}


def user_compose(reader: str | None = None, axcodes: str = "PLS", image_only: bool = True) -> Compose:
    """What a MONAI user writes (docs/preprocessing.md, "Use in your own MONAI workflow")."""
    return Compose([
        LoadImaged(keys="image", reader=reader, image_only=image_only),
        EnsureChannelFirstd(keys="image"),  # (1, H, W, D)
        Orientationd(keys="image", axcodes=axcodes, labels=None),  # PLS: rows anterior→posterior, columns right→left
        StoreCaseMetad(keys="image", intensity="hu", slice_axis=-1),
        LungMaskd(keys="image", mask_key="lung", intensity="hu", full_resolution=False, slice_axis=-1),
        SelectLungSlicesd(keys=["image", "lung"], source_key="lung", kept_key="kept_slices", slice_axis=-1),
        SampleSlicesd(keys=["image", "lung"], max_slices=18, kept_key="kept_slices", slice_axis=-1),
        LungBoxCropd(keys="image", source_key="lung", boxes_key="boxes", slice_axis=-1),
        WindowHUd(keys="image", window_hu=(-1350, 150), intensity="hu"),
        ToBagd(keys="image", kept_key="kept_slices", boxes_key="boxes", slice_axis=-1),
    ])


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def phantom(request, tmp_path_factory):
    """One phantom as DICOM and NIfTI, and ctmil's own bags of both."""
    from ctmil.synthetic.phantoms import generate_cohort

    out = tmp_path_factory.mktemp(f"phantom-{request.param}")
    generate_cohort(out, n=1, seed=3, progress=False, **GEOMETRIES[request.param])
    paths = {"nifti": str(out / "nifti" / "case_0000.nii.gz"), "dicom": str(out / "dicom" / "case_0000")}
    chain = preprocessing_transforms()
    return {"paths": paths, "bags": {k: chain({"image": p, "case_id": "case_0000", "label": 1.0}) for k, p in paths.items()}}


def _user_bag(transform, path):
    return transform({"image": path, "case_id": "case_0000", "label": 1.0})


def _assert_same_bag(bag, ref):
    for key in ("patches", "position", "slice_index", "kept_slices", "boxes", "label"):
        assert bag[key].dtype == ref[key].dtype and torch.equal(bag[key], ref[key]), key
    assert bag["case_id"] == ref["case_id"]
    meta, ref_meta = bag["meta"], ref["meta"]
    assert meta["spatial_shape"] == ref_meta["spatial_shape"] and meta["intensity"] == ref_meta["intensity"] == "hu"
    assert meta["spacing"] == pytest.approx(ref_meta["spacing"], abs=1e-5)
    np.testing.assert_allclose(np.asarray(meta["affine"]), np.asarray(ref_meta["affine"]), atol=1e-4)  # (s, r, c) → RAS mm


@pytest.mark.parametrize("image_only", [True, False])
@pytest.mark.parametrize("fmt,reader", [("nifti", None), ("nifti", "NibabelReader"), ("dicom", "PydicomReader")])
def test_monai_loader_compose_gives_ctmils_bag(phantom, fmt, reader, image_only):
    """Displayed orientation (PLS): the same bag, patches included, bit for bit."""
    bag = _user_bag(user_compose(reader, "PLS", image_only), phantom["paths"][fmt])
    _assert_same_bag(bag, phantom["bags"][fmt])
    assert ("image_meta_dict" in bag) == (not image_only)  # ToBagd keeps the loader's other keys
    assert "image" not in bag and [op["class"] for op in bag["lung"].applied_operations[-2:]] == ["SelectLungSlices", "SampleSlices"]


def _to_ctmil_index(user_affine, ctmil_affine) -> tuple[np.ndarray, np.ndarray]:
    """Signed permutation and offset mapping the user's stack index ``(s, r, c)`` onto ctmil's (same voxels)."""
    m = np.linalg.inv(np.asarray(ctmil_affine, float)) @ np.asarray(user_affine, float)
    perm = np.rint(m[:3, :3])
    assert np.abs(m[:3, :3] - perm).max() < 1e-4 and np.abs(m[:3, 3] - np.rint(m[:3, 3])).max() < 1e-3
    return perm.astype(int), np.rint(m[:3, 3]).astype(int)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PLI", "ALS"])
def test_other_orientations_give_the_same_slices_and_boxes(phantom, axcodes):
    """Any axis order / direction: the same kept slices and boxes (within 1 px) once mapped through the affines;
    the slice order follows the orientation (PLI: head first). Only PLS tiles the slices as ctmil's models saw them."""
    ref = phantom["bags"]["nifti"]
    bag = _user_bag(user_compose(None, axcodes), phantom["paths"]["nifti"])
    perm, offset = _to_ctmil_index(bag["meta"]["affine"], ref["meta"]["affine"])
    assert perm[0, 1:].tolist() == [0, 0] and perm[1:, 0].tolist() == [0, 0]  # slices stay slices
    slices = perm[0, 0] * bag["kept_slices"].numpy() + offset[0]
    assert sorted(slices.tolist()) == ref["kept_slices"].tolist()
    ref_boxes = dict(zip(ref["kept_slices"].tolist(), ref["boxes"].numpy()))
    for s, (r0, c0, r1, c1) in zip(slices.tolist(), bag["boxes"].numpy()):
        corners = np.array([[0, r0, c0], [0, r1 - 1, c1 - 1]]) @ perm.T + offset  # first and last pixel
        lo, hi = corners[:, 1:].min(axis=0), corners[:, 1:].max(axis=0) + 1
        assert np.abs(np.r_[lo, hi] - ref_boxes[s]).max() <= 1, (s, np.r_[lo, hi].tolist(), ref_boxes[s].tolist())
    assert (np.abs(perm) @ np.asarray(bag["meta"]["spatial_shape"])).tolist() == ref["meta"]["spatial_shape"]


def _doc_snippet() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Use in your own MONAI workflow", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_the_documented_compose_gives_ctmils_bag(phantom, fmt):
    code = _doc_snippet()
    assert 'StoreCaseMetad(keys="image", intensity="hu", slice_axis=-1)' in code
    if fmt == "dicom":
        code = code.replace('LoadImaged(keys="image")', 'LoadImaged(keys="image", reader="PydicomReader")')
    namespace = {}
    exec(code.replace('"ct.nii.gz"', repr(phantom["paths"][fmt])), namespace)  # noqa: S102 - our own docs
    bag = namespace["bag"]
    bag["case_id"], bag["label"] = "case_0000", torch.tensor(1.0)
    _assert_same_bag(bag, phantom["bags"][fmt])
