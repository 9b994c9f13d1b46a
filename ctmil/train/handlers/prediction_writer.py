"""Write the predictions of an evaluation run as a CSV, in the column vocabulary of every ctmil output (docs/cli.md):
``case_id, raw_probability, probability, threshold, prediction, label`` per bag."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events

from ctmil.io.atomic import atomic_write_csv
from ctmil.stats.operating_point import apply_operating_point, check_operating_point
from ctmil.keys import Columns

__all__ = ["PredictionWriter"]

logger = logging.getLogger(__name__)


class PredictionWriter:
    """Collect ``case_id, prob, label`` of an evaluation run and write ``output_dir/filename`` at ``EPOCH_COMPLETED``.

    Collect-then-publish like ``ignite.handlers.EpochOutputStore``; columns ``case_id, raw_probability, probability,
    threshold, prediction, label`` with ``prediction = probability >= threshold``. ``raw_probability`` is the network's
    sigmoid; ``probability`` is it calibrated by the ``operating_point`` (a trained model's calibration map and
    threshold, :mod:`ctmil.stats.operating_point`), and the threshold is the point's; without one,
    ``probability`` is the raw value and the threshold ``threshold``.
    """

    def __init__(self, output_dir: "str | os.PathLike[str]", filename: str = "predictions.csv", threshold: float = 0.5,
                 operating_point: Optional[Mapping[str, Any]] = None) -> None:  # fmt: skip
        self.path = Path(output_dir) / filename
        self.threshold = float(threshold)
        self.operating_point = None if operating_point is None else check_operating_point(operating_point)
        self.rows: list[dict] = []
        self._outputs: list[tuple] = []  # (case_id list, prob, label) per iteration, read at EPOCH_COMPLETED

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self._outputs = [], []

    def collect(self, engine: Engine) -> None:
        """Keep the iteration's tensors as they are (no read-back per iteration); rows are made at publish."""
        out = engine.state.output
        if out is not None:
            self._outputs.append((list(out[Columns.CASE_ID]), out["prob"].detach().reshape(-1), out[Columns.LABEL].detach().reshape(-1)))

    def _make_rows(self) -> None:
        outputs, self._outputs = self._outputs, []
        for case_ids, prob, label in outputs:
            for case_id, p, y in zip(case_ids, prob.tolist(), label.tolist()):
                self.rows.append({Columns.CASE_ID: case_id, Columns.RAW_PROBABILITY: p, Columns.PROBABILITY: p, Columns.THRESHOLD: self.threshold,
                                  Columns.PREDICTION: int(p >= self.threshold), Columns.LABEL: y})  # fmt: skip
        if self.operating_point is not None and self.rows:
            calibrated, decided = apply_operating_point(self.operating_point, np.array([r[Columns.RAW_PROBABILITY] for r in self.rows]))
            for row, c, d in zip(self.rows, calibrated.tolist(), decided.tolist()):
                row.update(probability=c, threshold=self.operating_point[Columns.THRESHOLD], prediction=int(d))

    def publish(self, engine: Engine) -> None:
        self._make_rows()
        columns = [Columns.CASE_ID, Columns.RAW_PROBABILITY, Columns.PROBABILITY, Columns.THRESHOLD, Columns.PREDICTION, Columns.LABEL]
        atomic_write_csv(pd.DataFrame(self.rows, columns=columns), self.path)
        logger.info("%d predictions written to %s", len(self.rows), self.path)
