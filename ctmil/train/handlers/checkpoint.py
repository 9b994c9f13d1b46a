"""Epoch checkpoints of everything a run needs to continue exactly, and resuming from the latest one.

A thin layer over Ignite's ``Checkpoint`` + ``DiskSaver``: ``objects`` (model, optimizer, trainer engine,
stateful handlers, RNG state ...) are saved at ``EPOCH_COMPLETED`` as ``checkpoint_<epoch>.pt``; the
checkpointer's own bookkeeping is saved too (``include_self``), so a resumed run keeps pruning old files.
Every saved value is a tensor, number, string, list, tuple or dict, so the files load with
``torch.load(..., weights_only=True)`` (which is how Ignite's ``Checkpoint.load_objects`` reads them).

Register this handler *after* the handlers whose ``EPOCH_COMPLETED`` work must be in the checkpoint
(e.g. :class:`~ctmil.train.handlers.virtual_bags.VirtualBagHandler`). Attached to a trainer, it adds the
trainer itself to the saved objects and, with ``resume``, loads the latest checkpoint at ``STARTED`` (as MONAI's
``CheckpointLoader`` does), so a restarted run continues where it stopped. Under data parallelism every rank
resumes from the same files while only the rank with ``save=True`` writes them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from ctmil.io.atomic import atomic_write_text

__all__ = ["CheckpointHandler"]

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")
#: Beside the checkpoints: the settings they were made under.
SETTINGS_FILE = "settings.json"


def _epoch(engine: Engine, event: Any) -> int:
    return engine.state.epoch


class TorchRNGState:
    """The global torch CPU RNG as a checkpointable object (dropout draws from it)."""

    def state_dict(self) -> dict:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])


class CheckpointHandler:
    """Save ``objects`` every ``every`` epochs into ``dirname``; :meth:`resume` loads the latest checkpoint.

    Args:
        objects: name -> object with ``state_dict``/``load_state_dict`` (``None`` values are left out).
        dirname: checkpoint folder (created if missing).
        every: epochs between checkpoints.
        n_saved: how many checkpoints to keep.
        resume: load the latest checkpoint when the trainer starts.
        save: write checkpoints (False on the ranks that only read them).
        rng: also save the global torch RNG state.
        settings: what the run is made under (the bundle passes its preprocessing, network and training settings);
            saved beside the checkpoints as ``settings.json``, and a resume under other settings is refused.
        resume_other_settings: resume anyway (the bundle's ``resume_other_settings``).
    """

    def __init__(
        self,
        objects: Mapping[str, Any],
        dirname: "str | os.PathLike[str]",
        every: int = 1,
        n_saved: int = 1,
        resume: bool = True,
        save: bool = True,
        rng: bool = True,
        settings: Optional[Mapping[str, Any]] = None,
        resume_other_settings: bool = False,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}.")
        self.objects = {k: v for k, v in dict(objects).items() if v is not None}
        if rng:
            self.objects["rng"] = TorchRNGState()
        self.dirname = Path(dirname)
        self.settings = None if settings is None else json.loads(json.dumps(dict(settings), default=str))
        self.resume_other_settings = bool(resume_other_settings)
        self.every = every
        self.resume_on_start, self.save = bool(resume), bool(save)
        self.checkpoint = Checkpoint(
            self.objects,
            DiskSaver(str(self.dirname), create_dir=True, require_empty=False),
            filename_prefix="",
            n_saved=n_saved,
            global_step_transform=_epoch,
            include_self=True,
        )

    def attach(self, engine: Engine) -> None:
        self.objects.setdefault("trainer", engine)
        self.checkpoint.to_save = self.objects
        if self.resume_on_start:
            engine.add_event_handler(Events.STARTED, self._resume)
        if self.save:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self._save)

    def _resume(self, engine: Engine) -> None:
        max_epochs = engine.state.max_epochs
        if self.resume() and engine.state.epoch >= max_epochs:
            logger.info("checkpoint already at epoch %d; nothing to train.", engine.state.epoch)
        engine.state.max_epochs = max_epochs

    def _save(self, engine: Engine) -> None:
        if self.settings is not None:  # what the checkpoints were made under, beside them (once per folder)
            atomic_write_text(json.dumps(self.settings, indent=2, sort_keys=True), self.dirname / SETTINGS_FILE)
        self.checkpoint(engine)

    def check_settings(self) -> None:
        """Refuse to resume checkpoints made under other ``settings`` (one line naming the first difference), unless
        ``resume_other_settings``; checkpoints without a record (made before ctmil wrote one) are not checked."""
        path = self.dirname / SETTINGS_FILE
        if self.settings is None or self.resume_other_settings or not path.is_file():
            return
        made = json.loads(path.read_text())
        if made != self.settings:
            key = next(k for k in sorted(set(made) | set(self.settings)) if made.get(k) != self.settings.get(k))
            raise ValueError(f"the checkpoints in {self.dirname} were made under other settings ({key}: "
                             f"{made.get(key)!r} then, {self.settings.get(key)!r} now); use another output_dir, remove "
                             f"them, or set resume_other_settings=true to continue anyway")

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
        self.check_settings()
        Checkpoint.load_objects({**self.objects, "checkpointer": self.checkpoint}, str(path))
        logger.info("resumed from %s", path)
        return True
