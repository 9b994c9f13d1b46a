"""Write the trained model when training completes: ``model.pt`` (weights only) and ``model.json`` (how to rebuild it).

``model.pt`` is a plain state dict, loadable with ``torch.load(..., weights_only=True)``; ``model.json`` records
the network's constructor arguments, the preprocessing settings the bags were made with and what it was trained
on, so that ``ctmil infer`` and ``ctmil evaluate`` rebuild and preprocess exactly as in training.
This is the one writer of trained models: ``ctmil train``, ``ctmil cv`` and the bundle's train workflow use it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from ignite.engine import Engine, Events

from ctmil import __version__
from ctmil.io.atomic import atomic_torch_save, atomic_write_text

__all__ = ["ModelWriter", "save_model", "trained_intensities"]

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def save_model(network: torch.nn.Module, dirname: "str | os.PathLike[str]", info: Optional[Mapping[str, Any]] = None) -> Path:
    """Atomically write ``dirname/model.pt`` (CPU state dict) and ``dirname/model.json``; returns the .pt path."""
    out = Path(dirname)
    out.mkdir(parents=True, exist_ok=True)
    record = {"network": dict(getattr(network, "hparams", {}) or {}), **_plain(dict(info or {})), "ctmil": __version__}
    atomic_torch_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, out / "model.pt")
    atomic_write_text(json.dumps(record, indent=2), out / "model.json")
    return out / "model.pt"


def trained_intensities(dataset: Any) -> list[str]:
    """The intensities (``"hu"``, ``"windowed"``) of a training dataset's bags (their ``meta["intensity"]``), sorted;
    by the end of training every bag of a :class:`~ctmil.data.bags.BagDataset` is in memory, so this reads no file."""
    found = {str((dataset[i].get("meta") or {}).get("intensity") or "") for i in range(len(dataset))}
    return sorted(found - {""})


class ModelWriter:
    """At ``COMPLETED`` write ``network`` with :func:`save_model` into ``dirname`` (only where ``save`` is True).

    Args:
        network: the bare network (not a DDP wrapper).
        dirname: folder of ``model.pt`` / ``model.json``.
        info: extra facts for ``model.json`` (preprocessing settings, SSL task, virtual bags, threshold ...).
            ``threshold`` and ``calibration`` are replaced by ``engine.state.operating_point`` where an
            :class:`~ctmil.train.handlers.OperatingPointHandler` learnt one; ``density_fusion`` records what a
            :class:`~ctmil.train.handlers.DensityFusionHandler` fitted.
        save: False on the ranks that must not write.
        dataset: the training bags; their intensities (HU or lung-window slice images) go to ``model.json``'s
            ``input``, which inference checks its input against.
    """

    def __init__(self, network: torch.nn.Module, dirname: "str | os.PathLike[str]", info: Optional[Mapping[str, Any]] = None,
                 save: bool = True, dataset: Any = None) -> None:
        self.network = network
        self.dirname = Path(dirname)
        self.info = dict(info or {})
        self.save = bool(save)
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        if self.save:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        info = {**self.info, "epochs": engine.state.epoch}
        if self.dataset is not None:  # what the model was trained on, so that inference can refuse other input
            info["input"] = {"intensity": trained_intensities(self.dataset)}
        point = getattr(engine.state, "operating_point", None)  # from an OperatingPointHandler attached before
        if point is not None:
            info.update(threshold=point["threshold"], calibration=point["calibration"], operating_point=point)
        selected = getattr(engine.state, "selected_epoch", None)  # from a BestWeights handler (model selection)
        if selected is not None:
            info["selected_epoch"] = selected
        fusion = getattr(engine.state, "density_fusion", None)  # from a DensityFusionHandler attached before
        if fusion is not None:
            info["density_fusion"] = fusion
        path = save_model(self.network, self.dirname, info)
        logger.info("model written to %s", path)
