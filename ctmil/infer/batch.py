"""Batch inference as a MONAI infer workflow: CT studies → severity probability, attention maps and overlays.

The pieces are the bundle's ``inference.json`` properties: ``dataset`` (:class:`CaseDataset`: one discovered case
per item, loaded and preprocessed by ``@preprocessing``, never raising for a bad case), ``evaluator``
(:func:`create_inference_evaluator`, a ``monai.engines.Evaluator`` whose step is :func:`make_case_step`),
``inferer`` (:class:`~ctmil.networks.predict.BagInferer`, chunked) and the writer
(:class:`~ctmil.infer.writer.InferenceWriter`). :func:`run_inference` (``ctmil infer``) runs that same workflow.

Cases stream one at a time: load, preprocess, predict, write, drop, then the next, so memory stays flat over long
batches. One failing case never stops the batch; its row says why in one line. Privacy: rows, file names and
log records carry only the case key (for DICOM a hash of the StudyInstanceUID; never the patient's name or ID).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import fields as dataclass_fields, replace
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.engines import Evaluator
from monai.transforms import Compose
from torch.utils.data import DataLoader, Dataset

from ctmil.data.preprocess import case_error_text, join_warnings
from ctmil.infer.bag_inputs import is_bag_case, load_bag_case
from ctmil.infer.model_io import InferenceModel, load_model
from ctmil.infer.lock import output_lock
from ctmil.infer.shards import rank_cases, shard_table
from ctmil.infer.run_checks import check_input_intensity, finished_rows, run_key
from ctmil.infer.writer import InferenceOptions, InferenceWriter, empty_row
from ctmil.io.discovery import no_ct_reason
from ctmil.transforms.compose import preprocessing_transforms
from ctmil.transforms.load import LoadCTd
from ctmil.words import plural
from ctmil.bundle import build_workflow, config_paths
from ctmil.keys import Columns

__all__ = ["CaseDataset", "CasePipeline", "PrefetchLoader", "case_loader", "create_inference_evaluator", "make_case_step",
           "run_inference"]

logger = logging.getLogger(__name__)


class CasePipeline:
    """Preprocessing split into loading and the rest, so the loaded CT is at hand for overlays without a re-read.

    ``settings``: :func:`ctmil.transforms.preprocessing_transforms` keyword arguments, or that ``Compose`` itself.
    """

    def __init__(self, settings: "Mapping | Compose | None" = None) -> None:
        chain = settings if isinstance(settings, Compose) else preprocessing_transforms(**dict(settings or {}))
        first = chain.transforms[0]
        if not isinstance(first, LoadCTd):
            raise TypeError("preprocessing_transforms() must start with LoadCTd")
        self.load = first
        self.rest = Compose(list(chain.transforms[1:]), map_items=False)

    def __call__(self, item: dict) -> tuple[dict, float, float]:
        """``(bag, load seconds, preprocess seconds)``; the bag gets the loaded ``(1, S, H, W)`` CT under ``"ct"``."""
        t0 = time.perf_counter()
        loaded = self.load(item)
        t1 = time.perf_counter()
        ct = loaded["image"]
        bag = self.rest(loaded)
        bag["ct"] = ct
        return bag, t1 - t0, time.perf_counter() - t1


class CaseDataset(Dataset):
    """Discovered cases → ``{"case", "bag", "error", "t_load_s", "t_preprocess_s"}``; a case that cannot be read or
    preprocessed gives ``bag = None`` and its one-line ``error`` instead of raising.

    Args:
        data: cases from :func:`ctmil.io.discovery.discover_cases`.
        transform: the preprocessing (``@preprocessing`` of the bundle), a :class:`CasePipeline` or its settings.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: "Compose | CasePipeline | Mapping | None" = None) -> None:
        self.data = list(data)
        self.pipeline = transform if isinstance(transform, CasePipeline) else CasePipeline(transform)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        case = self.data[i]
        item = {"case": case, "bag": None, "error": "", "t_load_s": "", "t_preprocess_s": ""}
        if case.get("error") or case.get("image") is None:
            item["error"] = case.get("error") or "no input"
            return item
        try:
            if is_bag_case(case):  # a bag datalist's case: already preprocessed (ctmil.infer.bag_inputs)
                bag, t_load, t_pre = load_bag_case(case)
            else:
                bag, t_load, t_pre = self.pipeline({"image": case["image"], Columns.CASE_ID: case[Columns.CASE_ID], Columns.LABEL: case.get(Columns.LABEL)})
            item.update(bag=bag, t_load_s=round(t_load, 4), t_preprocess_s=round(t_pre, 4))
        except Exception as raised:  # one case must never stop the batch
            item["error"] = case_error_text(raised, case[Columns.CASE_ID])
        return item


