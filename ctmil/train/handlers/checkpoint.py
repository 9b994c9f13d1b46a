"""Epoch checkpoints of everything a run needs to continue exactly, and resuming from the latest one.

A thin layer over Ignite's ``Checkpoint`` + ``DiskSaver``: ``objects`` (model, optimizer, trainer engine,
stateful handlers, RNG state ...) are saved at ``EPOCH_COMPLETED`` as ``checkpoint_<epoch>.pt``; the
checkpointer's own bookkeeping is saved too (``include_self``), so a resumed run keeps pruning old files.
Every saved value is a tensor, number, string, list, tuple or dict, so the files load with
``torch.load(..., weights_only=True)`` (which is how Ignite's ``Checkpoint.load_objects`` reads them).

Register this handler *after* the handlers whose ``EPOCH_COMPLETED`` work must be in the checkpoint
(e.g. :class:`~ctmil.train.handlers.virtual_bags.VirtualBagHandler`).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

__all__ = ["CheckpointHandler"]

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


def _epoch(engine: Engine, event: Any) -> int:
    return engine.state.epoch


class CheckpointHandler:
    """Save ``objects`` every ``every`` epochs into ``dirname``; :meth:`resume` loads the latest checkpoint.

    Args:
        objects: name -> object with ``state_dict``/``load_state_dict``.
        dirname: checkpoint folder (created if missing).
        every: epochs between checkpoints.
        n_saved: how many checkpoints to keep.
    """

    def __init__(self, objects: Mapping[str, Any], dirname: "str | os.PathLike[str]", every: int = 1, n_saved: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.objects = dict(objects)
        self.dirname = Path(dirname)
        self.every = every
        self.checkpoint = Checkpoint(
            self.objects,
            DiskSaver(str(self.dirname), create_dir=True, require_empty=False),
            filename_prefix="",
            n_saved=n_saved,
            global_step_transform=_epoch,
            include_self=True,
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self.checkpoint)

    def latest(self) -> Optional[Path]:
        """The checkpoint file of the highest epoch in ``dirname`` (``None`` if there is none)."""
        if not self.dirname.is_dir():
            return None
        found = [(int(m.group(1)), p) for p in self.dirname.iterdir() if (m := _PATTERN.match(p.name))]
        return max(found)[1] if found else None

    def resume(self) -> bool:
        """Load the latest checkpoint into the objects (and the checkpointer). Returns whether one was found."""
        path = self.latest()
        if path is None:
            return False
        Checkpoint.load_objects({**self.objects, "checkpointer": self.checkpoint}, str(path))
        logger.info("resumed from %s", path)
        return True
