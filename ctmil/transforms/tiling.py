"""Tiling resized lung crops into the 12 non-overlapping 60×60 patches of a bag, and per-patch min-max.

Grid position is row-major in the 4-wide × 3-high grid: ``position = row * 4 + col``, row 0 at the top
(anterior), column 0 at the image left (patient right). Bags store their patches as float16 by default
(``patch_dtype``, docs/preprocessing.md "Patch storage"): min-max values lie in [0, 1], where float16 steps are
at most 2^-11, finer than one HU of the lung window.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import GridPatch, MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from ctmil.transforms.intensity import LUNG_WINDOW_HU
from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, to_stack
from ctmil.keys import Columns

#: The bag's defaults (each has this one home; preprocessing's settings of the same names): the patch (H, W), the
#: dtype the patches are stored in, and the intensity normalisation: two channels, the paper's per-patch min-max and
#: the lung window over the volume (docs/accuracy.md measured it above min-max alone; paper.json keeps "minmax").
PATCH_SIZE = (60, 60)
PATCH_DTYPE = "float16"
PATCH_NORM = "both"


class TilePatches(Transform):
    """Tile a one-channel image of ``S`` slices into ``(S * n_patches, 1, ph, pw)`` patches plus their grid positions.

    The slices lie along ``slice_axis`` (``-1``: MONAI's ``(1, H, W, D)``; ``1``: ctmil's ``(1, S, H, W)``); rows and
    columns are the other two axes in array order. MONAI's :class:`~monai.transforms.GridPatch` does the tiling
    (slices as channels, one call for the stack). ``H`` and ``W`` must be multiples of the patch size
    (180 × 240 → 3 × 4 patches of 60 × 60).

    Returns:
        ``(patches, position, slice_order)``: patches ``(K, 1, ph, pw)`` float32, ``position`` ``(K,)``
        int64 in ``0 .. n_patches-1``, ``slice_order`` ``(K,)`` int64 index of the patch's slice in the stack.
        Patches of one slice are consecutive and ordered by position.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, patch_size: tuple[int, int] = PATCH_SIZE, slice_axis: int = DEFAULT_SLICE_AXIS) -> None:
        if len(patch_size) != 2 or min(patch_size) < 1:
            raise ValueError(f"patch_size must be two positive ints, got {patch_size}")
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.slice_axis = check_slice_axis(slice_axis)
        self.gridder = GridPatch(patch_size=self.patch_size)

    def __call__(self, img: NdarrayOrTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"TilePatches expects a one-channel 3D image (1, *spatial_3d), got {tuple(x.shape)}")
        x = to_stack(x, self.slice_axis)  # (1, S, H, W)
        s, h, w = x.shape[1:]
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"image {h}x{w} is not a multiple of the patch size {ph}x{pw}")
        patches = self.gridder(x[0])  # (n_patches, S, ph, pw), slices as channels
        loc = np.asarray(patches.meta["location"])  # (2, n_patches) top-left corners, row-major
        grid_pos = torch.as_tensor(loc[0] // ph * (w // pw) + loc[1] // pw, dtype=torch.int64)
        data = torch.as_tensor(patches).permute(1, 0, 2, 3)  # (S, n_patches, ph, pw)
        order = torch.argsort(grid_pos)
        data, grid_pos = data[:, order], grid_pos[order]
        n = grid_pos.numel()
        return (
            data.reshape(s * n, 1, ph, pw).contiguous(),
            grid_pos.repeat(s),
            torch.arange(s, dtype=torch.int64).repeat_interleave(n),
        )


#: the ``patch_dtype`` settings a bag may store its patches in
PATCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def patch_dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a ``patch_dtype`` setting (``"float16"`` or ``"float32"``); ``ValueError`` otherwise."""
    if not isinstance(name, str) or name not in PATCH_DTYPES:
        raise ValueError(f"patch_dtype must be one of {sorted(PATCH_DTYPES)}, got {name!r}")
    return PATCH_DTYPES[name]


class NormalizePatches(Transform):
    """Min-max normalise each patch of ``(K, C, ph, pw)`` to [0, 1] independently; flat patches become 0.

    The min-max runs in float32; only the result is cast to ``dtype`` (``"float32"`` or ``"float16"``: values in
    [0, 1] then round to the nearest float16, at most 2^-12 away).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, eps: float = 1e-6, dtype: str = "float32") -> None:
        self.eps = eps
        self.dtype = patch_dtype_of(dtype)

    def __call__(self, patches: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(patches, track_meta=False, dtype=torch.float32)
        flat = x.reshape(x.shape[0], -1)
        lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        span = (hi - lo).clamp_min(self.eps)
        out = (flat - lo[:, None]) / span[:, None]
        out[(hi - lo) <= self.eps] = 0.0
        return out.reshape(x.shape).clamp_(0.0, 1.0).to(self.dtype)


BAG_KEYS = ("patches", "position", "slice_index", "kept_slices", "boxes", Columns.LABEL, Columns.CASE_ID, "meta")


#: how patch intensities reach the network: the paper's per-patch min-max, the lung window scaled to [0, 1] over
#: the whole volume (absolute density kept), or both as two channels (min-max first)
PATCH_NORMS = ("minmax", "window", "both")
#: the channels of a patch under each normalisation
PATCH_NORM_CHANNELS = {"minmax": 1, "window": 1, "both": 2}


class ScalePatches(Transform):
    """Scale ``(K, 1, ph, pw)`` patches from ``window`` (``(low, high)``; ``None``: already in [0, 1]) to [0, 1],
    the same map for every patch of the volume, so that absolute density survives (unlike :class:`NormalizePatches`)."""

    backend = [TransformBackends.TORCH]

    def __init__(self, window: tuple[float, float] | None = None, dtype: str = "float32") -> None:
        if window is not None and not float(window[1]) > float(window[0]):
            raise ValueError(f"window must be (low, high) with high > low, got {window!r}")
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.dtype = patch_dtype_of(dtype)

    def __call__(self, patches: NdarrayOrTensor) -> torch.Tensor:
        x = convert_to_tensor(patches, track_meta=False, dtype=torch.float32)
        if self.window is not None:
            x = (x - self.window[0]) / (self.window[1] - self.window[0])
        return x.clamp(0.0, 1.0).to(self.dtype)


def normalise_patches(patches: torch.Tensor, patch_norm: str, window: tuple[float, float] | None, dtype: str) -> torch.Tensor:
    """``(K, 1, ph, pw)`` → ``(K, C, ph, pw)`` normalised as ``patch_norm`` says (:data:`PATCH_NORMS`): ``minmax``
    (C = 1), ``window`` (C = 1, :class:`ScalePatches` over ``window``), ``both`` (C = 2: min-max, window)."""
    if patch_norm not in PATCH_NORMS:
        raise ValueError(f"patch_norm must be one of {PATCH_NORMS}, got {patch_norm!r}")
    parts = []
    if patch_norm in ("minmax", "both"):
        parts.append(NormalizePatches(dtype=dtype)(patches))
    if patch_norm in ("window", "both"):
        parts.append(ScalePatches(window, dtype=dtype)(patches))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class ToBagd(MapTransform):
    """Turn a cropped image ``d[key]`` (one channel, ``S`` slices of 180 × 240) into the bag of docs/design.md.

    Reads the kept slice indices from ``d[kept_key]`` (all ``S`` slices when absent) and the lung boxes from
    ``d[boxes_key]``, as written by :class:`SelectLungSlicesd` / :class:`LungBoxCropd` with the same key
    arguments, and the case metadata from ``d[meta_key]`` (:class:`~ctmil.transforms.StoreCaseMetad`; ``{}``
    when absent). Writes the bag's keys (:data:`BAG_KEYS`) and keeps every other key of ``d`` except ``key``
    itself, which the patches replace (MONAI's ``SelectItemsd(keys=BAG_KEYS)`` after it keeps the bag only).
    ``patch_dtype`` (``"float16"``, the default, or ``"float32"``) is the dtype the patches are stored in.
    ``patch_norm`` (:data:`PATCH_NORMS`) says how they are normalised: ``"minmax"`` (the paper's, each patch to
    [0, 1]), ``"window"`` (the HU ``window_hu`` scaled to [0, 1] for the whole volume; slice images, already
    windowed, as they are) or ``"both"`` (two channels). The image's intensity comes from ``d[meta_key]["intensity"]``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection = "image",
        patch_size: tuple[int, int] = PATCH_SIZE,
        meta_key: str = "image_meta",
        kept_key: str = "kept_slices",
        boxes_key: str = "boxes",
        slice_axis: int = DEFAULT_SLICE_AXIS,
        patch_dtype: str = PATCH_DTYPE,
        allow_missing_keys: bool = False,
        patch_norm: str = PATCH_NORM,
        window_hu: tuple[float, float] | None = LUNG_WINDOW_HU,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if patch_norm not in PATCH_NORMS:
            raise ValueError(f"patch_norm must be one of {PATCH_NORMS}, got {patch_norm!r}")
        if patch_norm != "minmax" and window_hu is None:
            raise ValueError(f"patch_norm={patch_norm!r} scales the HU window to [0, 1]: give window_hu, or patch_norm='minmax'")
        self.tiler = TilePatches(patch_size, slice_axis)
        patch_dtype_of(patch_dtype)  # refused here, before any work
        self.patch_dtype, self.patch_norm = patch_dtype, patch_norm
        self.window_hu = None if window_hu is None else (float(window_hu[0]), float(window_hu[1]))
        self.meta_key, self.kept_key, self.boxes_key = meta_key, kept_key, boxes_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        key = self.first_key(d)
        if key == ():
            return d
        if self.boxes_key not in d:
            raise KeyError(f"ToBagd: no lung boxes under {self.boxes_key!r}: run LungBoxCropd(boxes_key={self.boxes_key!r}) first")
        patches, position, order = self.tiler(d.pop(key))
        n_slices = int(order[-1]) + 1 if order.numel() else 0
        kept = d.get(self.kept_key)
        kept = torch.arange(n_slices) if kept is None else torch.as_tensor(np.asarray(kept), dtype=torch.int64)
        label = d.get(Columns.LABEL)
        label = -1.0 if label is None or (isinstance(label, float) and np.isnan(label)) else float(label)
        meta = d.get(self.meta_key, {})
        window = None if meta.get("intensity") == "windowed" else self.window_hu
        bag = {
            "patches": normalise_patches(patches, self.patch_norm, window, self.patch_dtype),
            "position": position,
            "slice_index": kept[order],
            "kept_slices": kept,
            "boxes": torch.as_tensor(np.asarray(d[self.boxes_key]), dtype=torch.int64),
            Columns.LABEL: torch.tensor(label, dtype=torch.float32),
            Columns.CASE_ID: str(d.get(Columns.CASE_ID, "")),
            "meta": meta,
        }
        d.update(bag)
        return d


ToBagD = ToBagDict = ToBagd
