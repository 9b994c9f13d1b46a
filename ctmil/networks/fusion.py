"""Late fusion of the MIL network's bag logit with a linear lung-density model (the default since issue 19).

On real CT a linear model on the bag's lung-density features (the quantitative baseline ``Q`` of ``ctmil cv``)
ranks severity better than the attention-MIL network trained on a few dozen bags, and their mean beats both
(docs/accuracy.md). This part holds that linear model and the mean, so that the network's ``forward`` returns the
fused logit and everything downstream (calibration, operating point, ``ctmil infer``, ONNX) is unchanged::

    q      = ((density - mean) / scale) @ coef + intercept           # the density model's logit
    fused  = w_mil * (a_mil * mil + b_mil) + w_q * (a_q * q + b_q)     # each logit Platt-calibrated, then weighted

Nothing here is trained by the optimiser: every value is a buffer, set once by
:class:`ctmil.train.handlers.DensityFusionHandler` when training ends (the density model fitted on the training
cases, the two Platt maps on the inner validation cases). Until then ``w = (1, 0)`` and ``a_mil = 1, b_mil = 0``, so
the part passes the MIL logit through: training, virtual bags and validation see the paper's network, and its
attention maps are exactly those of a network without the part.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int

__all__ = ["DensityFusion", "LOGIT_LIMIT"]

#: an infinite density logit (features far outside the training range) is clipped to this magnitude, the logit of
#: the probability clip [1e-7, 1 - 1e-7] of :func:`ctmil.stats.calibration.apply_calibration`
LOGIT_LIMIT = 16.118


class DensityFusion(nn.Module):
    """``(mil logits (B, 1), density (B, n_features))`` → fused logits ``(B, 1)``; see the module docstring.

    Buffers (all float32): ``mean``, ``scale``, ``coef`` ``(n_features,)`` and ``intercept`` ``()`` of the density
    model; ``maps (2, 2)``: rows ``(a, b)`` of the MIL and the density logit's Platt maps; ``weights (2,)``.
    """

    __constants__ = ["limit"]

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.n_features = check_positive_int("n_features", n_features)
        self.limit = LOGIT_LIMIT
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("coef", torch.zeros(n_features))
        self.register_buffer("intercept", torch.zeros(()))
        self.register_buffer("maps", torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        self.register_buffer("weights", torch.tensor([1.0, 0.0]))

    def is_fitted(self) -> bool:
        """Whether the density model takes part (a weight on it), i.e. :meth:`set_fit` ran with a usable fit."""
        return bool(self.weights[1] != 0)

    def reset_(self) -> "DensityFusion":
        """Back to the pass-through of an unfitted part (the MIL logit alone)."""
        with torch.no_grad():
            self.mean.zero_()
            self.scale.fill_(1.0)
            self.coef.zero_()
            self.intercept.zero_()
            self.maps.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
            self.weights.copy_(torch.tensor([1.0, 0.0]))
        return self

    def set_fit(self, mean: Sequence[float], scale: Sequence[float], coef: Sequence[float], intercept: float,
                maps: Sequence[Sequence[float]], weights: Sequence[float]) -> "DensityFusion":  # fmt: skip
        """Load a fitted density model (standardisation + linear logit), the two Platt maps and the weights (normalised
        to sum 1); every value is checked before any buffer changes (ValueError)."""
        values = {}
        for name, value in {"mean": mean, "scale": scale, "coef": coef}.items():
            t = torch.as_tensor(np.asarray(value, dtype=np.float32)).reshape(-1)
            if t.numel() != self.n_features or not torch.isfinite(t).all():
                raise ValueError(f"{name} must be {self.n_features} finite values, got {t.numel()}.")
            values[name] = t
        if not (values["scale"] > 0).all():
            raise ValueError("scale must be > 0.")
        m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32)).reshape(-1)
        if m.shape != (2, 2) or w.shape != (2,) or not (torch.isfinite(m).all() and torch.isfinite(w).all()):
            raise ValueError("maps must be 2 x 2 and weights 2 finite values.")
        if (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError("weights must be >= 0 and not all zero.")
        if not np.isfinite(float(intercept)):
            raise ValueError("intercept must be finite.")
        with torch.no_grad():
            for name, t in values.items():
                getattr(self, name).copy_(t)
            self.intercept.fill_(float(intercept))
            self.maps.copy_(m)
            self.weights.copy_(w / w.sum())
        return self

    def density_logit(self, density: torch.Tensor) -> torch.Tensor:
        """The density model's logits ``(B, 1)`` of ``density (B, n_features)`` (before its Platt map)."""
        if density.dim() != 2 or density.shape[1] != self.n_features:
            raise ValueError(f"density must be (B, {self.n_features}): one row of lung-density features per bag.")
        z = (density.float() - self.mean) / self.scale
        return (z @ self.coef + self.intercept).unsqueeze(1)

    def forward(self, mil_logits: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
        """Unfitted, exactly ``mil_logits`` (``1 * (1 * mil + 0) + 0 * finite``), so training is the paper's."""
        mil = mil_logits.float()
        q = torch.nan_to_num(self.density_logit(density), nan=0.0, posinf=self.limit, neginf=-self.limit)
        fused = self.weights[0] * (self.maps[0, 0] * mil + self.maps[0, 1]) + self.weights[1] * (self.maps[1, 0] * q + self.maps[1, 1])
        return fused.to(mil_logits.dtype)

    def summary(self) -> Mapping[str, object]:
        """The part's values as plain JSON (for the model card)."""
        return {"weights": self.weights.tolist(), "platt_mil": self.maps[0].tolist(), "platt_density": self.maps[1].tolist(),
                "density_model": {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                                  "intercept": float(self.intercept)}}  # fmt: skip
