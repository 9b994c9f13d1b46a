"""Batch inference: CT studies → severity probability, attention maps and overlays, streamed one study at a time.

:func:`run_inference` discovers the cases (DICOM export trees, NIfTI files, slice-image folders, datalist CSVs;
:func:`ctmil.io.discovery.discover_cases`) and :func:`iter_predictions` handles them lazily: load one case,
preprocess it, predict, write its outputs, drop it, then the next. Nothing per case is kept but its row of
``predictions.csv``, so memory stays flat over long batches. ``predictions.csv`` is rewritten atomically after
every case: after a crash it holds every finished case. One failing case never stops the batch; its row says
why in one line.

Output layout (``out_dir``)::

    predictions.csv                      one row per case (PREDICTION_COLUMNS)
    features.csv                         with save_features: case_id, f000 ... (bag feature vectors)
    cases/<case_id>/attention.nii.gz     attention painted on the CT grid, aligned with the input series
    cases/<case_id>/overlay_s<NNN>.png   the most attended slices (NNN = slice index in the CT stack)
    cases/<case_id>/features.npy         with save_features: the bag feature vector (M,)

Privacy: rows, file names and log records carry only the case key (for DICOM a hash of the
StudyInstanceUID; never the patient's name or ID, and the UID → key mapping is not written anywhere).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from monai.transforms import Compose

from ctmil.infer.attention_maps import paint_attention, save_attention_nifti, save_overlay, slice_attention, top_attended_slices
from ctmil.infer.model_io import InferenceModel, load_model
from ctmil.data.preprocess import atomic_write_csv, case_error_text
from ctmil.transforms.compose import preprocessing_transforms
from ctmil.transforms.load import LoadCTd

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = [
    "case_id", "status", "probability", "prediction", "threshold", "label", "input_kind", "series",
    "n_slices", "n_slices_kept", "K", "top_slices", "attention_path", "overlay_paths", "features_path", "error",
    "t_load", "t_preprocess", "t_predict", "t_write",
]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class InferenceOptions:
    """What to write per case.

    Args:
        threshold: probability at or above which a case is predicted severe (``prediction = 1``).
        save_maps: write ``attention.nii.gz``.
        save_overlays: write PNG overlays of the ``top_slices`` most attended slices.
        save_features: write the bag feature vector (``features.npy`` and, at the end, ``features.csv``).
        top_slices: how many overlays per case.
        map_mode: ``"bag"`` (attention as is) or ``"slice"`` (normalised per slice, the paper's Fig. 5).
    """

    threshold: float = 0.5
    save_maps: bool = True
    save_overlays: bool = True
    save_features: bool = False
    top_slices: int = 3
    map_mode: str = "bag"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.top_slices < 0:
            raise ValueError(f"top_slices must be >= 0, got {self.top_slices}")
        if self.map_mode not in ("bag", "slice"):
            raise ValueError(f"map_mode must be 'bag' or 'slice', got {self.map_mode!r}")


class CasePipeline:
    """Preprocessing split into loading and the rest, so the loaded CT is at hand for overlays without a re-read.

    ``settings`` are :func:`ctmil.transforms.preprocessing_transforms` keyword arguments.
    """

    def __init__(self, settings: Mapping | None = None) -> None:
        chain = preprocessing_transforms(**dict(settings or {}))
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


def case_dirname(case_id: str) -> str:
    """A file-system-safe folder name for a case key (unchanged for ``st-…`` keys and plain names)."""
    name = _SAFE.sub("_", str(case_id)).strip("._") or "case"
    if name != str(case_id):
        name = f"{name}-{hashlib.sha256(str(case_id).encode()).hexdigest()[:6]}"
    return name


def _empty_row(case: Mapping, threshold: float) -> dict:
    row = {c: "" for c in PREDICTION_COLUMNS}
    label = case.get("label")
    row.update(case_id=str(case["case_id"]), threshold=threshold, series=case.get("series", "") or "",
               label="" if label is None or (isinstance(label, float) and np.isnan(label)) else int(label))
    return row


def _clear_case_dir(folder: Path) -> None:
    """Remove this module's outputs of an earlier run of the same case (stale overlays of other slices)."""
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if f.is_file() and (f.name in ("attention.nii.gz", "features.npy") or (f.name.startswith("overlay_") and f.suffix == ".png")):
            f.unlink(missing_ok=True)


def write_case_outputs(bag: dict, attention: np.ndarray | None, features: np.ndarray | None, folder: Path, out_dir: Path,
                       options: InferenceOptions) -> dict:
    """Write one case's maps, overlays and features into ``folder``; returns the row fields (paths relative to ``out_dir``)."""
    fields = {"attention_path": "", "overlay_paths": "", "features_path": "", "top_slices": ""}
    _clear_case_dir(folder)
    meta = bag["meta"]
    if options.save_features and features is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".tmp-features.npy"
        np.save(tmp, features.astype(np.float32))
        os.replace(tmp, folder / "features.npy")
        fields["features_path"] = (folder / "features.npy").relative_to(out_dir).as_posix()
    if attention is None or not (options.save_maps or options.save_overlays):
        return fields
    top = top_attended_slices(attention, bag["slice_index"], options.top_slices)
    fields["top_slices"] = ";".join(str(int(s)) for s in top)
    painted = paint_attention(attention, bag["slice_index"], bag["position"], bag["boxes"], bag["kept_slices"],
                              meta["spatial_shape"], mode=options.map_mode)  # (S, H, W)
    if options.save_maps:
        path = save_attention_nifti(painted, meta, folder / "attention.nii.gz")
        fields["attention_path"] = path.relative_to(out_dir).as_posix()
    if options.save_overlays and top.size:
        ct = bag["ct"].as_tensor()[0].numpy() if hasattr(bag["ct"], "as_tensor") else np.asarray(bag["ct"])[0]  # (S, H, W)
        kept = bag["kept_slices"].tolist()
        spacing = meta.get("spacing")
        aspect = float(spacing[1]) / float(spacing[2]) if spacing else 1.0
        vmax = float(painted.max())
        mass = dict(zip(*(v.tolist() for v in slice_attention(attention, bag["slice_index"]))))
        paths = []
        for s in top.tolist():
            box = bag["boxes"][kept.index(s)].tolist()
            title = f"{bag['case_id']}  slice index {s} of {meta['spatial_shape'][0]}  ({mass[s]:.1%} of the attention)"
            p = save_overlay(ct[s], painted[s], box, folder / f"overlay_s{s:03d}.png", intensity=meta.get("intensity", "hu"),
                             vmax=vmax, title=title, aspect=aspect)
            paths.append(p.relative_to(out_dir).as_posix())
        fields["overlay_paths"] = ";".join(paths)
    return fields


def predict_case(case: Mapping, model: InferenceModel, pipeline: CasePipeline, out_dir: Path, options: InferenceOptions) -> dict:
    """Load, preprocess, predict and write one case; returns its ``predictions.csv`` row (never raises for a bad case)."""
    row = _empty_row(case, options.threshold)
    if case.get("error") or case.get("image") is None:
        row.update(status="failed", error=case.get("error") or "no input")
        return row
    try:
        bag, t_load, t_pre = pipeline({"image": case["image"], "case_id": case["case_id"], "label": case.get("label")})
        meta = bag["meta"]
        row.update(input_kind=meta.get("input_kind", ""), n_slices=int(meta["spatial_shape"][0]),
                   n_slices_kept=int(bag["kept_slices"].numel()), K=int(bag["patches"].shape[0]),
                   t_load=round(t_load, 4), t_preprocess=round(t_pre, 4))
        t0 = time.perf_counter()
        pred = model.predict(bag["patches"])
        t1 = time.perf_counter()
        row.update(probability=round(pred.probability, 6), prediction=int(pred.probability >= options.threshold),
                   t_predict=round(t1 - t0, 4))
        folder = out_dir / "cases" / case_dirname(case["case_id"])
        fields = write_case_outputs(bag, pred.attention, pred.bag_features, folder, out_dir, options)
        row.update(fields, status="ok", t_write=round(time.perf_counter() - t1, 4))
    except Exception as raised:  # one case must never stop the batch
        row.update(status="failed", error=case_error_text(raised, case["case_id"]), probability="", prediction="")
        with contextlib.suppress(OSError):
            _clear_case_dir(out_dir / "cases" / case_dirname(case["case_id"]))  # no stale maps of an earlier run
    return row


def iter_predictions(cases: Iterable[Mapping], model: InferenceModel, out_dir: str | os.PathLike,
                     options: InferenceOptions | None = None, pipeline: CasePipeline | None = None) -> Iterator[dict]:
    """Lazily yield one ``predictions.csv`` row per case; a case is fully handled and dropped before the next is read.

    Args:
        cases: from :func:`ctmil.io.discovery.discover_cases` (any iterable; consumed one at a time).
        model: from :func:`ctmil.infer.model_io.load_model`.
        pipeline: the preprocessing (default settings when ``None``).
    """
    options = options or InferenceOptions()
    pipeline = pipeline or CasePipeline()
    out_dir = Path(out_dir)
    for case in cases:
        yield predict_case(case, model, pipeline, out_dir, options)


_INT_COLUMNS = ("prediction", "label", "n_slices", "n_slices_kept", "K")
_FLOAT_COLUMNS = ("probability", "threshold", "t_load", "t_preprocess", "t_predict", "t_write")


def predictions_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a typed table (nullable ints, floats with NaN where a failed case has no value)."""
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS)
    for c in _INT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c].replace("", None), errors="coerce").astype("Int64")
    for c in _FLOAT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c].replace("", None), errors="coerce").astype(float)
    return frame


def _write_features_csv(rows: list[dict], out_dir: Path) -> Path | None:
    """``features.csv`` (case_id, f000…) from the per-case ``features.npy`` files, streamed row by row."""
    done = [r for r in rows if r.get("features_path")]
    if not done:
        return None
    path, tmp = out_dir / "features.csv", out_dir / ".features.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        header_written = False
        for r in done:
            vec = np.load(out_dir / r["features_path"])
            if not header_written:
                writer.writerow(["case_id"] + [f"f{i:03d}" for i in range(vec.size)])
                header_written = True
            writer.writerow([r["case_id"]] + [f"{v:.6g}" for v in vec.tolist()])
    os.replace(tmp, path)
    return path


def run_inference(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    model: str | os.PathLike | InferenceModel,
    out_dir: str | os.PathLike,
    *,
    threshold: float = 0.5,
    device: str = "cpu",
    save_maps: bool = True,
    save_overlays: bool = True,
    save_features: bool = False,
    top_slices: int = 3,
    map_mode: str = "bag",
    labels: Mapping[str, float] | None = None,
    min_slices: int | None = None,
    min_area_fraction: float | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Predict every study of ``inputs``, writing ``out_dir/predictions.csv`` and per-case outputs (module docstring).

    Args:
        inputs: export folders, NIfTI files, slice-image folders or datalist CSVs (one path or several).
        model: a model file (:func:`ctmil.infer.model_io.load_model`) or an already loaded model.
        threshold, save_maps, save_overlays, save_features, top_slices, map_mode: see :class:`InferenceOptions`.
        device: ``"cpu"`` or ``"cuda[:i]"``.
        labels: optional reference labels by case id (or StudyInstanceUID), copied to the ``label`` column.
        min_slices, min_area_fraction: preprocessing settings; ``None`` = those recorded in the model
            checkpoint (``"preprocessing"``), else the defaults. They must match what the model was trained on.
        progress: tqdm progress bar.

    Returns:
        ``(predictions, n_failed)``.

    Raises:
        ModelError: the model cannot be loaded. ValueError: invalid options, or no case in ``inputs``.
    """
    from tqdm.auto import tqdm

    from ctmil.io.discovery import discover_cases

    options = InferenceOptions(threshold=float(threshold), save_maps=save_maps, save_overlays=save_overlays,
                               save_features=save_features, top_slices=int(top_slices), map_mode=map_mode)
    loaded = model if isinstance(model, InferenceModel) else load_model(model, device=device)
    if not loaded.has_attention and (save_maps or save_overlays):
        logger.warning("the model gives no attention: attention maps and overlays are skipped")
    settings = dict(loaded.preprocessing)
    if min_slices is not None:
        settings["min_slices"] = int(min_slices)
    if min_area_fraction is not None:
        settings["min_area_fraction"] = float(min_area_fraction)
    try:
        pipeline = CasePipeline(settings)
    except TypeError as err:
        raise ValueError(f"invalid preprocessing settings {settings}: {err}") from None
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    cases = discover_cases(paths, labels=dict(labels or {}), min_slices=settings.get("min_slices", 8), progress=progress)
    if not cases:
        raise ValueError("no cases found in the inputs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("%d cases; model %s (%s); outputs in %s", len(cases), Path(loaded.path).name, loaded.kind, out_dir)

    rows: list[dict] = []
    bar = tqdm(total=len(cases), desc="inference", unit="case", disable=not progress)
    try:
        for row in iter_predictions(iter(cases), loaded, out_dir, options, pipeline):
            rows.append(row)
            if row["status"] == "failed":
                logger.warning("case %s failed: %s", row["case_id"], row["error"])
            else:
                logger.debug("case %s: p(severe) = %.3f", row["case_id"], row["probability"])
            atomic_write_csv(predictions_frame(rows), out_dir / "predictions.csv")
            bar.set_postfix_str(row["case_id"])
            bar.update(1)
    finally:
        bar.close()
    predictions = predictions_frame(rows)
    if save_features:
        _write_features_csv(rows, out_dir)
    n_failed = int((predictions["status"] == "failed").sum())
    logger.info("%d cases: %d ok, %d failed; predictions: %s", len(predictions), len(predictions) - n_failed, n_failed,
                out_dir / "predictions.csv")
    return predictions, n_failed
