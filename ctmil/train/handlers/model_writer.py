"""Write the trained model when training completes: ``model.pt`` (weights only) and ``model.json`` (how to rebuild it).

``model.pt`` is a plain state dict, loadable with ``torch.load(..., weights_only=True)``; ``model.json`` records
the network's constructor arguments, the preprocessing settings the bags were made with and what it was trained
on, so that ``ctmil infer`` and ``ctmil evaluate`` rebuild and preprocess exactly as in training.
This is the one writer of trained models: ``ctmil train``, ``ctmil cv`` and the bundle's train workflow use it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from ignite.engine import Engine

from ctmil import __version__
from ctmil.io.atomic import atomic_torch_save
from ctmil.io.model_card import write_card
from ctmil.train.handlers.end_of_training import EndOfTraining
from ctmil.keys import Columns

__all__ = ["ModelWriter", "save_model", "trained_intensities"]

logger = logging.getLogger(__name__)


def save_model(network: torch.nn.Module, dirname: "str | os.PathLike[str]", info: Optional[Mapping[str, Any]] = None) -> Path:
    """Atomically write ``dirname/model.pt`` (CPU state dict) and ``dirname/model.json``; returns the .pt path."""
    out = Path(dirname)
    out.mkdir(parents=True, exist_ok=True)
    record = {"network": dict(getattr(network, "hparams", {}) or {}), **dict(info or {}), "ctmil": __version__}
    atomic_torch_save({k: v.detach().cpu() for k, v in network.state_dict().items()}, out / "model.pt")
    write_card(out / "model.pt", record)
    return out / "model.pt"


def trained_intensities(dataset: Any) -> list[str]:
    """The intensities (``"hu"``, ``"windowed"``) of a training dataset's bags (their ``meta["intensity"]``), sorted;
    by the end of training every bag of a :class:`~ctmil.data.bags.BagDataset` is in memory, so this reads no file."""
    found = {str((dataset[i].get("meta") or {}).get("intensity") or "") for i in range(len(dataset))}
    return sorted(found - {""})


class ModelWriter(EndOfTraining):
    """At ``COMPLETED``, after the steps it names: write ``network`` with :func:`save_model` into ``dirname`` (only
    where ``save`` is True).

    Args:
        network: the bare network (not a DDP wrapper).
        dirname: folder of ``model.pt`` / ``model.json``.
        info: extra facts for ``model.json`` (preprocessing settings, SSL task, virtual bags, threshold ...).
        save: False on the ranks that must not write.
        dataset: the training bags; their intensities (HU or lung-window slice images) go to ``model.json``'s
            ``input``, which inference checks its input against.
        operating_point: the :class:`~ctmil.train.handlers.OperatingPointHandler`, if any: its point replaces
            ``threshold`` and ``calibration`` and is recorded as ``operating_point``.
        density_fusion: the :class:`~ctmil.train.handlers.DensityFusionHandler`, if any: what it fitted is
            recorded as ``density_fusion`` (its values are in the weights).
        best_weights: the :class:`~ctmil.train.handlers.BestWeights`, if any: the epoch it restored is
            ``selected_epoch``.
    """

    def __init__(self, network: torch.nn.Module, dirname: "str | os.PathLike[str]", info: Optional[Mapping[str, Any]] = None,
                 save: bool = True, dataset: Any = None, operating_point: Any = None, density_fusion: Any = None,
                 best_weights: Any = None) -> None:  # fmt: skip
        super().__init__(after=[best_weights, density_fusion, operating_point])
        self.network = network
        self.dirname = Path(dirname)
        self.info = dict(info or {})
        self.save = bool(save)
        self.dataset = dataset
        self.operating_point, self.density_fusion, self.best_weights = operating_point, density_fusion, best_weights

    def attach(self, engine: Engine) -> None:
        if self.save:
            super().attach(engine)

    def run(self, engine: Engine) -> None:
        info = {**self.info, "epochs": engine.state.epoch}
        if self.dataset is not None:  # what the model was trained on, so that inference can refuse other input
            info["input"] = {"intensity": trained_intensities(self.dataset)}
        point = getattr(self.operating_point, "result", None)
        if point is not None:
            info.update(threshold=point[Columns.THRESHOLD], calibration=point["calibration"], operating_point=point)
        if self.best_weights is not None and self.best_weights.weights is not None:  # model selection restored an epoch
            info["selected_epoch"] = self.best_weights.epoch
        fusion = getattr(self.density_fusion, "result", None)
        if fusion is not None:
            info["density_fusion"] = fusion
        path = save_model(self.network, self.dirname, info)
        logger.info("model written to %s", path)
