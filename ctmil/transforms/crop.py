"""Slice selection and per-slice lung bounding-box crop + resize (compute apart from apply).

``compute_*`` methods decide (which slices, which boxes) from the lung mask; ``__call__`` applies a decision
to an image. The dictionary wrappers compute once from ``source_key`` and record the decision under
``kept_key`` / ``boxes_key`` (kept slice indices, boxes in original pixel coordinates) so that per-patch values
can be painted back onto the original CT grid. Images and masks are channel-first 3D with the slices along
``slice_axis`` (``-1``: MONAI's ``(C, H, W, D)``; ``1``: ctmil's LoadCT stacks); rows and columns are the two
in-plane axes in array order (:mod:`ctmil.transforms.layout`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, TraceableTransform
from monai.utils import TransformBackends, convert_to_tensor

from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, from_stack, slice_shift, to_stack, wrap_like

#: The crop's defaults (each has this one home; preprocessing's settings of the same names): slices whose lung area
#: is at least this fraction of the largest are kept; the crop's output (H, W); its margin around the lung box.
MIN_SLICE_AREA_FRACTION = 0.2
SPATIAL_SIZE = (180, 240)
MARGIN_FRACTION = 0.02


def _as_numpy_mask(mask: NdarrayOrTensor, axis: int) -> np.ndarray:
    """The ``(S, h, w)`` boolean slice stack of a one-channel mask with slices along ``axis``."""
    if mask.ndim != 4 or mask.shape[0] != 1:
        raise ValueError(f"expected a one-channel 3D mask (1, *spatial_3d), got shape {tuple(mask.shape)}")
    m = to_stack(mask, axis, "the lung mask")
    m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    return m[0].astype(bool, copy=False)


class SelectLungSlices(TraceableTransform):
    """Keep the slices whose lung area is at least ``min_area_fraction`` of the largest slice's, and every slice with
    some lung between the first and the last of them: the lungs are one run along z, and a slice inside it whose
    air-dark area dips (a consolidated slice, the liver dome) still shows lung. Keeping the run whole also keeps the
    selection a view of the image rather than a copy (a copy of 110 slices of 512² costs ~30 ms).

    Args:
        min_area_fraction: in (0, 1]; 0.2 drops apex and base slices with little lung.
        min_slices: fewer kept slices than this is an error (``ValueError`` with the reason).
        slice_axis: spatial axis holding the slices (``-1``: MONAI's spatial-last layout; ``1``: LoadCT's).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_area_fraction: float = MIN_SLICE_AREA_FRACTION, min_slices: int = 1, slice_axis: int = DEFAULT_SLICE_AXIS) -> None:
        if not 0 < min_area_fraction <= 1:
            raise ValueError(f"min_area_fraction must be in (0, 1], got {min_area_fraction}")
        if min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {min_slices}")
        self.min_area_fraction = min_area_fraction
        self.min_slices = min_slices
        self.slice_axis = check_slice_axis(slice_axis)

    def compute_kept_slices(self, mask: NdarrayOrTensor) -> np.ndarray:
        """Indices ``(S_kept,)`` of the slices to keep, from a one-channel lung mask."""
        areas = _as_numpy_mask(mask, self.slice_axis).sum(axis=(1, 2))
        if areas.max(initial=0) == 0:
            raise ValueError("no lungs found")
        enough = np.flatnonzero(areas >= self.min_area_fraction * areas.max())
        run = np.zeros(areas.size, bool)
        run[enough[0] : enough[-1] + 1] = True  # the lungs are one run along z: a slice inside it with some lung stays
        kept = np.flatnonzero(run & (areas > 0))
        if kept.size < self.min_slices:
            raise ValueError(f"too few slices with lung ({kept.size} < {self.min_slices})")
        return kept.astype(np.int64)

    def __call__(self, img: NdarrayOrTensor, kept: np.ndarray | None = None, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Slices ``kept`` (or computed from ``mask``) of a channel-first 3D image, in its layout and type.

        A MetaTensor result's affine starts at the first kept slice (exact for a contiguous run, the usual case;
        ``extra_info["kept_slices"]`` of its applied operation lists them all).
        """
        if kept is None:
            if mask is None:
                raise ValueError("give kept slice indices or a lung mask")
            kept = self.compute_kept_slices(mask)
        kept = np.asarray(kept, np.int64).reshape(-1)
        if img.ndim != 4:
            raise ValueError(f"SelectLungSlices expects a channel-first 3D image (C, *spatial_3d), got shape {tuple(img.shape)}")
        x, axis = (img.as_tensor() if isinstance(img, MetaTensor) else img), self.slice_axis
        contiguous = bool(kept.size and np.all(np.diff(kept) == 1))
        if contiguous:  # a view, no copy
            out = x[(slice(None),) * axis + (slice(int(kept[0]), int(kept[-1]) + 1),)]
        elif isinstance(x, torch.Tensor):
            out = torch.index_select(x, axis, torch.as_tensor(kept, device=x.device))
        else:
            out = np.take(x, kept, axis=axis)
        shift = slice_shift(axis, int(kept[0])) if kept.size else None
        return wrap_like(out, img, self, affine=shift, extra_info={"kept_slices": kept.tolist(), "slice_axis": axis})


class LungBoxCrop(TraceableTransform):
    """Crop each slice to the bounding box of both lungs and resize it to ``spatial_size`` (rows, columns).

    Only the box of each slice is read and resampled (bilinear), so the cost
    does not grow with the full image size.

    Args:
        spatial_size: output ``(H, W)`` of each slice; the paper's 180 × 240.
        margin_fraction: box grown by this fraction of its size on each side (clipped to the image).
        slice_axis: spatial axis holding the slices (``-1``: MONAI's spatial-last layout; ``1``: LoadCT's).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: tuple[int, int] = SPATIAL_SIZE, margin_fraction: float = MARGIN_FRACTION, slice_axis: int = DEFAULT_SLICE_AXIS) -> None:
        if len(spatial_size) != 2 or min(spatial_size) < 1:
            raise ValueError(f"spatial_size must be two positive ints (H, W), got {spatial_size}")
        if not 0 <= margin_fraction < 0.5:
            raise ValueError(f"margin_fraction must be in [0, 0.5), got {margin_fraction}")
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.margin_fraction = margin_fraction
        self.slice_axis = check_slice_axis(slice_axis)

    def compute_boxes(self, mask: NdarrayOrTensor, stride: int = 1, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Per-slice lung boxes ``(S, 4)`` as ``(row0, col0, row1, col1)``, end exclusive, in image pixels.

        A slice without lung gets the box of the whole stack's lungs.

        Args:
            mask: one-channel lung mask, slices along ``slice_axis`` (``(1, S, h, w)`` as a stack).
            stride: in-plane stride of the mask's grid on the image (``LungMask.working_mask``); 1 when the
                mask is on the image grid. Boxes are the same as from the mask repeated ``stride`` times.
            image_shape: ``(H, W)`` (rows, columns) of the image's slices, for clipping; default ``(h, w) * stride``.
        """
        m = _as_numpy_mask(mask, self.slice_axis)
        if not m.any():
            raise ValueError("no lungs found")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        h, w = image_shape if image_shape is not None else (m.shape[1] * stride, m.shape[2] * stride)
        rows, cols = m.any(axis=2), m.any(axis=1)  # (S, h), (S, w)
        union_r, union_c = np.flatnonzero(rows.any(0)), np.flatnonzero(cols.any(0))
        boxes = np.empty((m.shape[0], 4), np.int64)
        for s in range(m.shape[0]):
            r, c = np.flatnonzero(rows[s]), np.flatnonzero(cols[s])
            r = r if r.size else union_r
            c = c if c.size else union_c
            boxes[s] = (r[0], c[0], r[-1] + 1, c[-1] + 1)
        boxes *= stride
        boxes[:, 2] = np.minimum(boxes[:, 2], h)
        boxes[:, 3] = np.minimum(boxes[:, 3], w)
        mr = np.ceil((boxes[:, 2] - boxes[:, 0]) * self.margin_fraction).astype(np.int64)
        mc = np.ceil((boxes[:, 3] - boxes[:, 1]) * self.margin_fraction).astype(np.int64)
        boxes[:, 0] = np.maximum(boxes[:, 0] - mr, 0)
        boxes[:, 1] = np.maximum(boxes[:, 1] - mc, 0)
        boxes[:, 2] = np.minimum(boxes[:, 2] + mr, h)
        boxes[:, 3] = np.minimum(boxes[:, 3] + mc, w)
        return boxes

    def __call__(self, img: NdarrayOrTensor, boxes: np.ndarray | None = None, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Resample each slice of ``img`` inside its box of ``boxes`` ``(S, 4)`` to ``spatial_size``, float32.

        ``(C, S, H, W)`` → ``(C, S, *spatial_size)`` as a stack, in the image's layout and type. A MetaTensor result
        keeps the input's affine (per-slice boxes have no single affine); its applied operation holds the boxes.
        """
        if boxes is None:
            if mask is None:
                raise ValueError("give boxes or a lung mask")
            boxes = self.compute_boxes(mask)
        boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
        x = to_stack(convert_to_tensor(img, track_meta=False), self.slice_axis, "LungBoxCrop")  # (C, S, H, W)
        if x.shape[1] != len(boxes):
            raise ValueError(f"image {tuple(img.shape)} has {x.shape[1]} slices along axis {self.slice_axis}, not {len(boxes)} boxes")
        out = torch.empty((x.shape[0], x.shape[1], *self.spatial_size), dtype=torch.float32)
        for s, (r0, c0, r1, c1) in enumerate(boxes.tolist()):
            region = x[None, :, s, r0:r1, c0:c1].float()  # (1, C, h, w): only the box is touched
            out[:, s] = F.interpolate(region, size=self.spatial_size, mode="bilinear", align_corners=False)[0]
        out = from_stack(out, self.slice_axis).contiguous()
        out = out if isinstance(img, torch.Tensor) else out.numpy()
        info = {"boxes": boxes.tolist(), "spatial_size": list(self.spatial_size), "slice_axis": self.slice_axis}
        return wrap_like(out, img, self, extra_info=info)


class SelectLungSlicesd(MapTransform):
    """Select lung slices of every key, deciding once from ``d[source_key]``; records the indices in ``d[kept_key]``.

    An earlier selection under ``kept_key`` is composed with this one (indices stay those of the original image).
    """

    backend = SelectLungSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "lung",
        min_area_fraction: float = MIN_SLICE_AREA_FRACTION,
        min_slices: int = 1,
        kept_key: str = "kept_slices",
        slice_axis: int = DEFAULT_SLICE_AXIS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.kept_key = kept_key
        self.selector = SelectLungSlices(min_area_fraction, min_slices, slice_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        kept = self.selector.compute_kept_slices(d[self.source_key])
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key], kept)
        previous = d.get(self.kept_key)
        d[self.kept_key] = np.asarray(previous)[kept] if previous is not None else kept
        return d


