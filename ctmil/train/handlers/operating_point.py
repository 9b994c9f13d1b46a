"""Learn the model's operating point (calibration map + threshold) on held-back training cases when training ends.

The cases are the inner validation split (``validate#dataset`` of ``train.json``; in cross-validation the
fold's inner split, never its test fold). The result is put on ``engine.state.operating_point`` before the
:class:`~ctmil.train.handlers.ModelWriter` runs (attach this handler first), so ``model.json`` records it and
``ctmil infer`` / ``ctmil evaluate`` apply it. See :mod:`ctmil.stats.operating_point` for the dict.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from ignite.engine import Engine, Events

from ctmil.data.bags import BagDataset
from ctmil.stats.operating_point import fit_operating_point

__all__ = ["OperatingPointHandler"]

logger = logging.getLogger(__name__)


class OperatingPointHandler:
    """At ``COMPLETED``: predict ``dataset`` with ``network``, fit the operating point, store it on the engine.

    Args:
        network: the bare trained network.
        dataset: calibration cases (``None``: the fixed ``fallback_threshold`` and no calibration).
        calibration: ``"platt"``, ``"isotonic"`` or ``"none"``.
        rule: ``"youden"``, ``"sensitivity"`` (with ``target``) or ``"fixed"``.
        target: the target sensitivity of ``rule="sensitivity"`` (or the threshold of ``"fixed"``).
        fallback_threshold: used when ``dataset`` is missing or holds one class.
        device: where the network runs.
    """

    def __init__(self, network: torch.nn.Module, dataset: Optional[BagDataset], calibration: str = "platt",
                 rule: str = "youden", target: Optional[float] = None, fallback_threshold: float = 0.5,
                 device: "str | torch.device" = "cpu") -> None:  # fmt: skip
        fit_operating_point([], [], calibration, rule, target, fallback_threshold)  # validates the arguments now
        self.network, self.dataset, self.device = network, dataset, device
        self.calibration, self.rule, self.target, self.fallback = calibration, rule, target, float(fallback_threshold)
        self.result: Optional[Dict[str, Any]] = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from ctmil.train.engines import predict  # engines builds trainers that hold this handler

        probs, labels = [], []
        if self.dataset is not None and len(self.dataset):
            pred = predict(self.network, self.dataset, device=self.device)
            probs, labels = pred["prob"], pred["label"]
        self.result = fit_operating_point(probs, labels, self.calibration, self.rule, self.target, self.fallback,
                                          source="inner validation")  # fmt: skip
        engine.state.operating_point = self.result
        logger.info("operating point: threshold %.3f (%s, %s)", self.result["threshold"], self.result["rule"], self.result["source"])
