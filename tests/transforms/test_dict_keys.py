"""Dictionary wrappers: the keys they write are arguments that downstream transforms read, ToBagd keeps the other
keys, and intensity is an explicit argument (or ctmil's own record), never a guess."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from ctmil.transforms import BAG_KEYS, LungBoxCropd, LungMask, LungMaskd, SelectLungSlicesd, StoreCaseMetad, ToBagd, preprocessing_transforms
from tests.conftest import simple_chest

AXIS = -1  # MONAI's spatial-last layout


def _image(as_meta: bool = True):
    arr = np.ascontiguousarray(np.moveaxis(simple_chest(n_slices=12, size=96)[None], 1, -1))  # (1, H, W, S)
    if not as_meta:
        return arr
    affine = torch.tensor([[0.75, 0, 0, 0], [0, 0.75, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1]], dtype=torch.float64)
    return MetaTensor(torch.from_numpy(arr), affine=affine, meta={"filename_or_obj": "ct.nii.gz"})


def _chain(mask_key="lung", stride_key=None, kept_key="kept_slices", boxes_key="boxes", meta_key="image_meta"):
    return Compose([
        StoreCaseMetad("image", meta_key=meta_key, intensity="hu", slice_axis=AXIS),
        LungMaskd("image", mask_key=mask_key, full_resolution=False, stride_key=stride_key, intensity="hu", slice_axis=AXIS),
        SelectLungSlicesd(["image", mask_key], source_key=mask_key, kept_key=kept_key, slice_axis=AXIS),
        LungBoxCropd("image", source_key=mask_key, boxes_key=boxes_key, stride_key=stride_key, slice_axis=AXIS),
        ToBagd("image", meta_key=meta_key, kept_key=kept_key, boxes_key=boxes_key, slice_axis=AXIS),
    ])


@pytest.fixture(scope="module")
def default_bag():
    return _chain()({"image": _image(), "case_id": "c", "label": 1.0})


@pytest.mark.parametrize("keys", [
    {"mask_key": "lungs"},
    {"mask_key": "lungs", "stride_key": "lungs_grid"},
    {"kept_key": "my_slices", "boxes_key": "my_boxes"},
    {"mask_key": "m", "stride_key": "s", "kept_key": "k", "boxes_key": "b", "meta_key": "case"},
])
def test_custom_key_names_are_written_and_read(default_bag, keys):
    mask_key = keys.get("mask_key", "lung")
    stride_key = keys.get("stride_key") or f"{mask_key}_stride"
    steps = _chain(**keys).transforms
    d = {"image": _image(), "case_id": "c", "label": 1.0}
    for t in steps[:-1]:
        d = t(d)
    assert d[stride_key] == 5 and mask_key in d  # round(4 mm / 0.75 mm)
    assert keys.get("kept_key", "kept_slices") in d and keys.get("boxes_key", "boxes") in d
    written = {mask_key, stride_key, keys.get("kept_key", "kept_slices"), keys.get("boxes_key", "boxes"), keys.get("meta_key", "image_meta")}
    for name in {"lung", "lung_stride", "kept_slices", "boxes", "image_meta"} - written:
        assert name not in d, name  # nothing under a hard-coded name
    bag = steps[-1](d)
    for k in BAG_KEYS:
        if k == "meta":
            assert bag[k] == default_bag[k]
        else:
            assert torch.equal(torch.as_tensor(bag[k]), torch.as_tensor(default_bag[k])) if k != "case_id" else bag[k] == "c"


def test_a_mask_without_its_stride_key_is_taken_at_full_resolution():
    d = LungMaskd("image", mask_key="lung", intensity="hu", slice_axis=AXIS)({"image": _image()})  # full-size mask
    assert "lung_stride" not in d
    out = LungBoxCropd("image", source_key="lung", slice_axis=AXIS)(d)
    assert out["boxes"].shape == (12, 4) and tuple(out["image"].shape) == (1, 180, 240, 12)


def test_to_bag_keeps_the_other_keys(default_bag):
    assert "image" not in default_bag  # the patches replace the cropped image
    for k in ("lung", "lung_stride", "image_meta"):
        assert k in default_bag  # everything else stays for the user's own transforms
    assert default_bag["patches"].shape == (12 * default_bag["kept_slices"].numel(), 2, 60, 60)
    assert default_bag["label"].dtype == torch.float32 and float(default_bag["label"]) == 1.0
    d = _chain()({"image": _image(), "case_id": "c", "label": None, "signature": {"size": 3}, "extra": [1, 2]})
    assert d["signature"] == {"size": 3} and d["extra"] == [1, 2] and float(d["label"]) == -1.0


def test_ctmils_chain_writes_the_bag_and_nothing_else(tmp_path):
    from ctmil.synthetic.phantoms import write_nifti

    src = write_nifti(simple_chest(n_slices=12).astype(np.int16), (2.5, 0.75, 0.75), tmp_path / "ct.nii.gz")
    bag = preprocessing_transforms()({"image": str(src), "case_id": "c", "label": 0.0, "signature": "x"})
    assert list(bag) == list(BAG_KEYS)


def test_to_bag_without_kept_slices_takes_every_slice_and_needs_boxes():
    crop = torch.rand(1, 180, 240, 3)
    bag = ToBagd("image", slice_axis=AXIS)({"image": crop, "boxes": np.zeros((3, 4), np.int64)})
    assert bag["kept_slices"].tolist() == [0, 1, 2] and bag["slice_index"].tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert bag["meta"] == {} and bag["case_id"] == ""
    with pytest.raises(KeyError, match="LungBoxCropd"):
        ToBagd("image", boxes_key="my_boxes", slice_axis=AXIS)({"image": crop})


# --- intensity: explicit, or ctmil's LoadCT record, never a guess ---


@pytest.mark.parametrize("as_meta", [False, True])
def test_unknown_intensity_is_a_one_line_error(as_meta):
    img = _image(as_meta)  # neither a plain array nor LoadImaged's MetaTensor says HU or windowed
    with pytest.raises(ValueError, match="intensity='hu'") as err:
        LungMask(slice_axis=AXIS)(img)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="intensity='windowed'"):
        LungMaskd("image", slice_axis=AXIS)({"image": img})


@pytest.mark.parametrize("recorded,given,expected", [
    ("hu", None, "hu"), ("windowed", None, "windowed"), ("windowed", "hu", "hu"), ("hu", "windowed", "windowed"), (None, "hu", "hu"),
])
def test_explicit_intensity_wins_over_the_record(recorded, given, expected):
    img = _image()
    if recorded:
        img.meta["intensity"] = recorded
    masker = LungMask(intensity=given, slice_axis=AXIS)
    assert masker.intensity_of(img) == expected
    if expected == "hu":
        assert masker.working_mask(img)[0].applied_operations[-1]["extra_info"]["intensity"] == "hu"


@pytest.mark.parametrize("intensity", ["auto", "HU", "ct", ""])
def test_bad_intensity_arguments(intensity):
    with pytest.raises(ValueError, match="intensity"):
        LungMask(intensity=intensity)
    with pytest.raises(ValueError, match="intensity"):
        LungMaskd("image", intensity=intensity)
    with pytest.raises(ValueError, match="intensity"):
        StoreCaseMetad("image", intensity=intensity)


def test_store_case_meta_needs_a_meta_tensor():
    with pytest.raises(TypeError, match="MetaTensor"):
        StoreCaseMetad("image")({"image": _image(as_meta=False)})
