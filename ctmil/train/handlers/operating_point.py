"""Learn the model's operating point (calibration map + threshold) on held-back training cases when training ends.

The cases are the inner validation split (``validate#dataset`` of ``train.json``; in cross-validation the
fold's inner split, never its test fold). The result is ``result``; the :class:`~ctmil.train.handlers.ModelWriter`
names this handler and records it in ``model.json``, which ``ctmil infer`` / ``ctmil evaluate`` apply. See :mod:`ctmil.stats.operating_point` for the dict.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from ignite.engine import Engine

from ctmil.data.bags import BagDataset
from ctmil.stats.operating_point import fit_operating_point
from ctmil.train.engines import predict
from ctmil.train.handlers.density_fusion import DensityFusionHandler
from ctmil.train.handlers.end_of_training import EndOfTraining
from ctmil.keys import Columns

__all__ = ["OperatingPointHandler"]

logger = logging.getLogger(__name__)


class OperatingPointHandler(EndOfTraining):
    """At ``COMPLETED`` (after the density fusion it names): predict ``dataset`` with ``network``, fit the operating
    point into ``result``.

    Args:
        network: the bare trained network.
        dataset: calibration cases (``None``: the fixed ``fallback_threshold`` and no calibration).
        calibration: ``"platt"``, ``"isotonic"`` or ``"none"``.
        rule: ``"youden"``, ``"prevalence"``, ``"sensitivity"`` (with ``target``) or ``"fixed"``.
        target: the target sensitivity of ``rule="sensitivity"`` (or the threshold of ``"fixed"``; for
            ``"prevalence"``, ``None`` takes the severe fraction of ``train_dataset`` and ``dataset`` together).
        train_dataset: the training cases, whose labels give ``"prevalence"`` its fraction.
        fallback_threshold: used when ``dataset`` is missing or holds one class.
        device: where the network runs.
        density_fusion: the network's density fusion, if any: fitted first, so the point is learnt on the fused score.
    """

    def __init__(self, network: torch.nn.Module, dataset: Optional[BagDataset], calibration: str = "platt",
                 rule: str = "youden", target: Optional[float] = None, fallback_threshold: float = 0.5,
                 device: "str | torch.device" = "cpu", density_fusion: Optional[DensityFusionHandler] = None,
                 train_dataset: Optional[BagDataset] = None) -> None:  # fmt: skip
        super().__init__(after=[density_fusion])
        fit_operating_point([], [], calibration, rule, target, fallback_threshold)  # validates the arguments now
        self.network, self.dataset, self.device, self.train_dataset = network, dataset, device, train_dataset
        self.calibration, self.rule, self.target, self.fallback = calibration, rule, target, float(fallback_threshold)
        self.result: Optional[Dict[str, Any]] = None

    def run(self, engine: Engine) -> None:
        probs, labels = [], []
        if self.dataset is not None and len(self.dataset):
            pred = predict(self.network, self.dataset, device=self.device)
            probs, labels = pred["prob"], pred[Columns.LABEL]
        target = self.target
        if self.rule == "prevalence" and target is None and len(labels):
            known = [float(v) for v in [*(self.train_dataset.labels if self.train_dataset is not None else []), *labels]]
            known = [v for v in known if v in (0.0, 1.0)]
            target = sum(known) / len(known) if 0 < sum(known) < len(known) else None
        self.result = fit_operating_point(probs, labels, self.calibration, self.rule, target, self.fallback,
                                          source="inner validation")  # fmt: skip
        engine.state.operating_point = self.result  # for whoever ran the engine (ctmil cv reads it there)
        logger.info("operating point: threshold %.3f (%s, %s)", self.result[Columns.THRESHOLD], self.result["rule"], self.result["source"])
