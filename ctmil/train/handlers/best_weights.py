"""Model selection on the inner validation cases: keep the weights of the best-validated epoch, restore them at the end.

Off by default (``train.json``'s ``select_best``); docs/accuracy.md measures it. The validator runs every
``val_interval`` epochs (MONAI's ``ValidationHandler``); after each run this handler reads its ``metric`` and, when it
is at least as good as the best so far (a later epoch wins a tie: it has trained longer), keeps a copy of the
network's weights. At the trainer's ``COMPLETED`` it loads them back, before the density fusion and the operating
point are fitted (they name this handler as a dependency), and ``epoch`` says which epoch it was
(``model.json`` records it). Its state is part of the checkpoint, so a resumed run selects as an uninterrupted one.
Without any finite metric (no validation cases, one class) the last epoch's weights stay.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Dict, Optional

import torch
from ignite.engine import Engine, Events

from ctmil.train.handlers.end_of_training import EndOfTraining

__all__ = ["BestWeights"]

logger = logging.getLogger(__name__)


class BestWeights(EndOfTraining):
    """Keep ``network``'s weights at the epoch where ``evaluator``'s ``metric`` was best; restore them at the end.

    Args:
        network: the bare network (not a DDP wrapper).
        evaluator: the engine whose ``state.metrics[metric]`` is read after each of its runs.
        metric: the metric name (``val_auc``: higher is better).
        mode: ``"max"`` or ``"min"``.
    """

    def __init__(self, network: torch.nn.Module, evaluator: Engine, metric: str = "val_auc", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        super().__init__()
        self.network, self.evaluator, self.metric, self.mode = network, evaluator, str(metric), mode
        self.best: Optional[float] = None
        self.epoch: Optional[int] = None
        self.weights: Optional[Dict[str, torch.Tensor]] = None
        self._trainer: Optional[Engine] = None

    def attach(self, engine: Engine) -> None:
        self._trainer = engine
        self.evaluator.add_event_handler(Events.COMPLETED, self._seen)
        super().attach(engine)

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value >= self.best if self.mode == "max" else value <= self.best

    def _seen(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)) or not self._better(float(value)):
            return
        self.best, self.epoch = float(value), int(self._trainer.state.epoch) if self._trainer is not None else None
        self.weights = {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def run(self, engine: Engine) -> None:
        """Restore the kept weights (the step of :class:`EndOfTraining`)."""
        if self.weights is None:
            logger.info("model selection: no finite %s was seen; the last epoch's weights stay", self.metric)
            return
        self.network.load_state_dict(self.weights)
        logger.info("model selection: the weights of epoch %s (%s %.4f) restored", self.epoch, self.metric, self.best)

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "weights": copy.copy(self.weights)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.epoch, self.weights = state.get("best"), state.get("epoch"), state.get("weights")
