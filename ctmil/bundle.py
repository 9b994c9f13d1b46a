"""Glue called from the MONAI bundle configs (``bundles/covid19_severity_mil/configs``).

Nothing here holds logic of its own: each piece adapts an existing ctmil function or object to what a
MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator`` and ``ConfigWorkflow`` expect.

* cases and bags: :func:`load_cases` (datalist CSV or folders → cases), :func:`split_cases` (patient-grouped,
  stratified hold-out split), :func:`preprocessed_bags` (cases → cached bag files → ``BagDataset``),
  :func:`n_virtual_bags`;
* engine glue: :class:`EpochSetter` (``EpochBags.set_epoch`` at ``EPOCH_STARTED``), :class:`StepAverages`
  (epoch means of the step losses), :func:`step_losses` (output transform for MONAI's stats handlers),
  :class:`PredictionWriter` (``predictions.csv`` of an evaluation run);
* inference and multi-GPU: :func:`load_inference_model`, :class:`DistributedForwardAll`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from ignite.metrics import Average

from ctmil.data.bags import BagDataset, EpochBags
from ctmil.io.discovery import discover_cases
from ctmil.evaluate.cv import stratified_group_folds
from ctmil.train.steps import StepsRun
from ctmil.train.handlers.virtual_bags import balancing_count
from ctmil.infer.model_io import InferenceModel, load_model
from ctmil.data.preprocess import atomic_write_csv, preprocess_cases

__all__ = [
    "DistributedForwardAll",
    "EpochSetter",
    "PredictionWriter",
    "StepAverages",
    "load_cases",
    "load_inference_model",
    "n_virtual_bags",
    "preprocessed_bags",
    "read_labels",
    "split_cases",
    "step_losses",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ cases
def read_labels(labels: "str | os.PathLike[str] | Mapping[str, float] | None") -> dict[str, float]:
    """Labels by case id (or StudyInstanceUID) from a mapping or a CSV with ``label`` and ``case_id``/``study_uid``."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {str(k): float(v) for k, v in labels.items()}
    table = pd.read_csv(labels, dtype={"case_id": str, "study_uid": str})
    keys = [c for c in ("case_id", "study_uid") if c in table.columns]
    if "label" not in table.columns or not keys:
        raise ValueError(f"{labels}: a labels CSV needs a 'label' column and a 'case_id' or 'study_uid' column.")
    out: dict[str, float] = {}
    for key in keys:
        out.update({str(k): float(v) for k, v in zip(table[key], table["label"]) if not pd.isna(k) and not pd.isna(v)})
    return out


def load_cases(
    datalist: "str | os.PathLike[str] | Sequence[str | os.PathLike[str]]",
    labels: "str | os.PathLike[str] | Mapping[str, float] | None" = None,
    require_label: bool = True,
    min_slices: int = 8,
) -> list[dict]:
    """Usable cases from a datalist CSV, CT folders / files, or a list of them (:func:`discover_cases`).

    A datalist CSV has ``case_id``, one of ``image``/``path``/``dicom_dir``/``nifti_path`` (relative to the CSV)
    and ``label`` (1 severe, 0 non-severe), optionally ``patient``. For folders, ``labels`` (a CSV with
    ``case_id`` or ``study_uid`` and ``label``, or a dict) supplies the labels. Cases that cannot be read, and
    with ``require_label`` those without a 0/1 label, are left out with a warning.

    Raises:
        ValueError: no usable case remains.
    """
    inputs = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    cases = discover_cases(inputs, labels=read_labels(labels), min_slices=min_slices)
    usable = []
    for case in cases:
        if case.get("error") or case.get("image") is None:
            logger.warning("case %s left out: %s", case["case_id"], case.get("error") or "no input")
        elif require_label and case.get("label") not in (0.0, 1.0):
            logger.warning("case %s left out: no 0/1 label", case["case_id"])
        else:
            usable.append(case)
    if not usable:
        raise ValueError(f"no usable{' labelled' if require_label else ''} case in {[str(p) for p in inputs]}.")
    return usable