class PrefetchLoader(DataLoader):
    """A ``DataLoader`` of single items whose iterator prepares up to ``prefetch`` items ahead in a background
    thread (reading and preprocessing release the GIL for most of their time, so they overlap the forward and the
    writing of the item before). The thread starts item ``i + prefetch + 1`` only once item ``i`` is done with
    (the next one is asked for), so at most ``prefetch + 1`` items are alive in the loader and its consumer.
    Order is kept; an exception raised while preparing an item is raised in the consuming thread at that item,
    and stopping early (``break``) ends the thread."""

    def __init__(self, dataset: Dataset, prefetch: int = 1) -> None:
        super().__init__(dataset, batch_size=None, shuffle=False, num_workers=0)
        self.prefetch = prefetch

    def __iter__(self):
        items: queue.Queue = queue.Queue()
        slots = threading.Semaphore(self.prefetch + 1)  # items prepared but not yet done with
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                source = super(PrefetchLoader, self).__iter__()
                while True:
                    while not slots.acquire(timeout=0.1) or stop.is_set():
                        if stop.is_set():
                            return
                    item = next(source, done)
                    items.put((item, None))
                    if item is done:
                        return
            except BaseException as raised:  # handed to the consumer, raised there
                items.put((done, raised))

        thread = threading.Thread(target=produce, name="ctmil-case-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, raised = items.get()
                if raised is not None:
                    raise raised
                if item is done:
                    return
                yield item
                slots.release()  # the next item is asked for: this one is done with
        finally:
            stop.set()
            thread.join()


def case_loader(dataset: CaseDataset, num_workers: int = 0, prefetch: int = 0) -> DataLoader:
    """The cases one by one (no collation), in order.

    ``prefetch`` > 0: a background thread (:class:`PrefetchLoader`) prepares up to ``prefetch`` cases ahead while
    the current one predicts and is written (at most ``prefetch + 1`` cases in memory; :func:`run_inference` uses
    1). ``prefetch`` 0 (default, the bundle's ``inference.json``): one at a time. ``num_workers`` > 0: processes.
    """
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}.")
    if num_workers > 0 or prefetch == 0:
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
    return PrefetchLoader(dataset, prefetch)


def _kept_slices(bag: Mapping[str, Any]) -> "int | str":
    """How many slices the bag holds: its ``kept_slices``, else its distinct ``slice_index`` values (a bag made
    outside ctmil's preprocessing), else unknown (empty)."""
    if "kept_slices" in bag:
        return int(torch.as_tensor(bag["kept_slices"]).numel())
    if "slice_index" in bag:
        return int(torch.unique(torch.as_tensor(bag["slice_index"])).numel())
    return ""


def make_case_step(model: InferenceModel, threshold: float = 0.5):
    """Evaluation step of one case item of :class:`CaseDataset`: its ``predictions.csv`` row, bag and outputs."""

    def step(engine: Any, item: Mapping[str, Any]) -> dict:
        case, bag = item["case"], item["bag"]
        row = empty_row(case, threshold)
        out = {"row": row, "bag": bag, "attention": None, "features": None}
        if bag is None:
            row.update(status="failed", error=item["error"])
            return out
        meta = bag.get("meta") or {}  # a bag made outside ctmil's preprocessing may record none
        shape = meta.get("spatial_shape")
        row.update(warning=join_warnings(case.get("warning", ""), meta),
                   input_kind=meta.get("input_kind", "bag" if is_bag_case(case) else ""), n_slices=int(shape[0]) if shape else "",
                   n_slices_kept=_kept_slices(bag), K=int(bag["patches"].shape[0]),
                   t_load_s=item["t_load_s"], t_preprocess_s=item["t_preprocess_s"])
        t0 = time.perf_counter()
        try:
            pred = model.predict_bag(bag)
        except Exception as raised:  # e.g. a bag the model cannot take
            row.update(status="failed", error=case_error_text(raised, case[Columns.CASE_ID]))
            return out
        row.update(status="ok", probability=round(pred.probability, 6), prediction=int(pred.probability >= threshold),
                   t_predict_s=round(time.perf_counter() - t0, 4))
        out.update(attention=pred.attention, features=pred.bag_features)
        return out

    return step


