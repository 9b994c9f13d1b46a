"""What batch inference writes: ``predictions.csv`` (one row per case, rewritten after every case), the attention
NIfTI and PNG overlays of each case and, optionally, bag features. :class:`InferenceWriter` is the handler the
inference evaluator (``ctmil infer`` and the bundle's ``inference.json`` alike) attaches.

Output layout (``out_dir``)::

    predictions.csv                      one row per case (PREDICTION_COLUMNS)
    report.html                          with write_report: one self-contained page (predictions, failed cases,
                                         a gallery of the overlays with each case's probability); docs/reports.md
    features.csv                         with save_features: case_id, f000 ... (bag feature vectors)
    cases/<case_id>/attention.nii.gz     attention painted on the CT grid, aligned with the input series
    cases/<case_id>/overlay_s<NNN>.png   the most attended slices (NNN = slice index in the CT stack)
    cases/<case_id>/features.npy         with save_features: the bag feature vector (M,)
    cases/<case_id>/dicom/*.dcm          with dicom (DICOM inputs): the SR, the attention Parametric Map and the
                                         Secondary Capture overlays in the source study (ctmil.infer.dicom_results)
    cases/<case_id>/prediction.json      the case's row and the run key it was made under, written last: a case
                                         with this record is complete, and a rerun with the same key skips it
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from ignite.engine import Engine, Events

from ctmil.data.preprocess import case_error_text
from ctmil.io.atomic import atomic_open, atomic_write_csv, atomic_write_text
from ctmil.io.paths import safe_case_name
from ctmil.infer.dicom_results import DICOM_DIR, ModelIdentity, dicom_results_reason, write_dicom_results
from ctmil.infer.attention_maps import paint_attention, save_attention_nifti, slice_attention, top_attended_slices
from ctmil.infer.overlays import save_overlay
from ctmil.infer.run_checks import CASE_RECORD
from ctmil.report import GalleryItem, HtmlReport
from ctmil.keys import Columns

__all__ = ["PREDICTION_COLUMNS", "InferenceOptions", "InferenceWriter", "case_dirname", "empty_row", "predictions_frame",
           "write_case_outputs", "write_report"]

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = [
    Columns.CASE_ID, Columns.STATUS, Columns.PROBABILITY, Columns.PREDICTION, Columns.THRESHOLD, Columns.LABEL, "source", "input_kind", "series",
    "n_slices", "n_slices_kept", "K", "top_slices", "attention_path", "overlay_paths", "features_path", "dicom_paths", "error", "warning",
    "t_load_s", "t_preprocess_s", "t_predict_s", "t_write_s",
]


@dataclass(frozen=True)
class InferenceOptions:
    """What to write per case.

    Args:
        threshold: probability at or above which a case is predicted severe (``prediction = 1``); ``None``: the one
            learnt with the model (:func:`ctmil.infer.batch.run_inference` puts it in before any case is written).
        save_maps: write ``attention.nii.gz``.
        save_overlays: write PNG overlays of the ``top_slices`` most attended slices.
        save_features: write the bag feature vector (``features.npy`` and, at the end, ``features.csv``).
        top_slices: how many overlays per case.
        map_mode: ``"bag"`` (attention as is) or ``"slice"`` (normalised per slice, the paper's Fig. 5).
        with_study_uid: add the DICOM StudyInstanceUID column (an identifier; off by default).
        write_report: write ``report.html`` at the end (:func:`write_report`).
        report_max_overlays: most overlay cards in ``report.html`` (each inlines its PNG, ~50-300 KB); the most
            probable cases come first, every overlay stays under ``cases/``.
        dicom: write each DICOM study's results as DICOM objects in that study (``cases/<case>/dicom/``: the SR,
            the attention Parametric Map, ``top_slices`` Secondary Capture overlays; :mod:`ctmil.infer.dicom_results`).
            Other inputs get none and the reason in their ``warning``.
    """

    threshold: float | None = None
    save_maps: bool = True
    save_overlays: bool = True
    save_features: bool = False
    top_slices: int = 3
    map_mode: str = "bag"
    with_study_uid: bool = False
    write_report: bool = True
    report_max_overlays: int = 300
    dicom: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.report_max_overlays < 0:
            raise ValueError(f"report_max_overlays must be >= 0, got {self.report_max_overlays}")
        if self.top_slices < 0:
            raise ValueError(f"top_slices must be >= 0, got {self.top_slices}")
        if self.map_mode not in ("bag", "slice"):
            raise ValueError(f"map_mode must be 'bag' or 'slice', got {self.map_mode!r}")


#: A temporary file older than this is a killed run's leftover; younger ones may be another shard's live write.
STALE_TMP_SECONDS = 600


def case_dirname(case_id: str) -> str:
    """The folder name of a case's outputs: :func:`ctmil.io.paths.safe_case_name` (the one sanitiser of ids)."""
    return safe_case_name(case_id)


