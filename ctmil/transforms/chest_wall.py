"""The chest-wall growth of the lung mask: consolidated lung back inside the crop (docs/preprocessing.md
"Consolidated lung").

Consolidated lung is as dense as the chest wall, so a mask of air-dark pixels ends where the aerated lung ends.
:func:`extend_to_chest_wall` grows it from the lungs' outer edges, through tissue, to the first bone. It works on
boolean ``(S, h, w)`` arrays and knows nothing of HU or windows: :mod:`ctmil.transforms.lung_masks` gives it the
air-dark lungs, the bone and the air outside the body of either kind of image.
"""

from __future__ import annotations

import numpy as np
from ctmil.io.slabs import per_slab

__all__ = ["MAX_GROWTH_RATIO", "MAX_SLICE_GROWTH_RATIO", "bool_filter", "extend_to_chest_wall"]

#: :func:`extend_to_chest_wall`: a line of lung grows by at most this many times its own extent.
MAX_GROWTH_RATIO = 8.0
#: ... and by at most this many times the extent of the slice's lungs along the line's axis.
MAX_SLICE_GROWTH_RATIO = 2.0


def bool_filter(mask: np.ndarray, radius: int, axis: int, op: str) -> np.ndarray:
    """The minimum (``op="min"``) or maximum (``"max"``) of a boolean array over a window of ``2·radius + 1`` along
    ``axis``, the outside counting as False: ``scipy.ndimage.minimum_filter1d`` / ``maximum_filter1d`` with
    ``mode="constant", cval=0``, as shifted ANDs and ORs (several times faster on booleans; the tests compare them)."""
    out = mask.copy()
    n = mask.shape[axis]
    if radius <= 0:
        return out

    def part(lo, hi):
        index = [slice(None)] * mask.ndim
        index[axis] = slice(lo, hi)
        return tuple(index)

    for k in range(1, min(radius, n - 1) + 1):
        if op == "max":
            out[part(k, None)] |= mask[part(None, -k)]
            out[part(None, -k)] |= mask[part(k, None)]
        else:
            out[part(k, None)] &= mask[part(None, -k)]
            out[part(None, -k)] &= mask[part(k, None)]
    if op == "min":  # the window of the first and last radius positions reaches outside, where it is False
        out[part(None, radius)] = False
        out[part(max(n - radius, 0), None)] = False
    return out


def _grow_lines(mask: np.ndarray, bone: np.ndarray, outside: np.ndarray, max_ratio: float, max_slice_ratio: float) -> np.ndarray:
    """The pixels :func:`extend_to_chest_wall` adds along the lines of the last axis of ``(S, n, L)`` arrays.

    Only the lines with lung are read, as rows of ``(lines, L)`` copies whose reductions (``argmax``) run over
    contiguous memory, and the runs to add are written by index: the work follows the lung, not the image."""
    n_slices, n, length = mask.shape
    out = np.zeros(mask.shape, bool)
    flat = mask.reshape(-1, length)
    lines = np.flatnonzero(flat.any(axis=1))
    if lines.size == 0:
        return out
    m = flat[lines]
    first = np.argmax(m, axis=1)
    last = length - 1 - np.argmax(m[:, ::-1], axis=1)
    on_slice = mask.any(axis=1)  # (S, L): positions along the lines with lung anywhere on the slice
    slice_extent = length - np.argmax(on_slice[:, ::-1], axis=1) - np.argmax(on_slice, axis=1)  # used where lung is
    limit = np.minimum(max_ratio * (last - first + 1), max_slice_ratio * slice_extent[lines // n])
    b, o = bone.reshape(-1, length)[lines], outside.reshape(-1, length)[lines]
    stop = b | o  # bone or the air outside: the first of them beyond the lung's edge ends the line's growth
    pos, rows = np.arange(length), np.arange(lines.size)
    starts, lengths = [], []
    for flip in (False, True):  # grow towards the line's end, then (on the flipped lines) towards its start
        edge = (length - 1 - first) if flip else last  # the lung's edge, in the direction's own coordinates
        beyond = (stop[:, ::-1] if flip else stop) & (pos > edge[:, None])
        hit = np.argmax(beyond, axis=1)  # the first stop beyond the edge (0 when none)
        at = (length - 1 - hit) if flip else hit  # ... in the line's coordinates
        ok = beyond[rows, hit] & b[rows, at] & ~o[rows, at] & (hit - edge - 1 <= limit)  # bone, not outside air
        lo, hi = (at + 1, first) if flip else (last + 1, at)
        starts.append(lines[ok] * length + lo[ok])
        lengths.append(hi[ok] - lo[ok])
    start, size = np.concatenate(starts), np.concatenate(lengths)
    total = int(size.sum())
    if total:
        offset = np.cumsum(size) - size  # where each run begins among all added pixels
        out.reshape(-1)[np.repeat(start - offset, size) + np.arange(total)] = True
    return out


def _added(m: np.ndarray, b: np.ndarray, o: np.ndarray, max_ratio: float, max_slice_ratio: float, spike_radius: int) -> np.ndarray:
    """The pixels the growth adds to lung ``m``, slice by slice (:func:`extend_to_chest_wall`)."""
    across = (np.ascontiguousarray(a.transpose(0, 2, 1)) for a in (m, b, o))  # the columns as lines
    rows = _grow_lines(*across, max_ratio, max_slice_ratio).transpose(0, 2, 1)  # growth along each column
    cols = _grow_lines(m, b, o, max_ratio, max_slice_ratio)  # along each row
    added = (rows | cols) & ~m
    if spike_radius > 0 and added.any():  # opening with a square: separable min then max filters, per slice
        for axis in (1, 2):
            added = bool_filter(added, spike_radius, axis, "min")
        for axis in (1, 2):
            added = bool_filter(added, spike_radius, axis, "max")
    return added


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
    added = per_slab(lambda *mbo: _added(*mbo, max_ratio, max_slice_ratio, spike_radius), [m, b, o])  # per slice
    out = mask.copy()
    grown = out[lung]
    grown[(slice(None), *box)] |= added
    out[lung] = grown
    return out
