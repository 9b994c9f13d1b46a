"""The chest-wall growth of the lung mask: consolidated lung back inside the crop (docs/preprocessing.md
"Consolidated lung").

Consolidated lung is as dense as the chest wall, so a mask of air-dark pixels ends where the aerated lung ends.
:func:`extend_to_chest_wall` grows it from the lungs' outer edges, through tissue, to the first bone. It works on
boolean ``(S, h, w)`` arrays and knows nothing of HU or windows: :mod:`ctmil.transforms.lung_masks` gives it the
air-dark lungs, the bone and the air outside the body of either kind of image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MAX_GROWTH_RATIO", "MAX_SLICE_GROWTH_RATIO", "extend_to_chest_wall"]

#: :func:`extend_to_chest_wall`: a line of lung grows by at most this many times its own extent.
MAX_GROWTH_RATIO = 8.0
#: ... and by at most this many times the extent of the slice's lungs along the line's axis.
MAX_SLICE_GROWTH_RATIO = 2.0


def _grow_rows(mask: np.ndarray, bone: np.ndarray, outside: np.ndarray, max_ratio: float, max_slice_ratio: float) -> np.ndarray:
    """The pixels :func:`extend_to_chest_wall` adds along the rows (axis 1) of ``(S, h, w)`` arrays."""
    h = mask.shape[1]
    rows = np.arange(h, dtype=np.int32)[None, :, None]
    has = mask.any(axis=1)  # (S, w): columns with lung
    first = np.argmax(mask, axis=1)
    last = h - 1 - np.argmax(mask[:, ::-1], axis=1)
    extent = np.where(has, last - first + 1, 0)  # first to last lung row
    on_slice = mask.any(axis=2)  # (S, h): rows with lung anywhere on the slice
    slice_extent = np.where(on_slice.any(1), h - np.argmax(on_slice[:, ::-1], axis=1) - np.argmax(on_slice, axis=1), 0)
    limit = np.minimum(max_ratio * extent, max_slice_ratio * slice_extent[:, None])
    runs = []  # per direction, the run [lo, hi) each line grows (empty: lo = h, hi = 0)
    for flip in (False, True):  # grow towards the last row, then (on the flipped rows) towards the first
        b, o = (bone[:, ::-1], outside[:, ::-1]) if flip else (bone, outside)
        edge = np.where(has, (h - 1 - first) if flip else last, h)  # the lung's edge in these rows
        beyond = rows > edge[:, None, :]
        hit_bone, hit_air = b & beyond, o & beyond
        first_bone, first_air = np.argmax(hit_bone, axis=1), np.argmax(hit_air, axis=1)  # 0 when none
        found_bone = np.take_along_axis(hit_bone, first_bone[:, None, :], axis=1)[:, 0]
        found_air = np.take_along_axis(hit_air, first_air[:, None, :], axis=1)[:, 0]
        ok = found_bone & (~found_air | (first_bone < first_air)) & (first_bone - edge - 1 <= limit)
        lo, hi = (h - first_bone, h - 1 - edge) if flip else (edge + 1, first_bone)
        runs.append((np.where(ok, lo, h), np.where(ok, hi, 0)))
    (lo1, hi1), (lo2, hi2) = runs
    return ((rows >= lo1[:, None, :]) & (rows < hi1[:, None, :])) | ((rows >= lo2[:, None, :]) & (rows < hi2[:, None, :]))


def extend_to_chest_wall(
    mask: np.ndarray,
    bone: np.ndarray,
    outside: np.ndarray,
    max_ratio: float = MAX_GROWTH_RATIO,
    spike_radius: int = 1,
    max_slice_ratio: float = MAX_SLICE_GROWTH_RATIO,
) -> np.ndarray:
    """``mask`` grown outwards to the inner chest wall: in every column, from the lung's first and last row, and in
    every row, from its first and last column, through tissue to the first ``bone`` pixel, when that bone comes
    before any ``outside`` pixel (air outside the body).

    All arrays are ``(S, h, w)`` booleans on one grid. Only the outer edges of the lungs grow (the first and last lung
    pixel of a line), and both directions of both axes alike, so a patient lying prone or an image shown upside
    down is treated the same. Where the scan meets the air outside first (an intercostal space, the costal
    cartilage, which is not bone-bright), nothing is added.

    Three guards keep the growth to the lung: a line grows by at most ``max_ratio`` times the lung's own extent on
    it (the thin front tip of a lung does not grow through the heart to the spine) and by at most
    ``max_slice_ratio`` times the extent of the slice's lungs along that axis (a thin sliver of lung base does not
    grow across the liver), and the added pixels are opened per slice with a ``(2·spike_radius+1)²`` square (a
    line that slipped through an intercostal space to the shoulder blade or an arm is a spike a line or two wide;
    consolidation is a broad region).
    """
    lung = np.flatnonzero(mask.any(axis=(1, 2)))  # only slices with lung can grow ...
    if lung.size == 0:
        return mask
    inside = ~outside[lung]  # ... and only inside the box of what is not outside air (the body, the couch)
    rr, cc = np.flatnonzero(inside.any(axis=(0, 2))), np.flatnonzero(inside.any(axis=(0, 1)))
    box = np.s_[rr[0] : rr[-1] + 1, cc[0] : cc[-1] + 1]
    m, b, o = mask[lung][(slice(None), *box)], bone[lung][(slice(None), *box)], outside[lung][(slice(None), *box)]
    rows = _grow_rows(m, b, o, max_ratio, max_slice_ratio)
    cols = _grow_rows(*(a.transpose(0, 2, 1) for a in (m, b, o)), max_ratio, max_slice_ratio).transpose(0, 2, 1)
    added = (rows | cols) & ~m
    if spike_radius > 0 and added.any():  # opening with a square: separable min then max filters, per slice
        size = 2 * spike_radius + 1
        a = added.view(np.uint8)
        for axis in (1, 2):
            a = ndi.minimum_filter1d(a, size, axis=axis, mode="constant", cval=0)
        for axis in (1, 2):
            a = ndi.maximum_filter1d(a, size, axis=axis, mode="constant", cval=0)
        added = a.astype(bool)
    out = mask.copy()
    grown = out[lung]
    grown[(slice(None), *box)] |= added
    out[lung] = grown
    return out
