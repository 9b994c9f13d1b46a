"""Patch storage dtype (issue 13 point 4): the per-patch min-max runs in float32 and only its result is cast, so a
float16 patch is within half a float16 step (2^-12 in [0.5, 1], less below) of the float32 one; float16 bags hold
the same bag otherwise, in half the bytes on disk."""

import io

import numpy as np
import pytest
import torch

from ctmil.transforms import PATCH_DTYPES, NormalizePatches, ToBagd, preprocessing_settings, preprocessing_transforms
from tests.conftest import simple_chest

HALF_STEP = 2.0**-12  # float16 rounding of a value in [0, 1]: at most half the step 2^-11 of [0.5, 1]


def _patches(offset: float) -> torch.Tensor:
    """``(4, 1, 60, 60)`` float32 patches: a ramp, noise, a flat patch and a narrow range far from zero (HU-like)."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1350.0, 150.0, 3600).reshape(1, 60, 60)
    noise = torch.rand(1, 60, 60, generator=g) * 700.0 - 900.0
    flat = torch.full((1, 60, 60), -600.0)
    narrow = torch.rand(1, 60, 60, generator=g) * 2.0 + 1000.0  # a 2 HU range at 1000 HU: float16 steps there are 0.5-1 HU
    return torch.stack([ramp, noise, flat, narrow]) + offset


@pytest.mark.parametrize("as_numpy", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_float16_patches_are_within_half_a_step_of_float32(as_numpy, offset):
    x = _patches(offset)
    ref = NormalizePatches()(x.numpy() if as_numpy else x)
    half = NormalizePatches(dtype="float16")(x.numpy() if as_numpy else x)
    assert ref.dtype == torch.float32 and half.dtype == torch.float16 and half.shape == ref.shape
    err = (half.float() - ref).abs().max().item()
    assert 0 < err <= HALF_STEP  # rounded (not equal), and never by more than half a step
    assert float(half.min()) == 0.0 and float(half.max()) == 1.0 and torch.all(half[2] == 0)  # flat patch


def test_min_max_runs_in_float32_before_the_cast():
    """The narrow patch spans 2 HU at 1000 HU: a min-max on float16 values would keep only a few levels."""
    narrow = _patches(0.0)[3:]
    half = NormalizePatches(dtype="float16")(narrow)
    assert half.unique().numel() > 1000  # float16 inputs there would give at most 5 distinct values
    exact = (narrow.double() - narrow.double().min()) / (narrow.double().max() - narrow.double().min())
    assert (half.double() - exact).abs().max().item() <= HALF_STEP + 1e-7


@pytest.mark.parametrize("bad", ["float64", "half", "fp16", torch.float16, None])
def test_other_patch_dtypes_are_refused(bad):
    for make in (lambda: NormalizePatches(dtype=bad), lambda: ToBagd("image", patch_dtype=bad),
                 lambda: preprocessing_transforms(patch_dtype=bad)):
        with pytest.raises(ValueError, match="patch_dtype"):
            make()


def test_the_setting_defaults_to_float16():
    assert preprocessing_settings()["patch_dtype"] == "float16" and set(PATCH_DTYPES) == {"float16", "float32"}


def _saved_bytes(obj) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    from ctmil.synthetic.phantoms import write_nifti

    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    return str(write_nifti(simple_chest(n_slices=12, lesion=True).astype(np.int16), (2.0, 1.0, 1.0), path))


def test_float16_bag_is_the_float32_bag_in_half_the_bytes(nifti):
    item = {"image": nifti, "case_id": "c", "label": 1.0}
    bags = {name: preprocessing_transforms(patch_dtype=name)(dict(item)) for name in PATCH_DTYPES}
    b16, b32 = bags["float16"], bags["float32"]
    assert b16["patches"].dtype == torch.float16 and b32["patches"].dtype == torch.float32
    for key in ("position", "slice_index", "kept_slices", "boxes", "label"):
        assert torch.equal(b16[key], b32[key]), key
    assert torch.equal(b16["patches"], b32["patches"].half())  # the float32 patches, rounded once
    assert (b16["patches"].float() - b32["patches"]).abs().max().item() <= HALF_STEP
    assert b16["patches"].untyped_storage().nbytes() * 2 == b32["patches"].untyped_storage().nbytes()
    size16, size32 = _saved_bytes(b16), _saved_bytes(b32)
    assert size16 < 0.52 * size32  # the patches are nearly all of a bag file
