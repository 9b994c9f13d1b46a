"""Write the predictions of an evaluation run: ``case_id, prob, prediction, label`` per bag, as a CSV."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from ignite.engine import Engine, Events

from ctmil.data.preprocess import atomic_write_csv

__all__ = ["PredictionWriter"]

logger = logging.getLogger(__name__)


class PredictionWriter:
    """Collect ``case_id, prob, label`` of an evaluation run and write ``output_dir/filename`` at ``EPOCH_COMPLETED``.

    Collect-then-publish like ``ignite.handlers.EpochOutputStore``; columns ``case_id, prob, prediction, label``
    (``prediction = prob >= threshold``).
    """

    def __init__(self, output_dir: "str | os.PathLike[str]", filename: str = "predictions.csv", threshold: float = 0.5) -> None:
        self.path = Path(output_dir) / filename
        self.threshold = float(threshold)
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
            self._outputs.append((list(out["case_id"]), out["prob"].detach().reshape(-1), out["label"].detach().reshape(-1)))

    def _make_rows(self) -> None:
        outputs, self._outputs = self._outputs, []
        for case_ids, prob, label in outputs:
            for case_id, p, y in zip(case_ids, prob.tolist(), label.tolist()):
                self.rows.append({"case_id": case_id, "prob": p, "prediction": int(p >= self.threshold), "label": y})

    def publish(self, engine: Engine) -> None:
        self._make_rows()
        atomic_write_csv(pd.DataFrame(self.rows, columns=["case_id", "prob", "prediction", "label"]), self.path)
        logger.info("%d predictions written to %s", len(self.rows), self.path)
