"""Run an evaluator on held-out bags during training and keep the metric history.

The evaluator (see :func:`ctmil.train.steps.create_evaluator`) computes accuracy, sensitivity,
specificity, F1 and AUC with :class:`~ctmil.evaluate.metrics.BagMetrics`. After each run the scalar metrics
are copied into the trainer's ``state.metrics`` as ``<prefix><name>`` (for TensorBoard and the progress bar)
and appended to :attr:`ValidationHandler.history`, which survives checkpoint/resume.

Validation only reports; nothing here selects a model (in cross-validation the held-out bags are the test
fold, so selecting on them would leak).
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, Dict, Iterable, List, Mapping

from ignite.engine import Engine, Events

__all__ = ["ValidationHandler"]

logger = logging.getLogger(__name__)


class ValidationHandler:
    """Every ``interval`` epochs (and after the last epoch) run ``evaluator`` on ``data``.

    Args:
        evaluator: an Ignite engine with metrics attached.
        data: the evaluation batches (re-iterable).
        interval: epochs between runs (``>= 1``).
        prefix: prefix of the metric names copied into the trainer's ``state.metrics``.
    """

    def __init__(self, evaluator: Engine, data: Iterable, interval: int = 1, prefix: str = "val_") -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive int, got {interval!r}.")
        self.evaluator = evaluator
        self.data = data
        self.interval = interval
        self.prefix = prefix
        self.history: List[Dict[str, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def __call__(self, engine: Engine) -> None:
        self.evaluator.run(self.data)
        scalars = {k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, numbers.Number)}
        for name, value in scalars.items():
            engine.state.metrics[self.prefix + name] = value
        self.history.append({"epoch": float(engine.state.epoch), **scalars})
        logger.info("epoch %d validation: %s", engine.state.epoch, ", ".join(f"{k}={v:.3f}" for k, v in scalars.items()))

    def state_dict(self) -> Dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]
