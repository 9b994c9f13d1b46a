"""The transforms on any channel-first 3D layout (``slice_axis``), numpy / torch / MetaTensor inputs, metadata and
applied operations on MetaTensor outputs, and the spacing taken from the affine."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.meta_obj import set_track_meta

from ctmil.transforms import LungBoxCrop, LungMask, SelectLungSlices, StoreCaseMetad, TilePatches
from tests.conftest import simple_chest

SPACING = (2.0, 0.5, 0.5)  # (slice, row, column) mm: in-plane stride 8, z slabs of 2 slices on the 4 mm grid
AXES = [1, 2, -1, -2, 3]
KINDS = ["numpy", "torch", "meta"]


def _place(stack: np.ndarray, axis: int) -> np.ndarray:
    """``(1, S, H, W)`` → the same image with its slices along ``axis`` (in-plane axes keep their order)."""
    return np.ascontiguousarray(np.moveaxis(stack, 1, axis % 4))


def _affine(axis: int, spacing=SPACING, origin=(-40.0, 12.0, 100.0)) -> torch.Tensor:
    """An affine whose slice / row / column spacings sit on the array axes the layout puts them on."""
    a = torch.zeros((4, 4), dtype=torch.float64)
    inplane = [x for x in (1, 2, 3) if x != axis % 4]
    for stack_axis, array_axis in enumerate([axis % 4, *inplane]):
        a[stack_axis, array_axis - 1] = spacing[stack_axis]
    a[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    a[3, 3] = 1.0
    return a


def _image(stack: np.ndarray, axis: int, kind: str):
    arr = _place(stack, axis)
    if kind == "numpy":
        return arr
    if kind == "torch":
        return torch.from_numpy(arr)
    return MetaTensor(torch.from_numpy(arr), affine=_affine(axis), meta={"filename_or_obj": "ct.nii.gz", "note": "kept"})


def _stack_of(x, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(x.as_tensor() if isinstance(x, MetaTensor) else x), axis % 4, 1)


@pytest.fixture(scope="module")
def chest():
    return simple_chest(n_slices=12, size=100)[None]  # (1, S, H, W) HU


@pytest.fixture(scope="module")
def reference(chest):
    """Mask, kept slices, boxes, crop and patches of the slice-first stack with its spacing given explicitly."""
    masker = LungMask(intensity="hu", slice_axis=1, spacing=SPACING)
    small, stride = masker.working_mask(chest)
    kept = SelectLungSlices(slice_axis=1).compute_kept_slices(small)
    cropper = LungBoxCrop((60, 120), slice_axis=1)
    boxes = cropper.compute_boxes(SelectLungSlices(slice_axis=1)(small, kept), stride, chest.shape[2:])
    crop = cropper(SelectLungSlices(slice_axis=1)(chest, kept), boxes)
    return {"full": masker(chest), "small": small, "stride": stride, "kept": kept, "boxes": boxes, "crop": crop,
            "tiles": TilePatches(slice_axis=1)(crop)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axis", AXES)
def test_every_layout_gives_the_same_mask_slices_boxes_crop_and_patches(chest, reference, axis, kind):
    img = _image(chest, axis, kind)
    spacing = None if kind == "meta" else SPACING  # a MetaTensor's spacing comes from its affine
    masker = LungMask(intensity="hu", slice_axis=axis, spacing=spacing)
    small, stride = masker.working_mask(img)
    full = masker(img)
    assert stride == reference["stride"] == 8
    np.testing.assert_array_equal(_stack_of(small, axis), reference["small"])
    np.testing.assert_array_equal(_stack_of(full, axis), reference["full"])
    selector = SelectLungSlices(slice_axis=axis)
    kept = selector.compute_kept_slices(small)
    np.testing.assert_array_equal(kept, reference["kept"])
    cropper = LungBoxCrop((60, 120), slice_axis=axis)
    boxes = cropper.compute_boxes(selector(small, kept), stride, _stack_of(img, axis).shape[2:])
    np.testing.assert_array_equal(boxes, reference["boxes"])
    crop = cropper(selector(img, kept), boxes)
    assert tuple(_stack_of(crop, axis).shape) == (1, kept.size, 60, 120)
    np.testing.assert_array_equal(_stack_of(crop, axis), reference["crop"])
    for got, expected in zip(TilePatches(slice_axis=axis)(crop), reference["tiles"]):
        assert torch.equal(got, expected)
    for out in (small, full, selector(img, kept), crop):  # the input's type comes back
        assert isinstance(out, MetaTensor if kind == "meta" else torch.Tensor if kind == "torch" else np.ndarray)


@pytest.mark.parametrize("axis", AXES)
def test_meta_outputs_keep_metadata_and_record_applied_operations(chest, axis):
    img = _image(chest, axis, "meta")
    small, stride = LungMask(intensity="hu", slice_axis=axis).working_mask(img)
    selector = SelectLungSlices(slice_axis=axis)
    kept = selector.compute_kept_slices(small)
    selected = selector(img, kept)
    cropper = LungBoxCrop((60, 120), slice_axis=axis)
    boxes = cropper.compute_boxes(selector(small, kept), stride, _stack_of(img, axis).shape[2:])
    crop = cropper(selected, boxes)
    for out in (small, selected, crop):
        assert out.meta["filename_or_obj"] == "ct.nii.gz" and out.meta["note"] == "kept"
    assert [op["class"] for op in crop.applied_operations] == ["SelectLungSlices", "LungBoxCrop"]
    assert [op["class"] for op in small.applied_operations] == ["LungMask"]
    assert small.applied_operations[0]["extra_info"] == {"intensity": "hu", "stride": stride}
    assert crop.applied_operations[0]["extra_info"]["kept_slices"] == kept.tolist()
    assert crop.applied_operations[1]["extra_info"]["boxes"] == boxes.tolist()
    assert crop.applied_operations[0]["orig_size"] == tuple(img.shape[1:])
    assert img.applied_operations == []  # the input is not touched
    # geometry: the working grid's affine scales the in-plane axes by the stride; the selection starts at kept[0]
    index = torch.zeros(4, dtype=torch.float64)
    index[3] = 1.0
    index[axis % 4 - 1] = 3.0
    np.testing.assert_allclose(small.affine @ index, img.affine @ index)  # same slice, same point
    index_in = index.clone()
    index_in[axis % 4 - 1] = 3.0 + kept[0]
    np.testing.assert_allclose(selected.affine @ index, img.affine @ index_in)
    assert float(small.pixdim[axis % 4 - 1]) == pytest.approx(SPACING[0])
    assert sorted(float(v) for i, v in enumerate(small.pixdim) if i != axis % 4 - 1) == pytest.approx([4.0, 4.0])
    torch.testing.assert_close(crop.affine, selected.affine)  # per-slice boxes: its input's affine, boxes in the record


def test_without_meta_tracking_the_outputs_are_plain_tensors(chest):
    img = _image(chest, -1, "meta")
    set_track_meta(False)
    try:
        small, _ = LungMask(intensity="hu", slice_axis=-1).working_mask(img)
        kept = SelectLungSlices(slice_axis=-1).compute_kept_slices(small)
        selected = SelectLungSlices(slice_axis=-1)(img, kept)
    finally:
        set_track_meta(True)
    assert type(small) is torch.Tensor and type(selected) is torch.Tensor


def test_non_contiguous_selection_in_a_spatial_last_layout():
    img = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)  # two channels, 7 slices last
    for x in (img, torch.from_numpy(img), MetaTensor(torch.from_numpy(img))):
        out = SelectLungSlices(slice_axis=-1)(x, np.array([1, 4, 5]))
        np.testing.assert_array_equal(np.asarray(out), img[..., [1, 4, 5]])
    meta = SelectLungSlices(slice_axis=-1)(MetaTensor(torch.from_numpy(img)), np.array([1, 4, 5]))
    assert meta.applied_operations[-1]["extra_info"]["kept_slices"] == [1, 4, 5]
    assert float(meta.affine[2, 3]) == 1.0  # starts at the first kept slice


@pytest.mark.parametrize("axis", [1, -1])
def test_spacing_comes_from_the_affine_not_from_a_spacing_key(chest, axis):
    """LoadImaged's MetaTensors carry no ctmil ``spacing`` entry: the affine decides (a stale entry is ignored)."""
    img = _image(chest, axis, "meta")
    img.meta["spacing"] = (1.0, 1.0, 1.0)
    assert LungMask(intensity="hu", slice_axis=axis).working_mask(img)[1] == 8  # 4 mm / 0.5 mm
    assert LungMask(intensity="hu", slice_axis=axis, spacing=(2.0, 1.0, 1.0)).working_mask(img)[1] == 4  # argument wins
    assert LungMask(intensity="hu", slice_axis=axis).working_mask(np.asarray(img))[1] == 4  # plain array: 1 mm pixels