def empty_row(case: Mapping, threshold: float) -> dict:
    row = {c: "" for c in PREDICTION_COLUMNS}
    label = case.get(Columns.LABEL)
    row.update(case_id=str(case[Columns.CASE_ID]), study_uid=case.get("study_uid", ""), threshold=threshold, series=case.get("series", "") or "",
               source=str(case.get("source", "") or ""),
               label="" if label is None or (isinstance(label, float) and np.isnan(label)) else int(label))
    return row


def _clear_case_dir(folder: Path) -> None:
    """Remove this module's outputs of an earlier run of the same case (stale overlays of other slices)."""
    if not folder.is_dir():
        return
    (folder / CASE_RECORD).unlink(missing_ok=True)  # first: a case without its record is never resumed
    for f in folder.iterdir():
        if f.is_file() and (f.name in ("attention.nii.gz", "features.npy") or (f.name.startswith("overlay_") and f.suffix == ".png")):
            f.unlink(missing_ok=True)
    for f in (folder / DICOM_DIR).glob("*.dcm"):
        f.unlink(missing_ok=True)


def write_case_outputs(bag: dict, attention: np.ndarray | None, features: np.ndarray | None, folder: Path, out_dir: Path,
                       options: InferenceOptions, row: Mapping | None = None, model: ModelIdentity | None = None) -> dict:
    """Write one case's maps, overlays, features and (``options.dicom``) DICOM results into ``folder``; returns the
    row fields (paths relative to ``out_dir``). The DICOM results need the case's ``row`` and the ``model``."""
    fields = {"attention_path": "", "overlay_paths": "", "features_path": "", "dicom_paths": "", "top_slices": ""}
    _clear_case_dir(folder)
    meta = bag.get("meta") or {}
    if options.save_features and features is not None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(folder / "features.npy", "wb") as fh:
            np.save(fh, features.astype(np.float32))
        fields["features_path"] = (folder / "features.npy").relative_to(out_dir).as_posix()
    has_ct = "ct" in bag  # a bag read from a bag datalist holds no CT: no overlays, no DICOM results
    dicom = options.dicom and has_ct and not dicom_results_reason(meta)
    if dicom and (row is None or model is None):
        raise ValueError("DICOM results need the case's row and the model's identity")
    if dicom and attention is None:  # a model without attention: the SR alone
        _write_dicom(fields, bag, None, [], row, model, folder, out_dir, options)
    if attention is None or not (options.save_maps or options.save_overlays or dicom) or not meta.get("spatial_shape"):
        return fields  # nothing to paint, or no grid to paint it on (a bag that records no geometry)
    top = top_attended_slices(attention, bag["slice_index"], options.top_slices)
    fields["top_slices"] = ";".join(str(int(s)) for s in top)
    painted = paint_attention(attention, bag["slice_index"], bag["position"], bag["boxes"], bag["kept_slices"],
                              meta["spatial_shape"], mode=options.map_mode)  # (S, H, W)
    if dicom:
        _write_dicom(fields, bag, painted, top, row, model, folder, out_dir, options)
    if not (options.save_maps or options.save_overlays):
        return fields
    with ThreadPoolExecutor(max_workers=1) as pool:  # the NIfTI is gzipped (zlib frees the GIL) while PNGs are drawn
        nifti = pool.submit(save_attention_nifti, painted, meta, folder / "attention.nii.gz") if options.save_maps else None
        if options.save_overlays and has_ct and top.size:
            fields["overlay_paths"] = ";".join(_write_overlays(bag, attention, painted, top, folder, out_dir))
        if nifti is not None:
            fields["attention_path"] = nifti.result().relative_to(out_dir).as_posix()
    return fields


