"""A torchmil-style gated ABMIL for the benchmarks when ``torchmil`` is not installed.

It follows ``torchmil.models.ABMIL(gated=True)`` (torchmil 1.0.2, ``models/abmil.py`` and
``nn/attention/attention_pool.py``): ``feat_ext`` on the whole padded ``(B, K, ...)`` tensor, then
``fc1`` (tanh) ⊙ ``fc_gated`` (sigmoid) → ``fc2`` → masked softmax over K → ``bmm`` → linear classifier,
logits ``(B,)``. Same layer sizes and operations, so the same cost.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class GatedABMIL(nn.Module):
    """``ABMIL(att_dim, gated=True, feat_ext=...)`` as in torchmil: ``forward(X, mask) -> logits (B,)``."""

    def __init__(self, feat_ext: nn.Module, feat_dim: int = 512, att_dim: int = 128) -> None:
        super().__init__()
        self.feat_ext = feat_ext
        self.fc1 = nn.Linear(feat_dim, att_dim)
        self.fc_gated = nn.Linear(feat_dim, att_dim)
        self.fc2 = nn.Linear(att_dim, 1, bias=False)
        self.classifier = nn.Linear(feat_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.feat_ext(x)  # (B, K, D)
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[1], device=x.device)
        mask = mask.unsqueeze(-1)  # (B, K, 1)
        h = torch.tanh(self.fc1(x)) * torch.sigmoid(self.fc_gated(x))
        f = self.fc2(h)  # (B, K, 1)
        s = torch.softmax(f.masked_fill(mask == 0, float("-inf")), dim=1)  # torchmil's masked_softmax
        z = torch.bmm(x.transpose(1, 2), s).squeeze(-1)  # (B, D)
        return self.classifier(z).squeeze(-1)  # (B,)
