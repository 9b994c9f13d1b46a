"""Fully connected heads: the bag classifier's companions, the self-supervised location heads."""

from __future__ import annotations

import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int

__all__ = ["MLPHead"]


class MLPHead(nn.Module):
    """Two fully connected layers ``Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, out_dim)``.

    The paper's SSL networks ``G^a_phi`` (patch feature -> 12 absolute positions) and ``G^r_phi``
    (concatenated pair features -> 8 relative directions) are both of this form.
    ``x: (..., in_dim) -> (..., out_dim)`` logits.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("in_dim", in_dim)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("out_dim", out_dim)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
