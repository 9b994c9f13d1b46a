"""The lung mask transforms (array + dictionary pair) around :mod:`ctmil.transforms.lung_masks`.

The image may come from MONAI's loaders (``(C, H, W, D)``, ``slice_axis=-1``) or from ctmil's
:class:`~ctmil.transforms.LoadCT` (``(1, S, H, W)``, ``slice_axis=1``); see :mod:`ctmil.transforms.layout`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, TraceableTransform
from monai.utils import TransformBackends

from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, from_stack, spatial_scale, stack_spacing, stack_to_array, to_stack, wrap_like
from ctmil.transforms.lung_masks import BONE_HU, BONE_LEVEL, CHEST_WALL, CLOSING_MM, DILATE_MM, THRESHOLD_HU, lung_mask_hu, lung_mask_windowed

__all__ = ["LungMask", "LungMaskd", "LungMaskD", "LungMaskDict", "lung_mask_hu", "lung_mask_windowed"]

INTENSITIES = ("hu", "windowed")


def recorded_intensity(img: NdarrayOrTensor, given: str | None, who: str) -> str:
    """``hu`` or ``windowed``: ``given`` (a transform's constructor value), else what ctmil's LoadCT recorded in
    the MetaTensor; a one-line ``ValueError`` naming ``who`` when neither says."""
    if given is not None:
        return given
    recorded = img.meta.get("intensity") if isinstance(img, MetaTensor) else None
    if recorded not in INTENSITIES:
        raise ValueError(
            f"{who}: the image does not record its intensity (only ctmil's LoadCT does): "
            "pass intensity='hu' for Hounsfield units or intensity='windowed' for [0, 1] lung-window images"
        )
    return str(recorded)


class LungMask(TraceableTransform):
    """Boolean lung mask of a one-channel CT image, in the image's layout (``(1, H, W, D)`` → ``(1, H, W, D)``).

    The spacing comes from a MetaTensor's affine (MONAI's ``pixdim``) unless ``spacing`` is given, and so does the
    in-plane axis running across the body (:meth:`left_right_axis`, for the second-lung test). A MetaTensor result keeps the image's metadata and records the transform in
    ``applied_operations`` (``extra_info``: ``intensity``, ``stride``).

    Args:
        intensity: ``"hu"`` (Hounsfield units, :func:`lung_mask_hu`) or ``"windowed"`` (lung-window slice images
            in [0, 1], :func:`lung_mask_windowed`). ``None`` reads ``meta["intensity"]``, which only ctmil's
            :class:`~ctmil.transforms.LoadCT` records; any other image is then an error (MONAI's loaders say
            nothing about intensities), never a guess.
        threshold_hu, min_component_fraction, closing_mm, dilate_mm, working_mm: see :func:`lung_mask_hu`.
        slice_axis: spatial axis holding the axial slices (``-1``: MONAI's spatial-last layout; ``1``: LoadCT's).
        spacing: ``(slice, row, column)`` mm; ``None`` reads a MetaTensor's affine, and takes a plain HU array as
            1 mm pixels with every slice on the working grid.
        chest_wall: grow the air-dark lung outwards to the first bone, so that consolidated lung is inside the mask
            (:func:`~ctmil.transforms.chest_wall.extend_to_chest_wall`), and keep a lung whose aerated part is small
            beside the other (``second_fraction`` of :func:`lung_mask_windowed`); ``False``: the air-dark mask
            as ctmil made it before the chest-wall growth (exactly so with ``dilate_mm=8``, that time's default).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        intensity: str | None = None,
        threshold_hu: float = THRESHOLD_HU,
        min_component_fraction: float = 0.08,
        closing_mm: float = CLOSING_MM,
        dilate_mm: float = DILATE_MM,
        working_mm: float = 4.0,
        slice_axis: int = DEFAULT_SLICE_AXIS,
        spacing: tuple[float, float, float] | None = None,
        chest_wall: bool = CHEST_WALL,
    ) -> None:
        if intensity is not None and intensity not in INTENSITIES:
            raise ValueError(f"intensity must be 'hu', 'windowed' or None (ctmil's LoadCT's record), got {intensity!r}")
        if not 0 < min_component_fraction <= 1:
            raise ValueError(f"min_component_fraction must be in (0, 1], got {min_component_fraction}")
        if closing_mm < 0 or dilate_mm < 0 or working_mm <= 0:
            raise ValueError("closing_mm and dilate_mm must be >= 0 and working_mm > 0")
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be three positive mm values (slice, row, column), got {spacing}")
        self.intensity = intensity
        self.slice_axis = check_slice_axis(slice_axis)
        self.spacing = None if spacing is None else tuple(float(v) for v in spacing)
        self.chest_wall = bool(chest_wall)
        self.hu_args = {
            "threshold_hu": threshold_hu, "min_component_fraction": min_component_fraction,
            "closing_mm": closing_mm, "dilate_mm": dilate_mm, "working_mm": working_mm,
            "bone_hu": BONE_HU if self.chest_wall else None,
        }

    def intensity_of(self, img: NdarrayOrTensor) -> str:
        """``hu`` or ``windowed``: the constructor's value, else ctmil's recorded one; ``ValueError`` when neither."""
        return recorded_intensity(img, self.intensity, "LungMask")

    def _compute(self, img: NdarrayOrTensor) -> tuple[np.ndarray, int, str]:
        """The mask ``(1, S, h, w)`` on the working grid of the slice stack, its in-plane stride and the intensity."""
        if img.ndim != 4 or img.shape[0] != 1:
            raise ValueError(f"LungMask expects a one-channel 3D image (1, *spatial_3d), got shape {tuple(img.shape)}")
        kind = self.intensity_of(img)
        stack = to_stack(img, self.slice_axis, "LungMask")
        arr = (stack.detach().cpu().numpy() if isinstance(stack, torch.Tensor) else np.asarray(stack))[0]  # (S, H, W)
        if kind == "windowed":
            grown = {"bone_level": BONE_LEVEL} if self.chest_wall else {"bone_level": None, "second_fraction": None}
            mask, stride = lung_mask_windowed(arr, **grown), 1
        else:
            spacing = self.spacing or stack_spacing(img, self.slice_axis)
            mask, stride = lung_mask_hu(arr, spacing, lr_axis=self.left_right_axis(img), **self.hu_args)
        return mask[None], stride, kind

    def left_right_axis(self, img: NdarrayOrTensor) -> int:
        """Which in-plane axis of the slice stack runs across the body (1: rows, 2: columns): for a MetaTensor the
        one closer to the world's left-right axis (x in RAS and LPS alike), else the columns, as displayed."""
        if not isinstance(img, MetaTensor):
            return 2
        rows, cols = stack_to_array(self.slice_axis)[1:]
        x = img.affine[0, :3].abs()
        return 1 if float(x[rows]) > float(x[cols]) else 2

    def _wrap(self, mask: np.ndarray, img: NdarrayOrTensor, stride: int, kind: str) -> NdarrayOrTensor:
        out = np.ascontiguousarray(from_stack(mask, self.slice_axis))
        out = torch.from_numpy(out) if isinstance(img, torch.Tensor) else out
        inplane = stack_to_array(self.slice_axis)[1:]
        scale = spatial_scale({a: stride for a in inplane}) if stride > 1 else None
        return wrap_like(out, img, self, affine=scale, extra_info={"intensity": kind, "stride": int(stride)})

    def working_mask(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, int]:
        """The mask as computed, on the grid of every ``stride``-th row and column of each slice (each slice kept),
        and that in-plane ``stride`` (1 for windowed images). A MetaTensor mask's affine is that grid's."""
        mask, stride, kind = self._compute(img)
        return self._wrap(mask, img, stride, kind), stride

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Boolean mask on the grid of ``img``, in its layout."""
        mask, stride, kind = self._compute(img)
        if stride > 1:
            s, h, w = (int(v) for v in to_stack(img, self.slice_axis).shape[1:])
            m = mask[0]
            full = np.empty((s, m.shape[1] * stride, m.shape[2] * stride), bool)
            full.reshape(s, m.shape[1], stride, m.shape[2], stride)[...] = m[:, :, None, :, None]  # one pass
            mask = full[None, :, :h, :w]
        return self._wrap(mask, img, 1, kind)


class LungMaskd(MapTransform):
    """Dictionary wrapper of :class:`LungMask`: writes the mask of ``d[key]`` to ``d[mask_key]``.

    With ``full_resolution=False`` the mask stays on its working grid (``LungMask.working_mask``) and its
    in-plane stride goes to ``d[stride_key]`` (default ``mask_key + "_stride"``); :class:`SelectLungSlicesd` and
    :class:`LungBoxCropd` read both, so the chain never builds the full-size mask (the default chain does this).
    Other arguments: see :class:`LungMask`.
    """

    backend = LungMask.backend

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "lung",
        full_resolution: bool = True,
        stride_key: str | None = None,
        intensity: str | None = None,
        slice_axis: int = DEFAULT_SLICE_AXIS,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.stride_key = stride_key or f"{mask_key}_stride"
        self.full_resolution = full_resolution
        self.masker = LungMask(intensity=intensity, slice_axis=slice_axis, **kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.full_resolution:
                d[self.mask_key] = self.masker(d[key])
            else:
                d[self.mask_key], d[self.stride_key] = self.masker.working_mask(d[key])
        return d


LungMaskD = LungMaskDict = LungMaskd