def create_inference_evaluator(network: torch.nn.Module, data_loader: DataLoader, device: "str | torch.device" = "cpu",
                               inferer: Any = None, threshold: float = 0.5, val_handlers: Sequence[Any] = (),
                               progress: bool = False, operating_point: Mapping[str, Any] | None = None) -> Evaluator:
    """The infer workflow's evaluator: ``evaluator.run()`` predicts and writes every case of ``data_loader``.

    ``network`` is a :class:`~ctmil.networks.MILNet` (weights loaded by a ``CheckpointLoader`` in ``val_handlers``
    at start) or a loaded :class:`InferenceModel`'s module (TorchScript included). ``operating_point`` (the
    model's recorded calibration, :func:`~ctmil.infer.model_io.recorded_operating_point`) calibrates a bare
    network's probabilities; a loaded :class:`InferenceModel` brings its own. ``threshold`` applies to them.
    """
    chunk = getattr(inferer, "chunk_size", None) or 1024
    model = network if isinstance(network, InferenceModel) else InferenceModel.wrap(network, device, chunk, operating_point)
    evaluator = Evaluator(device=torch.device(device), val_data_loader=data_loader, epoch_length=len(data_loader),
                          iteration_update=make_case_step(model, float(threshold)),
                          val_handlers=[h for h in val_handlers if h is not None] or None, decollate=False)
    if progress:
        from ignite.handlers.tqdm_logger import ProgressBar

        ProgressBar(persist=True, desc="inference").attach(evaluator)
    return evaluator


def _preprocessing_settings(loaded: InferenceModel, min_slices: "int | None", min_area_fraction: "float | None",
                            allow_implausible_lungs: bool = False) -> dict:
    """The model's recorded preprocessing with the caller's overrides, checked (``ValueError`` if invalid)."""
    settings = {**loaded.preprocessing, "allow_implausible_lungs": bool(allow_implausible_lungs)}
    if min_slices is not None:
        settings["min_slices"] = int(min_slices)
    if min_area_fraction is not None:
        settings["min_area_fraction"] = float(min_area_fraction)
    try:
        preprocessing_transforms(**settings)
    except TypeError as err:
        raise ValueError(f"invalid preprocessing settings {settings}: {err}") from None
    return settings


def run_inference(
    inputs: "str | os.PathLike | Iterable[str | os.PathLike]",
    model: "str | os.PathLike | InferenceModel",
    out_dir: "str | os.PathLike",
    options: InferenceOptions | None = None,
    *,
    device: str = "cpu",
    labels: Mapping[str, float] | None = None,
    min_slices: int | None = None,
    min_area_fraction: float | None = None,
    allow_implausible_lungs: bool = False,
    allow_input_mismatch: bool = False,
    shard: "tuple[int, int] | None" = None,
    config: "Sequence[str | os.PathLike] | None" = None,
    overrides: "Mapping[str, Any] | None" = None,
    progress: bool = True,
    allow_torchscript: bool = False,
    keep_paths: bool = False,
    prefetch: int = 1,
) -> tuple[pd.DataFrame, int]:
    """Predict every study of ``inputs`` with the bundle's infer workflow (``inference.json``), writing
    ``out_dir/predictions.csv`` and per-case outputs (:mod:`ctmil.infer.writer`).

    Args:
        inputs: export folders, NIfTI files, slice-image folders or datalist CSVs (one path or several).
        model: a model file (:func:`ctmil.infer.model_io.load_model`, weights only) or an already loaded model.
        options: what to write per case (:class:`~ctmil.infer.writer.InferenceOptions`: maps, overlays, features,
            DICOM results, the threshold; its ``threshold`` ``None`` is the model's learnt one, else 0.5). The workflow
            gets this object as its ``options``; ``overrides`` of ``options#<field>`` (``ctmil infer --set``) change
            its fields.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        labels: optional reference labels by case id (or StudyInstanceUID), copied to the ``label`` column.
        min_slices, min_area_fraction: preprocessing settings; ``None`` = those recorded with the model
            (``model.json``), else the defaults. They must match what the model was trained on.
        allow_implausible_lungs: predict cases whose lung mask cannot be an adult's lungs too, with the reason in
            their ``warning`` (default: such a case fails and gets no probability).
        allow_input_mismatch: predict inputs of another intensity than the model was trained on (HU DICOM/NIfTI
            for a model of lung-window slice images, or the reverse), with a warning in their row; by default such
            inputs are refused with one line before any work.
        shard: ``(I, N)``: only the cases of shard ``I`` of ``N`` (:mod:`ctmil.infer.shards`), their table written as
            ``predictions.shard-I-of-N.csv`` for ``ctmil merge-predictions``.
        config: more config files merged over the bundle's ``inference.json`` (``ctmil infer --config``).
        overrides: ``#``-id overrides of that config (``ctmil infer --set``), applied last; every id must exist.
        allow_torchscript: accept TorchScript model files (programs, not weights).
        keep_paths: absolute source paths in the outputs (default: relative to the input).
        prefetch: cases read and preprocessed ahead in a background thread while one predicts (0: one at a time).

    Returns:
        ``(predictions, n_failed)``.

    Raises:
        ModelError: the model cannot be loaded. ValueError: invalid options, or no case in ``inputs``.
    """
    user = dict(overrides or {})
    options = with_overrides(options or InferenceOptions(), user)  # --set options#<field> changes the object
    loaded = model if isinstance(model, InferenceModel) else load_model(model, device=device, allow_torchscript=allow_torchscript)
    options = replace(options, threshold=loaded.threshold if options.threshold is None else float(options.threshold))
    if not loaded.has_attention and (options.save_maps or options.save_overlays):
        logger.warning("the model gives no attention: attention maps and overlays are skipped")
    settings = _preprocessing_settings(loaded, min_slices, min_area_fraction, allow_implausible_lungs)
    out_dir = Path(out_dir)
    overrides = {
        "inputs": [str(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)],
        "output_dir": str(out_dir), "device": loaded.device, "network": loaded,
        "load_weights": False, "preprocessing_args": settings, Columns.THRESHOLD: options.threshold, "labels": dict(labels or {}),
        "options": options, "progress": bool(progress), "keep_paths": bool(keep_paths), "prefetch": int(prefetch),
        "trained_on": list(loaded.intensities), "allow_input_mismatch": bool(allow_input_mismatch),
        "model_identity": loaded.identity if options.dicom else None,
        **user,
    }
    workflow_configs = [str(c) for c in config or []]
    workflow = build_workflow(["inference.json", *workflow_configs], overrides, workflow_type="infer")
    cases = workflow.parser.get_parsed_content("cases")
    nothing = no_ct_reason(cases)
    if nothing:
        raise ValueError(nothing)
    check_input_intensity(cases, loaded.intensities, allow_input_mismatch)  # before any work; the config's own
    # check (checked_cases) then finds the same cases, with the same warnings
    if shard is not None:  # this process's part of the batch; the split is the same on every machine
        cases[:] = rank_cases(cases, *shard)
        logger.info("shard %d of %d: %s", shard[0], shard[1], plural(len(cases), "case"))
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = "infer" if shard is None else f"infer.shard-{shard[0]}-of-{shard[1]}"
    with output_lock(out_dir, lock):  # one live run per --out (per shard): a second refuses with one line
        return _run_cases(workflow, loaded, settings, overrides, cases, out_dir, shard, workflow_configs)