class LungBoxCropd(MapTransform):
    """Crop + resize every key to the lung boxes computed once from ``d[source_key]``; records them in ``d[boxes_key]``.

    A mask on a coarser grid (``LungMaskd(full_resolution=False)``) is scaled by ``d[stride_key]`` (default
    ``source_key + "_stride"``; 1 when absent).
    """

    backend = LungBoxCrop.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "lung",
        spatial_size: tuple[int, int] = SPATIAL_SIZE,
        margin_fraction: float = MARGIN_FRACTION,
        boxes_key: str = "boxes",
        stride_key: str | None = None,
        slice_axis: int = DEFAULT_SLICE_AXIS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.boxes_key = boxes_key
        self.stride_key = stride_key or f"{source_key}_stride"
        self.cropper = LungBoxCrop(spatial_size, margin_fraction, slice_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        image_shape = tuple(int(v) for v in to_stack(d[keys[0]], self.cropper.slice_axis).shape[2:]) if keys else None
        boxes = self.cropper.compute_boxes(d[self.source_key], int(d.get(self.stride_key, 1)), image_shape)
        for key in keys:
            d[key] = self.cropper(d[key], boxes)
        d[self.boxes_key] = boxes
        return d


SelectLungSlicesD = SelectLungSlicesDict = SelectLungSlicesd
LungBoxCropD = LungBoxCropDict = LungBoxCropd
