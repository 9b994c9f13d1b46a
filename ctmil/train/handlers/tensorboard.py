"""Write the engine's scalar epoch metrics to TensorBoard (``torch.utils.tensorboard``)."""

from __future__ import annotations

import numbers
import os
from typing import Optional, Sequence

from ignite.engine import Engine, Events

__all__ = ["TensorBoardHandler"]


class TensorBoardHandler:
    """At ``EPOCH_COMPLETED`` write every scalar in ``engine.state.metrics`` as ``<tag>/<name>`` at step = epoch.

    The writer is opened on the first write (so attaching costs nothing) and closed at ``COMPLETED``
    or by :meth:`close`. A resumed run appends a new event file to the same folder.

    Args:
        log_dir: folder of the event files.
        tag: scalar name prefix.
        metric_names: only these metrics (``None`` = all scalar metrics).
    """

    def __init__(self, log_dir: "str | os.PathLike[str]", tag: str = "train", metric_names: Optional[Sequence[str]] = None):
        self.log_dir = os.fspath(log_dir)
        self.tag = tag
        self.metric_names = None if metric_names is None else tuple(metric_names)
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def __call__(self, engine: Engine) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to import

            self._writer = SummaryWriter(log_dir=self.log_dir)
        for name, value in engine.state.metrics.items():
            if self.metric_names is not None and name not in self.metric_names:
                continue
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                self._writer.add_scalar(f"{self.tag}/{name}", float(value), engine.state.epoch)
        self._writer.flush()

    def close(self, engine: Optional[Engine] = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