@pytest.mark.parametrize("axis", AXES)
def test_store_case_meta_describes_the_slice_stack(chest, axis):
    img = _image(chest, axis, "meta")
    meta = StoreCaseMetad("image", intensity="hu", slice_axis=axis)({"image": img})["image_meta"]
    assert meta["spatial_shape"] == [12, 100, 100] and meta["spacing"] == pytest.approx(list(SPACING))
    assert meta["intensity"] == "hu" and meta["source"] == "ct.nii.gz" and meta["input_kind"] is None
    np.testing.assert_allclose(np.asarray(meta["affine"]), _affine(1).numpy())  # (s, r, c, 1) → world, whatever the layout


@pytest.mark.parametrize("axis", [0, 4, -4, 1.0, True, "last"])
def test_bad_slice_axis(axis):
    for make in (lambda: LungMask(slice_axis=axis), lambda: SelectLungSlices(slice_axis=axis),
                 lambda: LungBoxCrop(slice_axis=axis), lambda: TilePatches(slice_axis=axis), lambda: StoreCaseMetad(slice_axis=axis)):
        with pytest.raises(ValueError, match="slice_axis"):
            make()


def test_box_count_must_match_the_slices_of_the_layout():
    with pytest.raises(ValueError, match="slices along axis 3"):
        LungBoxCrop(slice_axis=-1)(np.zeros((1, 20, 30, 4), np.float32), np.zeros((3, 4), np.int64))


def test_the_default_slice_axis_is_monais_last_axis():
    assert LungMask().slice_axis == SelectLungSlices().slice_axis == LungBoxCrop().slice_axis == TilePatches().slice_axis == 3
    assert StoreCaseMetad().slice_axis == 3
