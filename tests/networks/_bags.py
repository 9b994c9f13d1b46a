"""Tiny synthetic bags for the network tests (no dependency on ctmil.data)."""

from __future__ import annotations

import torch


def make_bag(n_slices: int, seed: int, drop: tuple[int, ...] = (), first_slice: int = 10) -> dict:
    """A bag of ``n_slices`` complete slices (12 patches each, ordered by position), minus instances ``drop``."""
    g = torch.Generator().manual_seed(seed)
    k = 12 * n_slices
    keep = torch.ones(k, dtype=torch.bool)
    keep[list(drop)] = False
    return {
        "patches": torch.rand(k, 1, 60, 60, generator=g)[keep],
        "position": torch.arange(12).repeat(n_slices)[keep],
        "slice_index": (first_slice + torch.arange(n_slices).repeat_interleave(12))[keep],
    }


def pad_batch(bags: list[dict], fill: float = 0.0) -> dict:
    """Pad bags to the largest K like ``collate_bags`` does; padded patches are ``fill``."""
    k_max = max(b["patches"].shape[0] for b in bags)
    n = len(bags)
    out = {
        "patches": torch.full((n, k_max, 1, 60, 60), fill),
        "mask": torch.zeros(n, k_max, dtype=torch.bool),
        "position": torch.full((n, k_max), -1, dtype=torch.long),
        "slice_index": torch.full((n, k_max), -1, dtype=torch.long),
    }
    for i, b in enumerate(bags):
        k = b["patches"].shape[0]
        out["patches"][i, :k] = b["patches"]
        out["mask"][i, :k] = True
        out["position"][i, :k] = b["position"]
        out["slice_index"][i, :k] = b["slice_index"]
    return out
