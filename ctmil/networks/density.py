"""The density branch of the hybrid bag network: a bag's lung-density features beside its attention-pooled embedding.

``LayerNorm`` first (per bag, over the features: the histogram's shape and the fractions' relation to it survive,
and no cohort statistics have to travel with the model), then one linear layer with ReLU, times ``gain``. MILNet
concatenates the result to the pooled bag features before its classifier (``MILNet(n_density=...)``) and starts
the classifier's weights on it at zero, so an untrained hybrid predicts as the MIL network does.

Why the gain: Adam moves every weight by about the learning rate per step, whatever its gradient, so a branch whose
output is multiplied by ``gain`` learns ``gain`` times faster through the same optimiser. At the paper's 1e-4 the
27 features need thousands of steps to matter; a short protocol (8 epochs of ~50 bags) gives a few hundred.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int, he_init_

__all__ = ["DensityBranch"]


class DensityBranch(nn.Module):
    """``(B, n_features)`` → ``(B, hidden)``: LayerNorm, Linear (He-initialised, zero bias), ReLU, times ``gain``."""

    def __init__(self, n_features: int, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        if not float(gain) > 0:
            raise ValueError(f"gain must be > 0, got {gain!r}.")
        self.gain = float(gain)
        self.n_features = check_positive_int("n_features", n_features)
        self.hidden = check_positive_int("hidden", hidden)
        self.norm = nn.LayerNorm(n_features)
        self.proj = nn.Linear(n_features, hidden)
        he_init_(self.proj)

    def forward(self, density: torch.Tensor) -> torch.Tensor:
        if density.dim() != 2 or density.shape[1] != self.n_features:
            raise ValueError("density must be (B, n_features): one row of lung-density features per bag.")
        return torch.relu(self.proj(self.norm(density.float()))) * self.gain
