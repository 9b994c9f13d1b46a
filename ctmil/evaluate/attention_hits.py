"""Does attention find the lesions? The attention hit rate of severe cases whose lesions are known (phantoms).

A patch **covers a lesion** when at least ``min_fraction`` of its area on the original slice is lesion
(:func:`patch_lesion_fraction`: the patch's cell of the lung box, mapped back exactly as the attention maps are,
:func:`ctmil.infer.attention_maps.cell_index`). For one bag, the **hit rate** is the share of its top-``k``
attention patches that cover a lesion, and the **chance rate** the share of all its patches that do: what ``k``
patches drawn at random would give on average. ``k`` defaults to the method's key instances, ``max(1, ⌊αK⌋)``
with α = 0.025 (paper Sec. III.C). :func:`hit_rates` gives both per case and their means over the cases; a
model whose attention ignores the lesions has a hit rate near the chance rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ctmil.infer.attention_maps import GRID, cell_index
from ctmil.keys import Columns

__all__ = ["bag_hit_rate", "hit_rates", "key_instance_count", "patch_lesion_fraction"]


def _np(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def patch_lesion_fraction(lesion, slice_index, position, boxes, kept_slices, grid: tuple[int, int] = GRID) -> np.ndarray:
    """Lesion share ``(K,)`` in [0, 1] of each patch's area on its original slice.

    Args:
        lesion: ``(S, H, W)`` lesion mask (non-zero = lesion) on the grid the bag was made from.
        slice_index, position: ``(K,)`` the bag's per-patch slice and grid position.
        boxes, kept_slices: ``(S_kept, 4)`` lung boxes ``(row0, col0, row1, col1)`` and ``(S_kept,)`` their slices.
    """
    mask = _np(lesion) != 0
    s_idx, pos = _np(slice_index, np.int64).reshape(-1), _np(position, np.int64).reshape(-1)
    boxes, kept = _np(boxes, np.int64).reshape(-1, 4), _np(kept_slices, np.int64).reshape(-1)
    if mask.ndim != 3 or s_idx.shape != pos.shape or boxes.shape[0] != kept.size:
        raise ValueError(f"need lesion (S, H, W), equal-length slice_index/position and one box per kept slice; got "
                         f"{mask.shape}, {s_idx.shape}, {pos.shape}, {boxes.shape[0]} boxes for {kept.size} slices")  # fmt: skip
    rows, cols = grid
    table = np.zeros((kept.size, rows * cols), np.float64)  # (S_kept, 12) lesion share per cell
    for j, (s, (r0, c0, r1, c1)) in enumerate(zip(kept.tolist(), boxes.tolist())):
        cells = (cell_index(r1 - r0, rows)[:, None] * cols + cell_index(c1 - c0, cols)[None, :]).reshape(-1)
        area = np.bincount(cells, minlength=rows * cols)
        hit = np.bincount(cells, weights=mask[s, r0:r1, c0:c1].reshape(-1), minlength=rows * cols)
        table[j] = np.divide(hit, area, out=np.zeros(rows * cols), where=area > 0)
    row_of_slice = {s: j for j, s in enumerate(kept.tolist())}
    try:
        j = np.array([row_of_slice[s] for s in s_idx.tolist()], np.int64)
    except KeyError as err:
        raise ValueError(f"patch slice {err.args[0]} is not among kept_slices") from None
    return table[j, pos] if j.size else np.zeros(0)


def key_instance_count(k_patches: int, alpha: float = 0.025) -> int:
    """``max(1, ⌊α K⌋)``: how many top-attention patches count as the bag's key instances."""
    return max(1, int(np.floor(alpha * int(k_patches))))


def bag_hit_rate(attention, covers, k: int | None = None, alpha: float = 0.025) -> tuple[float, float, int]:
    """``(hit rate, chance rate, k)`` of one bag: ``attention (K,)``, ``covers (K,)`` bool (patch covers a lesion)."""
    a, c = _np(attention, np.float64).reshape(-1), _np(covers, bool).reshape(-1)
    if a.shape != c.shape or a.size == 0:
        raise ValueError(f"attention {a.shape} and covers {c.shape} must be equal, non-empty vectors")
    k = key_instance_count(a.size, alpha) if k is None else min(max(int(k), 1), a.size)
    top = np.argsort(-a, kind="stable")[:k]
    return float(c[top].mean()), float(c.mean()), k


def hit_rates(cases: Sequence[Mapping[str, Any]], min_fraction: float = 0.1, k: int | None = None,
              alpha: float = 0.025) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Per case and overall hit rates of ``cases``: dicts with ``case_id``, ``attention (K,)`` and ``lesion_fraction (K,)``.

    Returns ``(table, summary)``: ``table`` has ``case_id, K, k, hit_rate, chance_rate, lesion_patches``;
    ``summary`` the means ``hit_rate, chance_rate``, their ratio ``lift``, ``n_cases`` and the settings.
    Cases without a lesion patch are left out (their hit rate is undefined).
    """
    rows = []
    for case in cases:
        covers = _np(case["lesion_fraction"], np.float64) >= float(min_fraction)
        if not covers.any():
            continue
        hit, chance, used = bag_hit_rate(case["attention"], covers, k, alpha)
        rows.append({Columns.CASE_ID: str(case[Columns.CASE_ID]), "K": int(covers.size), "k": used, "hit_rate": hit,
                     "chance_rate": chance, "lesion_patches": int(covers.sum())})  # fmt: skip
    table = pd.DataFrame(rows, columns=[Columns.CASE_ID, "K", "k", "hit_rate", "chance_rate", "lesion_patches"])
    hit, chance = (float(table[c].mean()) if len(table) else float("nan") for c in ("hit_rate", "chance_rate"))
    summary = {"hit_rate": hit, "chance_rate": chance, "lift": hit / chance if chance > 0 else float("nan"),
               "n_cases": len(table), "min_fraction": float(min_fraction), "alpha": float(alpha), "k": k}  # fmt: skip
    return table, summary