def _write_dicom(fields: dict, bag: dict, painted, top, row: Mapping, model: ModelIdentity, folder: Path, out_dir: Path,
                 options: InferenceOptions) -> None:
    """The case's DICOM results into ``fields["dicom_paths"]``; a study they cannot be made for (no frame of reference,
    a header highdicom refuses) keeps its prediction and gets the reason in ``fields["dicom_warning"]``."""
    try:
        written = write_dicom_results(bag, painted, top, row, model, folder / DICOM_DIR, options.map_mode)
    except Exception as raised:  # noqa: BLE001 - the prediction stands without its DICOM copy
        for f in (folder / DICOM_DIR).glob("*.dcm"):
            f.unlink(missing_ok=True)
        text = " ".join(str(raised).split())[:160] or type(raised).__name__
        fields["dicom_warning"] = f"no DICOM results: {type(raised).__name__}: {text}"
        return
    fields["dicom_paths"] = ";".join(p.relative_to(out_dir).as_posix() for p in written)


def _write_overlays(bag: dict, attention: np.ndarray, painted: np.ndarray, top: np.ndarray, folder: Path, out_dir: Path) -> list[str]:
    """The PNG overlays of the ``top`` slices (paths relative to ``out_dir``), on one colour scale per case."""
    meta = bag["meta"]
    ct = bag["ct"].as_tensor()[0].numpy() if hasattr(bag["ct"], "as_tensor") else np.asarray(bag["ct"])[0]  # (S, H, W)
    kept = bag["kept_slices"].tolist()
    spacing = meta.get("spacing")
    aspect = float(spacing[1]) / float(spacing[2]) if spacing else 1.0
    vmax = float(painted.max())
    mass = dict(zip(*(v.tolist() for v in slice_attention(attention, bag["slice_index"]))))
    paths = []
    for s in top.tolist():
        box = bag["boxes"][kept.index(s)].tolist()
        title = f"{bag[Columns.CASE_ID]}  slice index {s} of {meta['spatial_shape'][0]}  ({mass[s]:.1%} of the attention)"
        p = save_overlay(ct[s], painted[s], box, folder / f"overlay_s{s:03d}.png", intensity=meta.get("intensity", "hu"),
                         vmax=vmax, title=title, aspect=aspect)
        paths.append(p.relative_to(out_dir).as_posix())
    return paths


_INT_COLUMNS = (Columns.PREDICTION, Columns.LABEL, "n_slices", "n_slices_kept", "K")
_FLOAT_COLUMNS = (Columns.PROBABILITY, Columns.THRESHOLD, "t_load_s", "t_preprocess_s", "t_predict_s", "t_write_s")


