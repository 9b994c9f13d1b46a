"""Bounding the bag size K: slabs of consecutive slices and at most ``max_slices`` of them, evenly spaced.

A bag holds 12 patches per kept slice, so K follows the scan: about 18 slices (K ≈ 217) in the paper's data, but a
1 mm chest CT keeps 200 or more (K > 2400). :class:`SampleSlices` bounds it deterministically, after the lung slices
are chosen and before the crop (so each slab gets the lung box of its own mask):

1. ``slab_mm``: consecutive slices are split into slabs of about that thickness (``round(slab_mm / spacing)``
   slices, sizes as equal as possible) and each slab is averaged (a thicker reconstruction; masks: the union);
2. ``max_slices``: of ``n`` slabs (single slices when ``slab_mm`` is ``None``) at most ``max_slices`` are kept,
   the one at the centre of each of ``max_slices`` equal parts of the range: ``floor((i + 1/2) n / max_slices)``.

The decision (:meth:`SampleSlices.compute_groups`, positions in the stack) is computed apart from applying it, and
the dictionary wrapper records it: ``kept_slices`` becomes the original index of each slab's middle slice, so
``slice_index``, ``kept_slices`` and ``boxes`` of the bag stay aligned with its patches, and ``slice_groups`` lists
the original slices of every slab.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, TraceableTransform
from monai.utils import TransformBackends

from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, from_stack, slice_shift, stack_spacing, to_stack, wrap_like

#: At most this many slices per bag in the preprocessing chain (:func:`~ctmil.transforms.preprocessing_transforms`;
#: the paper's K ≈ 217; docs/preprocessing.md "Bag size"). :class:`SampleSlices` itself keeps every slice by default.
MAX_SLICES = 18

__all__ = ["SampleSlices", "SampleSlicesd", "SampleSlicesD", "SampleSlicesDict"]


def _check_args(max_slices: int | None, slab_mm: float | None) -> None:
    if max_slices is not None and (isinstance(max_slices, bool) or not isinstance(max_slices, (int, np.integer)) or max_slices < 1):
        raise ValueError(f"max_slices must be a positive int or None (all slices), got {max_slices!r}")
    if slab_mm is not None and (isinstance(slab_mm, bool) or not isinstance(slab_mm, (int, float)) or not 0 < slab_mm < math.inf):
        raise ValueError(f"slab_mm must be a positive number of mm or None (no slabs), got {slab_mm!r}")


class SampleSlices(TraceableTransform):
    """Average slabs of ``slab_mm`` and keep at most ``max_slices`` of them (see the module docstring).

    ``(C, *spatial_3d)`` → the same layout and type with ``len(groups)`` slices along ``slice_axis``; float images
    are averaged in float32, boolean masks take the union of a slab. A MetaTensor result's affine starts at the
    first slab's middle slice; its applied operation lists the groups.

    Args:
        max_slices: at most this many slices (slabs); ``None`` keeps them all.
        slab_mm: slab thickness in mm; ``None`` keeps single slices. Needs the slice spacing.
        slice_axis: spatial axis holding the slices (``-1``: MONAI's spatial-last layout; ``1``: LoadCT's).
        spacing: the slice spacing in mm; ``None`` reads ctmil's record (LoadCT; slice images have none) or a
            MetaTensor's affine.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, max_slices: int | None = None, slab_mm: float | None = None, slice_axis: int = DEFAULT_SLICE_AXIS, spacing: float | None = None
    ) -> None:
        _check_args(max_slices, slab_mm)
        if spacing is not None and not 0 < float(spacing) < math.inf:
            raise ValueError(f"spacing must be a positive number of mm or None, got {spacing!r}")
        self.max_slices = None if max_slices is None else int(max_slices)
        self.slab_mm = None if slab_mm is None else float(slab_mm)
        self.slice_axis = check_slice_axis(slice_axis)
        self.spacing = None if spacing is None else float(spacing)

    def slice_spacing(self, img: NdarrayOrTensor) -> float | None:
        """Slice spacing in mm: the constructor's, ctmil's record (``None`` for slice images), else the affine's."""
        if self.spacing is not None or not isinstance(img, MetaTensor):
            return self.spacing
        if "input_kind" in img.meta:  # LoadCT's record: slice images have no spacing, their affine is the identity
            recorded = img.meta.get("spacing")
            return None if recorded is None else float(recorded[0])
        return stack_spacing(img, self.slice_axis)[0]

    def compute_groups(self, n_slices: int, spacing: float | None = None) -> list[list[int]]:
        """The stack positions of each kept slab (one position per slab without ``slab_mm``), in stack order."""
        if n_slices < 0:
            raise ValueError(f"n_slices must be >= 0, got {n_slices}")
        if n_slices == 0:
            return []
        size = 1
        if self.slab_mm is not None:
            if spacing is None:
                raise ValueError("slab_mm needs the slice spacing, and this image has none (slice images): use slab_mm=None")
            size = max(1, round(self.slab_mm / spacing))
        groups = [g.tolist() for g in np.array_split(np.arange(n_slices), math.ceil(n_slices / size))]
        if self.max_slices is not None and len(groups) > self.max_slices:
            pick = ((np.arange(self.max_slices) + 0.5) * len(groups) / self.max_slices).astype(np.int64)
            groups = [groups[i] for i in pick]
        return groups

    def groups_of(self, img: NdarrayOrTensor) -> list[list[int]]:
        """:meth:`compute_groups` for ``img``'s number of slices and spacing."""
        return self.compute_groups(int(to_stack(img, self.slice_axis, "SampleSlices").shape[1]), self.slice_spacing(img))

    def __call__(self, img: NdarrayOrTensor, groups: list[list[int]] | None = None) -> NdarrayOrTensor:
        """Apply ``groups`` (stack positions per slab; default :meth:`groups_of` ``img``)."""
        groups = self.groups_of(img) if groups is None else [list(map(int, g)) for g in groups]
        x = to_stack(img.as_tensor() if isinstance(img, MetaTensor) else img, self.slice_axis, "SampleSlices")  # (C, S, H, W)
        if all(len(g) == 1 for g in groups):
            index = [g[0] for g in groups]
            out = x[:, torch.as_tensor(index, dtype=torch.long, device=x.device)] if isinstance(x, torch.Tensor) else x[:, index]
        elif isinstance(x, torch.Tensor):
            parts = [x[:, g].any(1) if x.dtype == torch.bool else x[:, g].float().mean(1) for g in groups]
            out = torch.stack(parts, 1)
        else:
            parts = [x[:, g].any(1) if x.dtype == bool else x[:, g].astype(np.float32).mean(1) for g in groups]
            out = np.stack(parts, 1)
        out = from_stack(out, self.slice_axis)
        out = out.contiguous() if isinstance(out, torch.Tensor) else np.ascontiguousarray(out)
        first = groups[0][len(groups[0]) // 2] if groups else 0
        info = {"slice_groups": groups, "max_slices": self.max_slices, "slab_mm": self.slab_mm, "slice_axis": self.slice_axis}
        return wrap_like(out, img, self, affine=slice_shift(self.slice_axis, first) if first else None, extra_info=info)


class SampleSlicesd(MapTransform):
    """Sample the slices of every key as decided once from the first key; records what was kept.

    ``d[kept_key]`` (the original slice indices, e.g. from :class:`~ctmil.transforms.SelectLungSlicesd`; the stack
    positions when absent) becomes the original index of each slab's middle slice and ``d[groups_key]`` the
    original indices of each slab. ``d[meta_key]`` (the bag's meta, when present) gets ``n_lung_slices`` (the
    slices before sampling) and, with slabs, ``slice_groups``, so a bag says which slices each patch averages.
    """

    backend = SampleSlices.backend

    def __init__(
        self,
        keys: KeysCollection,
        max_slices: int | None = None,
        slab_mm: float | None = None,
        kept_key: str = "kept_slices",
        groups_key: str = "slice_groups",
        meta_key: str = "image_meta",
        slice_axis: int = DEFAULT_SLICE_AXIS,
        spacing: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.sampler = SampleSlices(max_slices, slab_mm, slice_axis, spacing)
        self.kept_key, self.groups_key, self.meta_key = kept_key, groups_key, meta_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        n_slices = int(to_stack(d[keys[0]], self.sampler.slice_axis, "SampleSlicesd").shape[1])
        groups = self.sampler.compute_groups(n_slices, self.sampler.slice_spacing(d[keys[0]]))
        for key in keys:
            d[key] = self.sampler(d[key], groups)
        previous = d.get(self.kept_key)
        original = np.arange(n_slices, dtype=np.int64) if previous is None else np.asarray(previous, np.int64).reshape(-1)
        d[self.groups_key] = [original[g].tolist() for g in groups]
        d[self.kept_key] = np.asarray([original[g[len(g) // 2]] for g in groups], np.int64)
        if isinstance(d.get(self.meta_key), Mapping):  # how many lung slices there were, for QC of the lung range
            extra = {"slice_groups": d[self.groups_key]} if any(len(g) > 1 for g in groups) else {}
            d[self.meta_key] = {**d[self.meta_key], "n_lung_slices": n_slices, **extra}
        return d


SampleSlicesD = SampleSlicesDict = SampleSlicesd
