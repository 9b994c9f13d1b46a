"""The engines' bag metrics: :func:`ctmil.stats.metrics.binary_metrics` as an Ignite ``EpochMetric`` (the whole epoch,
gathered across ranks)."""

from __future__ import annotations

from typing import Callable, Dict

import ignite.distributed as idist
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric

from ctmil.stats.metrics import binary_metrics
from ctmil.keys import Columns

__all__ = ["BagMetrics"]


class BagMetrics(EpochMetric):
    """All of :data:`METRIC_NAMES` over an epoch, as an Ignite metric.

    Attached under ``name``, the engine's ``state.metrics`` gets one entry per metric (``accuracy``, ...)
    plus ``name`` holding the dict. ``output_transform`` must return ``(prob (B,), label (B,))``.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        output_transform: Callable = lambda out: (out["prob"], out[Columns.LABEL]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.threshold = float(threshold)
        super().__init__(
            lambda p, y: binary_metrics(p, y, self.threshold),
            output_transform=output_transform,
            check_compute_fn=False,
            device=device,
        )

    def compute(self) -> Dict[str, float]:
        """The metrics over every rank's predictions: gathered, then computed on each rank alike.

        (Ignite's ``EpochMetric.compute`` computes on rank 0 and broadcasts the result, which cannot carry a dict.)
        """
        if len(self._predictions) < 1 or len(self._targets) < 1:
            raise NotComputableError("BagMetrics must have at least one example before it can be computed.")
        probs, labels = torch.cat(self._predictions, dim=0), torch.cat(self._targets, dim=0)
        if idist.get_world_size() > 1:
            probs, labels = idist.all_gather(probs), idist.all_gather(labels)
        return binary_metrics(probs, labels, self.threshold)