def _plain_row(row: Mapping) -> dict:
    """A row as JSON-safe plain values (numpy numbers as Python ones)."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def predictions_frame(rows: list[dict], with_study_uid: bool = False) -> pd.DataFrame:
    """The rows as a typed table (nullable ints, floats with NaN where a failed case has no value)."""
    frame = pd.DataFrame(rows, columns=PREDICTION_COLUMNS[:1] + ["study_uid"] * with_study_uid + PREDICTION_COLUMNS[1:])
    for c in _INT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c].replace("", None), errors="coerce").astype("Int64")
    for c in _FLOAT_COLUMNS:
        frame[c] = pd.to_numeric(frame[c].replace("", None), errors="coerce").astype(float)
    return frame


def _write_features_csv(rows: list[dict], out_dir: Path, name: str = "features.csv") -> Path | None:
    """``name`` (case_id, f000…) from the per-case ``features.npy`` files, streamed row by row (atomically)."""
    done = [r for r in rows if r.get("features_path")]
    if not done:
        return None
    path = out_dir / name
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        header_written = False
        for r in done:
            vec = np.load(out_dir / r["features_path"])
            if not header_written:
                writer.writerow([Columns.CASE_ID] + [f"f{i:03d}" for i in range(vec.size)])
                header_written = True
            writer.writerow([r[Columns.CASE_ID]] + [f"{v:.6g}" for v in vec.tolist()])
    return path


#: The warning of a case read from a bag (a bag datalist): what needs the CT is not written.
NO_CT_WARNING = "a bag holds no CT: no overlays or DICOM results"


class InferenceWriter:
    """Write each predicted case as it completes, and ``predictions.csv`` after every case (atomically: after a
    crash it holds every finished case). Reads the step output of :func:`ctmil.infer.batch.make_case_step`:
    ``{"row": dict, "bag": dict | None, "attention": array | None, "features": array | None}``.

    Args:
        output_dir: the output folder.
        options: what to write per case.
        run_key: what the outputs were made under (:func:`ctmil.infer.run_checks.run_key`); with one, each finished case
            gets its record (:data:`CASE_RECORD`), written after its other outputs.
        finished: the rows of cases an earlier run finished under ``run_key`` (:func:`ctmil.infer.run_checks.finished_rows`), which this
            run skips: they head ``predictions.csv`` as they did.
        table: the table's file name: ``predictions.csv``, or a shard's / torchrun rank's
            ``predictions.shard-I-of-N.csv`` (:func:`ctmil.infer.shards.shard_table`), merged afterwards.
        model: which model makes the predictions (recorded in the DICOM results; needed with ``options.dicom``).
        then: what receives the finished predictions table, in order, each time it is final (after the last case, or
            at once when a resumed run has nothing left): the held-out evaluation of ``evaluate.json``
            (:class:`~ctmil.evaluate.held_out.HeldOutReport`) is one. An explicit dependency: it never
            hangs on the order in which handlers are listed.
    """

    def __init__(self, output_dir: "str | os.PathLike[str]", options: InferenceOptions | None = None, run_key: str = "",
                 finished: list[dict] | None = None, table: str = "predictions.csv", model: ModelIdentity | None = None,
                 then: Sequence[Callable[[pd.DataFrame], Any]] = ()) -> None:
        self.out_dir = Path(output_dir)
        self.options = options or InferenceOptions()
        self.run_key = str(run_key)
        self.finished = [dict(r) for r in finished or []]  # rows of cases an earlier run finished: not run again
        self.table = str(table)  # a shard's run (or torchrun rank) writes shard_table(i, n) instead (ctmil.infer.shards)
        self.rows: list[dict] = []
        self.model = model
        self.then = [c for c in then or () if c is not None]
        if self.options.dicom and model is None:
            raise ValueError("InferenceWriter: options.dicom needs the model's identity (model=)")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows = [dict(r) for r in self.finished]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for stale in [*self.out_dir.glob(".*.tmp"), *self.out_dir.glob("cases/*/.*.tmp")]:  # a killed run's half-writes,
            with contextlib.suppress(OSError):  # not those of a shard writing beside this run (they are seconds old)
                if now - stale.stat().st_mtime > STALE_TMP_SECONDS:
                    stale.unlink()

    def collect(self, engine: Engine) -> None:
        out = engine.state.output
        row = dict(out["row"])
        folder = self.out_dir / "cases" / case_dirname(row[Columns.CASE_ID])
        if row[Columns.STATUS] != "failed":
            t0 = time.perf_counter()
            try:
                if "ct" not in out["bag"] and (self.options.dicom or self.options.save_overlays):
                    missing = NO_CT_WARNING
                else:
                    missing = dicom_results_reason(out["bag"].get("meta") or {}) if self.options.dicom else ""
                if missing:
                    row["warning"] = "; ".join(w for w in (row.get("warning"), missing) if w)
                fields = write_case_outputs(out["bag"], out["attention"], out["features"], folder, self.out_dir, self.options,
                                            row, self.model)
                if fields.get("dicom_warning"):
                    row["warning"] = "; ".join(w for w in (row.get("warning"), fields["dicom_warning"]) if w)
                fields.pop("dicom_warning", None)
                row.update(fields, t_write_s=round(time.perf_counter() - t0, 4))
            except Exception as raised:  # one case must never stop the batch
                row.update(status="failed", error=case_error_text(raised, row[Columns.CASE_ID]), probability="", prediction="")
        if row[Columns.STATUS] == "failed":
            with contextlib.suppress(OSError):
                _clear_case_dir(folder)  # no stale maps of an earlier run
            logger.warning("case %s failed: %s", row[Columns.CASE_ID], row["error"])
        self.rows.append(row)
        if row[Columns.STATUS] == "ok" and self.run_key:  # last: the record says the case's outputs are complete
            atomic_write_text(json.dumps({"run_key": self.run_key, "row": _plain_row(row)}), folder / CASE_RECORD)
        atomic_write_csv(predictions_frame(self.rows, self.options.with_study_uid), self.out_dir / self.table)

    def publish(self, engine: Engine) -> None:
        engine.state.predictions = self.finish()

    def finish(self) -> pd.DataFrame:
        """Write what comes after the last case (``features.csv``, ``report.html``, ``predictions.csv`` once more:
        a resumed run with nothing left to do has only the earlier rows) and return the predictions."""
        if self.options.save_features:
            _write_features_csv(self.rows, self.out_dir, self.table.replace("predictions", "features", 1))
        predictions = predictions_frame(self.rows, self.options.with_study_uid)
        atomic_write_csv(predictions, self.out_dir / self.table)
        if self.options.write_report and self.table == "predictions.csv":  # a shard's page is the merge's to write
            write_report(predictions, self.out_dir, self.options)
        for consumer in self.then:
            consumer(predictions)
        return predictions


REPORT_COLUMNS = [Columns.CASE_ID, Columns.STATUS, Columns.PROBABILITY, Columns.PREDICTION, Columns.LABEL, "n_slices_kept", "top_slices", "warning"]


def _threshold_text(options: InferenceOptions, predictions: pd.DataFrame) -> str:
    """The threshold the predictions were made at: the options', else the one in the table (learnt with the model)."""
    if options.threshold is not None:
        return f"{options.threshold:g}"
    used = predictions[Columns.THRESHOLD].dropna().unique() if Columns.THRESHOLD in predictions else []
    return f"{float(used[0]):g}" if len(used) == 1 else "learnt with the model"