def split_cases(cases: Sequence[Mapping[str, Any]], val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """``(train, validation)`` cases: a stratified split that keeps each patient's cases together.

    ``val_fraction`` 0 puts every case in training, 1 every case in validation (to evaluate on a separate test
    datalist); otherwise the validation part is one of ``round(1 / val_fraction)`` folds of
    :func:`ctmil.evaluate.cv.stratified_group_folds` (e.g. 0.2 → one fold of five).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1], got {val_fraction!r}.")
    cases = list(cases)
    if val_fraction == 0.0:
        return cases, []
    if val_fraction == 1.0:
        return [], cases
    n_folds = max(2, round(1.0 / val_fraction))
    folds = stratified_group_folds([c["label"] for c in cases], [c.get("patient") or c["case_id"] for c in cases], n_folds, int(seed))
    return [c for c, f in zip(cases, folds) if f != 0], [c for c, f in zip(cases, folds) if f == 0]


def preprocessed_bags(
    data: Sequence[Mapping[str, Any]],
    cache_dir: "str | os.PathLike[str]",
    settings: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> BagDataset:
    """Cases → bags with :func:`ctmil.data.preprocess.preprocess_cases` (cached in ``cache_dir``) → ``BagDataset``.

    ``settings`` are :func:`ctmil.transforms.preprocessing_transforms` keyword arguments; bags whose recorded
    cache key (settings, ctmil version, input files, label) matches are reused. ``cache_dir/manifest.csv`` lists
    every case with its status; failed cases are left out with a warning. Under ``torch.distributed`` rank 0
    preprocesses while the other ranks wait, then read rank 0's manifest (one writer per cache folder).

    Raises:
        ValueError: no case, or none could be preprocessed.
    """
    if len(data) == 0:
        raise ValueError("no cases to preprocess (an empty training or validation split?).")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(settings or {}).items()}
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:  # one writer per cache folder
        manifest = preprocess_cases(list(data), cache_dir, settings=settings, progress=progress)
    if distributed:
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0:
            manifest = pd.read_csv(Path(cache_dir) / "manifest.csv", dtype={"case_id": str}, keep_default_na=False)
    ok = manifest[manifest["status"].isin(["ok", "cached"])]
    if ok.empty:
        raise ValueError(f"none of the {len(manifest)} cases could be preprocessed; see {Path(cache_dir) / 'manifest.csv'}.")
    labels = pd.to_numeric(ok["label"], errors="coerce").fillna(-1.0).tolist()
    return BagDataset(ok["bag_path"].tolist(), labels=labels, case_ids=ok["case_id"].astype(str).tolist())


def n_virtual_bags(dataset: BagDataset, n_bags: int | None = None) -> int:
    """Virtual bags per epoch as :class:`VirtualBagHandler` counts them (``None``: negatives minus positives)."""
    return balancing_count(dataset.labels) if n_bags is None else int(n_bags)


# ------------------------------------------------------------------------------------------------ engine glue
class EpochSetter:
    """Call ``data.set_epoch(epoch)`` at ``EPOCH_STARTED`` (the ``DistributedSampler.set_epoch`` of
    :class:`~ctmil.data.bags.EpochBags`; MONAI workflows only do this for ``DataLoader`` samplers)."""

    def __init__(self, data: EpochBags) -> None:
        self.data = data

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.data.set_epoch(engine.state.epoch)


class StepAverages:
    """Epoch means of scalar step outputs (``loss``, ``mil``, ``ssl``) in ``engine.state.metrics``, over the
    iterations that ran a step (skipped ``None`` batches do not count), as :func:`~ctmil.train.steps.create_trainer`."""

    def __init__(self, names: Sequence[str] = ("loss", "mil", "ssl")) -> None:
        self.names = tuple(names)

    def attach(self, engine: Engine) -> None:
        for name in self.names:
            Average(output_transform=lambda out, key=name: out[key]).attach(engine, name, usage=StepsRun())


def step_losses(output: Mapping[str, Any] | None) -> dict[str, float] | None:
    """``{"loss", "mil", "ssl"}`` of a training step output; ``None`` for a skipped batch (MONAI's
    ``StatsHandler`` / ``TensorBoardStatsHandler`` then log nothing)."""
    if output is None:
        return None
    return {k: float(output[k]) for k in ("loss", "mil", "ssl") if k in output}


class PredictionWriter:
    """Collect ``case_id, prob, label`` of an evaluation run and write ``output_dir/filename`` at ``EPOCH_COMPLETED``.

    Collect-then-publish like ``ignite.handlers.EpochOutputStore``; columns ``case_id, prob, prediction, label``
    (``prediction = prob >= threshold``).
    """

    def __init__(self, output_dir: "str | os.PathLike[str]", filename: str = "predictions.csv", threshold: float = 0.5) -> None:
        self.path = Path(output_dir) / filename
        self.threshold = float(threshold)
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = []

    def collect(self, engine: Engine) -> None:
        out = engine.state.output
        if out is None:
            return
        for case_id, prob, label in zip(out["case_id"], out["prob"].tolist(), out["label"].tolist()):
            self.rows.append({"case_id": case_id, "prob": prob, "prediction": int(prob >= self.threshold), "label": label})

    def publish(self, engine: Engine) -> None:
        atomic_write_csv(pd.DataFrame(self.rows, columns=["case_id", "prob", "prediction", "label"]), self.path)
        logger.info("%d predictions written to %s", len(self.rows), self.path)


# ------------------------------------------------------------------------------------------------ inference / DDP
def load_inference_model(
    path: "str | os.PathLike[str]", device: "str | torch.device" = "cpu", preprocessing: Mapping[str, Any] | None = None
) -> InferenceModel:
    """:func:`ctmil.infer.model_io.load_model` with the bundle's preprocessing settings recorded on the model,
    so that :func:`ctmil.infer.batch.run_inference` preprocesses exactly as the bundle trained."""
    model = load_model(path, device=device)
    if preprocessing:
        model.preprocessing = {**model.preprocessing, **{k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()}}
    return model


class _ForwardAll(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, pairs: torch.Tensor | None = None) -> dict:
        return self.network.forward_all(x, mask, pairs)


class DistributedForwardAll(nn.Module):
    """A :class:`~ctmil.networks.MILNet` under ``DistributedDataParallel`` whose ``forward_all`` runs through DDP's
    ``forward`` (the ctmil steps call ``forward_all``; calling it on the bare module would skip DDP's gradient sync).

    ``find_unused_parameters`` defaults to True: the SSL head that the loss does not use gets no gradient.
    Save and load weights through the wrapped network itself, not through this wrapper.
    """

    def __init__(self, module: nn.Module, device_ids: Sequence[Any] | None = None, find_unused_parameters: bool = True, **ddp_kwargs: Any) -> None:
        super().__init__()
        self.ddp = nn.parallel.DistributedDataParallel(
            _ForwardAll(module), device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
        )

    def forward_all(self, x: torch.Tensor, mask: torch.Tensor | None = None, pairs: torch.Tensor | None = None) -> dict:
        return self.ddp(x, mask, pairs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_all(x, mask)["logits"]
