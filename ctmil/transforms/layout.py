"""Where the slices are, and how ctmil's transforms hand back what MONAI hands them.

ctmil's transforms take one channel-first 3D image. Which spatial axis holds the axial slices is the
``slice_axis`` constructor argument: ``-1`` for MONAI's spatial-last layout ``(C, H, W, D)`` as
``LoadImaged`` + ``EnsureChannelFirstd`` give it, ``1`` for ctmil's own :class:`~ctmil.transforms.LoadCT`
stacks ``(1, S, H, W)`` (the default is :data:`DEFAULT_SLICE_AXIS`). Inside, a transform looks at the image as a *slice stack* ``(C, S, rows, cols)``: the
slice axis moved to position 1 and the two in-plane axes kept in array order (rows = the first of them). The
bag's patch grid follows those rows and columns, so the array must be laid out as the slices are displayed
(rows anterior → posterior, columns patient right → left): ``Orientationd(axcodes="PLS")`` does that for a
spatial-last MONAI image (see docs/preprocessing.md, "Use in your own MONAI workflow").

Results go back in the input's layout and type: numpy for numpy, a tensor for a tensor, and for a
:class:`~monai.data.MetaTensor` a MetaTensor carrying the input's metadata, its affine updated where the
transform moved the grid, and the transform appended to ``applied_operations`` (MONAI's
``TraceableTransform.track_transform_meta``, as MONAI's own crops do).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.data.meta_obj import get_track_meta
from monai.transforms import TraceableTransform
from monai.utils import convert_to_tensor

#: The ``slice_axis`` every transform defaults to: -1, MONAI's spatial-last layout (ctmil's own chain passes 1).
DEFAULT_SLICE_AXIS = -1

__all__ = ["DEFAULT_SLICE_AXIS", "check_slice_axis", "to_stack", "from_stack", "stack_spacing", "stack_to_array", "spatial_scale", "slice_shift", "wrap_like"]


def check_slice_axis(slice_axis: int) -> int:
    """The slice axis as a positive axis index (1, 2 or 3) of a ``(C, *spatial)`` image; ``ValueError`` otherwise."""
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, (int, np.integer)) or int(slice_axis) not in (-3, -2, -1, 1, 2, 3):
        raise ValueError(f"slice_axis must be a spatial axis of a channel-first 3D image (1, 2, 3 or -3, -2, -1), got {slice_axis!r}")
    return int(slice_axis) % 4


def _check_ndim(img: NdarrayOrTensor, what: str) -> None:
    if img.ndim != 4:
        raise ValueError(f"{what} expects a channel-first 3D image (C, *spatial_3d), got shape {tuple(img.shape)}")


def to_stack(img: NdarrayOrTensor, axis: int, what: str = "the transform") -> NdarrayOrTensor:
    """View ``(C, S, rows, cols)`` of ``img`` with slices along ``axis`` (plain tensor or numpy, no copy)."""
    _check_ndim(img, what)
    x = img.as_tensor() if isinstance(img, MetaTensor) else img
    if axis == 1:
        return x
    return torch.movedim(x, axis, 1) if isinstance(x, torch.Tensor) else np.moveaxis(x, axis, 1)


def from_stack(x: NdarrayOrTensor, axis: int) -> NdarrayOrTensor:
    """Inverse of :func:`to_stack`: a ``(C, S, rows, cols)`` stack back in the layout with slices along ``axis``."""
    if axis == 1:
        return x
    return torch.movedim(x, 1, axis) if isinstance(x, torch.Tensor) else np.moveaxis(x, 1, axis)


def stack_to_array(axis: int) -> list[int]:
    """Array spatial axis (0-based, without the channel) of stack axes ``(slices, rows, cols)``."""
    inplane = [a for a in (1, 2, 3) if a != axis]
    return [axis - 1, inplane[0] - 1, inplane[1] - 1]


def stack_spacing(img: NdarrayOrTensor, axis: int) -> tuple[float, float, float] | None:
    """``(slice, row, column)`` spacing in mm from a MetaTensor's affine (MONAI's ``pixdim``); ``None`` for plain arrays."""
    if not isinstance(img, MetaTensor):
        return None
    pixdim = affine_to_spacing(img.affine, r=3)
    return tuple(float(pixdim[a]) for a in stack_to_array(axis))


def spatial_scale(axes_factors: dict[int, float]) -> np.ndarray:
    """4×4 index transform scaling array spatial axes (0-based): a grid keeping every ``f``-th voxel along them."""
    m = np.eye(4)
    for a, f in axes_factors.items():
        m[a, a] = f
    return m


def slice_shift(axis: int, start: int) -> np.ndarray:
    """4×4 index transform moving the origin ``start`` voxels along the slice ``axis`` (a crop's translation)."""
    m = np.eye(4)
    m[axis - 1, 3] = start
    return m


def wrap_like(
    out: NdarrayOrTensor,
    img: NdarrayOrTensor,
    transform: TraceableTransform,
    affine: np.ndarray | None = None,
    extra_info: dict | None = None,
) -> NdarrayOrTensor:
    """``out`` (already in ``img``'s layout) in ``img``'s type; a MetaTensor ``img`` gives a MetaTensor with its
    metadata, its affine times ``affine`` (an index transform, see :func:`spatial_scale`) and ``transform``
    recorded in ``applied_operations`` with ``extra_info``. With MONAI's ``set_track_meta(False)`` a plain tensor."""
    if isinstance(img, MetaTensor):
        meta = TraceableTransform.track_transform_meta(
            img,
            sp_size=tuple(int(v) for v in out.shape[1:]),
            affine=None if affine is None else torch.as_tensor(affine, dtype=torch.float64),
            extra_info=extra_info,
            orig_size=tuple(int(v) for v in img.shape[1:]),
            transform_info=transform.get_transform_info(),
        )
        t = convert_to_tensor(out, track_meta=get_track_meta())
        return t.copy_meta_from(meta) if isinstance(t, MetaTensor) else t
    if isinstance(img, torch.Tensor):
        return torch.as_tensor(out)
    return np.asarray(out)