def write_report(predictions: pd.DataFrame, out_dir: "str | os.PathLike[str]", options: InferenceOptions) -> Path:
    """``out_dir/report.html``: the predictions table (``id="predictions"``), the failed cases (``id="failed"``) and
    a gallery (``id="overlays"``) of every overlay of the usable cases, most probable case first, each card with
    ``data-case-id`` and ``data-slice`` and the case's probability in its caption."""
    out_dir = Path(out_dir)
    ok = predictions[predictions[Columns.STATUS] != "failed"]
    failed = predictions[predictions[Columns.STATUS] == "failed"]
    report = HtmlReport("ctmil infer: predictions")
    report.paragraph(f"{len(predictions)} cases: {len(ok)} predicted, {len(failed)} failed. probability: the model's "
                     f"probability that the case is severe; prediction = 1 when it is at least the threshold "
                     f"{_threshold_text(options, predictions)}; label: the reference label when one was given.")
    report.heading("Predictions", id="predictions-heading")
    report.table(predictions[[c for c in REPORT_COLUMNS if c in predictions]], id="predictions", caption="one row per case")
    report.heading("Failed cases", id="failed-heading")
    if len(failed):
        report.table(failed[[Columns.CASE_ID, "error", "warning"]], id="failed", caption="cases without a prediction, with the reason")
    else:
        report.paragraph("No case failed.")
    report.heading("Attention overlays", id="overlays-heading")
    if not options.save_overlays:
        report.paragraph("Overlays were turned off for this run (--no-overlays), so no gallery is shown.")
        return report.write(out_dir / "report.html")
    cards = []
    for row in ok.sort_values(Columns.PROBABILITY, ascending=False, kind="stable").itertuples():
        paths = [p for p in str(row.overlay_paths or "").split(";") if p]
        slices = [s for s in str(row.top_slices or "").split(";") if s]
        for rank, (path, s) in enumerate(zip(paths, slices), 1):
            if (out_dir / path).is_file():
                caption = f"{row.case_id}: probability {row.probability:.3f}, prediction {row.prediction}; slice {s} (attention rank {rank})"
                cards.append(GalleryItem(out_dir / path, caption, case_id=str(row.case_id), attrs={"slice": s, "rank": str(rank)}))
    shown = cards[: options.report_max_overlays]
    report.paragraph(f"The {options.top_slices} most attended slices of each predicted case (files under cases/), lung box "
                     "and patch grid in green." if cards else "No overlay was written (no attention, or top_slices = 0).")
    if len(shown) < len(cards):
        report.paragraph(f"{len(shown)} of {len(cards)} overlays are shown (report_max_overlays), most probable cases first.")
    if shown:
        report.gallery(shown, id="overlays", width=400)
    return report.write(out_dir / "report.html")