def with_overrides(options: InferenceOptions, overrides: dict) -> InferenceOptions:
    """``options`` with the ``options#<field>`` entries of ``overrides`` (removed from it) as its fields: how
    ``ctmil infer --set options#top_slices=5`` reaches the options object the workflow is given."""
    fields = {f.name for f in dataclass_fields(InferenceOptions)}
    changes = {}
    for key in [k for k in overrides if str(k).startswith("options#")]:
        name = str(key).split("#", 1)[1]
        if name not in fields:
            raise ValueError(f"unknown config id {key!r}: InferenceOptions has no field {name!r} (it has {', '.join(sorted(fields))})")
        changes[name] = overrides.pop(key)
    return replace(options, **changes) if changes else options


def _run_cases(workflow, loaded: InferenceModel, settings: Mapping[str, Any], overrides: Mapping[str, Any], cases: list,
               out_dir: Path, shard: "tuple[int, int] | None", workflow_configs: Sequence[str] = ()) -> tuple[pd.DataFrame, int]:
    """:func:`run_inference` once the run holds its output folder: resume, run what is left, summarise."""
    key = run_key(loaded, settings, overrides, [Path(c).read_text() for c in config_paths(workflow_configs)])
    finished = finished_rows(out_dir, cases, key) if key else {}
    if finished:  # a resumed run: the cases an earlier run finished under the same key are not run again
        logger.info("resuming: %s of %s already finished in %s", plural(len(finished), "case"), len(cases), out_dir)
        rows = [finished[str(c[Columns.CASE_ID])] for c in cases if str(c[Columns.CASE_ID]) in finished]
        cases[:] = [c for c in cases if str(c[Columns.CASE_ID]) not in finished]
    else:
        rows = []
    writer = next(h for h in workflow.parser.get_parsed_content("handlers") if isinstance(h, InferenceWriter))
    writer.run_key, writer.finished = key, rows
    if shard is not None:
        writer.table = shard_table(*shard)
    if not cases:  # every case finished before: only the tables are written again
        writer.reset()
        predictions = writer.finish()
        logger.info("%s, nothing left to run (all finished before); table: %s", plural(len(predictions), "case"), out_dir / writer.table)
        return predictions, 0
    logger.info("%s; model %s (%s); outputs in %s", plural(len(cases), "case"), Path(loaded.path).name, loaded.kind, out_dir)
    workflow.run()
    predictions = workflow.parser.get_parsed_content("evaluator").state.predictions
    workflow.finalize()
    n_failed = int((predictions[Columns.STATUS] == "failed").sum())
    logger.info("%s: %d ok, %d failed; predictions: %s", plural(len(predictions), "case"), len(predictions) - n_failed, n_failed,
                out_dir / "predictions.csv")
    return predictions, n_failed
