"""Relative-location pairs of the paper's Fig. 7 (SSL task 1) and their direction labels.

Grid: each kept slice is tiled into 4 columns × 3 rows, ``position = row * 4 + col`` with row 0 at the top::

    0  1  2  3
    4 [5][6] 7
    8  9 10 11

The two interior patches (positions 5 and 6, the paper's ``a0`` and ``b0``) are the anchors. Each is paired
with its 8 neighbours, giving 16 pairs per complete slice: ``(a0, a1..a8)`` then ``(b0, b1..b8)``.
A pair is ``(anchor, partner)``; its label is the direction of the partner *as seen from the anchor*:

    ====  ============  ======================
    label name          (d_row, d_col) = partner - anchor
    ====  ============  ======================
    0     top-left      (-1, -1)
    1     top           (-1,  0)
    2     top-right     (-1, +1)
    3     left          ( 0, -1)
    4     right         ( 0, +1)
    5     bottom-left   (+1, -1)
    6     bottom        (+1,  0)
    7     bottom-right  (+1, +1)
    ====  ============  ======================
"""

from __future__ import annotations

from typing import Tuple

import torch

__all__ = [
    "GRID_ROWS",
    "GRID_COLS",
    "ANCHOR_POSITIONS",
    "DIRECTIONS",
    "DIRECTION_OFFSETS",
    "relative_pairs",
    "pairs_for_batch",
]

GRID_ROWS = 3
GRID_COLS = 4
ANCHOR_POSITIONS = (5, 6)
DIRECTIONS = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
DIRECTION_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))  # (d_row, d_col)


def relative_pairs(position: torch.Tensor, slice_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Build the relative-location pairs of one bag.

    Args:
        position: ``(K,)`` int grid position in 0..11, ``-1`` for padded instances (ignored).
        slice_index: ``(K,)`` int slice of each instance (any integers; pairs never cross slices).

    Returns:
        ``pairs (P, 2)`` int64 indices into the K axis, ``(anchor, partner)``, and ``labels (P,)`` int64
        direction labels (see the module docstring). Order: anchors in instance order, directions 0..7.
        A pair whose anchor or partner is missing (incomplete slice) is skipped, so ``P <= 16 * n_slices``.

    Raises:
        ValueError: bad shapes, positions outside -1..11, or a (slice, position) present twice.
    """
    if position.dim() != 1 or slice_index.shape != position.shape:
        raise ValueError(
            f"position and slice_index must both be (K,), got {list(position.shape)} and {list(slice_index.shape)}."
        )
    if position.is_floating_point() or slice_index.is_floating_point():
        raise ValueError("position and slice_index must be integer tensors.")
    device = position.device
    position = position.long()
    slice_index = slice_index.long()
    n_pos = GRID_ROWS * GRID_COLS
    if position.numel() and (int(position.min()) < -1 or int(position.max()) >= n_pos):
        raise ValueError(f"position must be in 0..{n_pos - 1} (or -1 for padding).")
    empty = (torch.empty(0, 2, dtype=torch.long, device=device), torch.empty(0, dtype=torch.long, device=device))
    real_idx = torch.nonzero(position >= 0).squeeze(1)  # (R,)
    if real_idx.numel() == 0:
        return empty
    keys = slice_index[real_idx] * n_pos + position[real_idx]  # unique id of (slice, position)
    sorted_keys, order = torch.sort(keys)
    if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ValueError("a (slice_index, position) pair occurs twice in the bag.")
    is_anchor = (position[real_idx] == ANCHOR_POSITIONS[0]) | (position[real_idx] == ANCHOR_POSITIONS[1])
    anchors = real_idx[is_anchor]  # (A,)
    if anchors.numel() == 0:
        return empty
    # Both anchors are interior, so a flat-position offset never wraps across a grid row.
    delta = torch.tensor([dr * GRID_COLS + dc for dr, dc in DIRECTION_OFFSETS], dtype=torch.long, device=device)
    target = (slice_index[anchors] * n_pos + position[anchors]).unsqueeze(1) + delta  # (A, 8)
    loc = torch.searchsorted(sorted_keys, target).clamp(max=sorted_keys.numel() - 1)  # (A, 8)
    found = sorted_keys[loc] == target  # (A, 8)
    partner = real_idx[order[loc]]  # (A, 8)
    anchor = anchors.unsqueeze(1).expand_as(partner)
    labels = torch.arange(len(DIRECTIONS), device=device).expand_as(partner)
    pairs = torch.stack([anchor[found], partner[found]], dim=1)  # (P, 2)
    return pairs, labels[found]


def pairs_for_batch(position: torch.Tensor, slice_index: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`relative_pairs` for a collated batch, padded with ``-1``.

    Args:
        position: ``(B, K)`` int, ``-1`` on padded instances.
        slice_index: ``(B, K)`` int, ``-1`` on padded instances.

    Returns:
        ``pairs (B, P, 2)`` int64 indices into each bag's K axis and ``labels (B, P)`` int64, where
        ``P`` is the largest pair count in the batch; missing rows are ``-1`` in both tensors.
    """
    if position.dim() != 2 or slice_index.shape != position.shape:
        raise ValueError(
            f"position and slice_index must both be (B, K), got {list(position.shape)} and {list(slice_index.shape)}."
        )
    per_bag = [relative_pairs(p, s) for p, s in zip(position, slice_index)]
    n_max = max((pr.shape[0] for pr, _ in per_bag), default=0)
    b = position.shape[0]
    pairs = torch.full((b, n_max, 2), -1, dtype=torch.long, device=position.device)
    labels = torch.full((b, n_max), -1, dtype=torch.long, device=position.device)
    for i, (pr, lb) in enumerate(per_bag):
        pairs[i, : pr.shape[0]] = pr
        labels[i, : lb.shape[0]] = lb
    return pairs, labels
