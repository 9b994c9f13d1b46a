"""Slice selection and per-slice lung bounding-box crop + resize (compute apart from apply).

``compute_*`` methods decide (which slices, which boxes) from the lung mask; ``__call__`` applies a decision
to an image. The dictionary wrappers compute once from ``source_key`` and record the decision
(``kept_slices``, ``boxes`` in original pixel coordinates) so that per-patch values can be painted back
onto the original CT grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor


def _as_numpy_mask(mask: NdarrayOrTensor) -> np.ndarray:
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 4 or m.shape[0] != 1:
        raise ValueError(f"expected a (1, S, H, W) mask, got shape {m.shape}")
    return m[0].astype(bool, copy=False)


class SelectLungSlices(Transform):
    """Keep the slices whose lung area is at least ``min_area_fraction`` of the largest slice's.

    Args:
        min_area_fraction: in (0, 1]; 0.2 drops apex and base slices with little lung.
        min_slices: fewer kept slices than this is an error (``ValueError`` with the reason).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_area_fraction: float = 0.2, min_slices: int = 1) -> None:
        if not 0 < min_area_fraction <= 1:
            raise ValueError(f"min_area_fraction must be in (0, 1], got {min_area_fraction}")
        if min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {min_slices}")
        self.min_area_fraction = min_area_fraction
        self.min_slices = min_slices

    def compute_kept_slices(self, mask: NdarrayOrTensor) -> np.ndarray:
        """Indices ``(S_kept,)`` of the slices to keep, from a ``(1, S, H, W)`` lung mask."""
        areas = _as_numpy_mask(mask).sum(axis=(1, 2))
        if areas.max(initial=0) == 0:
            raise ValueError("no lungs found")
        kept = np.flatnonzero(areas >= self.min_area_fraction * areas.max())
        if kept.size < self.min_slices:
            raise ValueError(f"too few slices with lung ({kept.size} < {self.min_slices})")
        return kept.astype(np.int64)

    def __call__(self, img: NdarrayOrTensor, kept: np.ndarray | None = None, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """Select slices ``kept`` (or compute them from ``mask``) of a ``(C, S, H, W)`` image."""
        if kept is None:
            if mask is None:
                raise ValueError("give kept slice indices or a lung mask")
            kept = self.compute_kept_slices(mask)
        kept = np.asarray(kept)
        if kept.size and np.all(np.diff(kept) == 1):  # a contiguous run: a view, no copy
            return img[:, int(kept[0]) : int(kept[-1]) + 1]
        return img[:, torch.as_tensor(kept)] if isinstance(img, torch.Tensor) else img[:, kept]


class LungBoxCrop(Transform):
    """Crop each slice to the bounding box of both lungs and resize it to ``spatial_size`` (H, W).

    Only the box of each slice is read and resampled (bilinear), so the cost
    does not grow with the full image size.

    Args:
        spatial_size: output ``(H, W)``; the paper's 180 × 240.
        margin_fraction: box grown by this fraction of its size on each side (clipped to the image).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: tuple[int, int] = (180, 240), margin_fraction: float = 0.02) -> None:
        if len(spatial_size) != 2 or min(spatial_size) < 1:
            raise ValueError(f"spatial_size must be two positive ints (H, W), got {spatial_size}")
        if not 0 <= margin_fraction < 0.5:
            raise ValueError(f"margin_fraction must be in [0, 0.5), got {margin_fraction}")
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.margin_fraction = margin_fraction

    def compute_boxes(self, mask: NdarrayOrTensor, stride: int = 1, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """Per-slice lung boxes ``(S, 4)`` as ``(row0, col0, row1, col1)``, end exclusive, in image pixels.

        A slice without lung gets the box of the whole stack's lungs.

        Args:
            mask: ``(1, S, h, w)`` lung mask.
            stride: in-plane stride of the mask's grid on the image (``LungMask.working_mask``); 1 when the
                mask is on the image grid. Boxes are the same as from the mask repeated ``stride`` times.
            image_shape: ``(H, W)`` of the image, for clipping; default ``(h, w) * stride``.
        """
        m = _as_numpy_mask(mask)
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

    def __call__(self, img: NdarrayOrTensor, boxes: np.ndarray | None = None, mask: NdarrayOrTensor | None = None) -> torch.Tensor:
        """Resample ``img`` ``(C, S, H, W)`` inside ``boxes`` ``(S, 4)`` to ``(C, S, *spatial_size)`` float32."""
        if boxes is None:
            if mask is None:
                raise ValueError("give boxes or a lung mask")
            boxes = self.compute_boxes(mask)
        x = convert_to_tensor(img, track_meta=False)
        if x.ndim != 4 or x.shape[1] != len(boxes):
            raise ValueError(f"image {tuple(x.shape)} does not match {len(boxes)} boxes")
        out = torch.empty((x.shape[0], x.shape[1], *self.spatial_size), dtype=torch.float32)
        for s, (r0, c0, r1, c1) in enumerate(np.asarray(boxes).tolist()):
            region = x[None, :, s, r0:r1, c0:c1].float()  # (1, C, h, w): only the box is touched
            out[:, s] = F.interpolate(region, size=self.spatial_size, mode="bilinear", align_corners=False)[0]
        return out


class SelectLungSlicesd(MapTransform):
    """Select lung slices of every key, deciding once from ``source_key``; records ``d["kept_slices"]``."""

    backend = SelectLungSlices.backend

    def __init__(self, keys: KeysCollection, source_key: str = "lung", min_area_fraction: float = 0.2, min_slices: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.selector = SelectLungSlices(min_area_fraction, min_slices)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        kept = self.selector.compute_kept_slices(d[self.source_key])
        for key in self.key_iterator(d):
            d[key] = self.selector(d[key], kept)
        previous = d.get("kept_slices")
        d["kept_slices"] = np.asarray(previous)[kept] if previous is not None else kept
        return d


class LungBoxCropd(MapTransform):
    """Crop + resize every key to the lung boxes computed once from ``source_key``; records ``d["boxes"]``.

    A mask on a coarser grid (``LungMaskd(full_resolution=False)``) is scaled by ``d[source_key + "_stride"]``.
    """

    backend = LungBoxCrop.backend

    def __init__(self, keys: KeysCollection, source_key: str = "lung", spatial_size: tuple[int, int] = (180, 240), margin_fraction: float = 0.02, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.cropper = LungBoxCrop(spatial_size, margin_fraction)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        image_shape = tuple(int(v) for v in d[keys[0]].shape[-2:]) if keys else None
        boxes = self.cropper.compute_boxes(d[self.source_key], int(d.get(f"{self.source_key}_stride", 1)), image_shape)
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key], boxes)
        d["boxes"] = boxes
        return d


SelectLungSlicesD = SelectLungSlicesDict = SelectLungSlicesd
LungBoxCropD = LungBoxCropDict = LungBoxCropd
