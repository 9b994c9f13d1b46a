"""Write an evaluation's metrics as a CSV with a header (``metric,value``), one row per metric.

Why not MONAI's ``MetricsSaver``: it writes ``name<delimiter>value`` lines without a header, and every table ctmil
writes has one (docs/cli.md, "Outputs"), so that the bundle's ``metrics.csv`` reads like every other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import pandas as pd
from ignite.engine import Engine, Events

from ctmil.io.atomic import atomic_write_csv

__all__ = ["MetricsWriter"]

logger = logging.getLogger(__name__)


class MetricsWriter:
    """At ``EPOCH_COMPLETED``: ``output_dir/filename`` with columns ``metric, value`` for ``metrics`` (names in
    ``engine.state.metrics``; a metric the engine did not compute is left out, and said so in the log)."""

    def __init__(self, output_dir: "str | os.PathLike[str]", metrics: Sequence[str], filename: str = "metrics.csv") -> None:
        self.path = Path(output_dir) / filename
        self.metrics = [str(m) for m in metrics]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        found = engine.state.metrics
        missing = [m for m in self.metrics if m not in found]
        if missing:
            logger.warning("metrics not computed, left out of %s: %s", self.path.name, ", ".join(missing))
        rows = [{"metric": m, "value": float(found[m])} for m in self.metrics if m in found]
        atomic_write_csv(pd.DataFrame(rows, columns=["metric", "value"]), self.path)
