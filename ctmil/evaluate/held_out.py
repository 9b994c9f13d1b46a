"""Evaluation of a trained model on held-out cases: metrics with confidence intervals, calibration, ROC and reliability.

:func:`evaluate_model` (``ctmil evaluate``) predicts the cases, keeps those with a 0/1 label and writes into ``out_dir``:

* ``predictions.csv``: ``case_id, probability, prediction, label`` of every evaluated case;
* ``metrics.csv``: ``metric, estimate, lower, upper, method``: accuracy, sensitivity, specificity, F1, AUC and
  PR-AUC with percentile bootstrap CIs (:func:`ctmil.stats.statistics.bootstrap_ci`, stratified, seeded),
  the AUC with DeLong's CI (``auc_delong``), the Brier score (``brier``), the expected calibration error
  (``ece``) and the operating ``threshold`` (its method says where it came from);
* ``evaluation.md``: the table and how each number was made; ``roc.png``, ``reliability.png``;
* ``report.html``: the same as one self-contained page (:mod:`ctmil.evaluate.report_html`).

Where the predictions come from: the one evaluation workflow, the bundle's ``inference.json`` with ``evaluate.json``
over it (the infer workflow, whose :class:`~ctmil.infer.writer.InferenceWriter` hands its finished table to
:class:`~ctmil.evaluate.held_out.HeldOutReport`, which writes what is listed above). The same files come from
``ctmil evaluate`` and from ``python -m monai.bundle run --config_file "['inference.json','evaluate.json']"``. Its
inputs are CT (export folders, NIfTI files, a CT datalist), preprocessed as the model records, or a **bag datalist**
(``case_id, bag, label``, what ``ctmil preprocess`` writes), whose bags are read as they are
(:mod:`ctmil.infer.bag_inputs`). The infer workflow's own outputs go to ``out_dir/inference``.

Labels come from the datalist, else from ``labels`` (a labels CSV or a mapping); unlabelled cases are left out with
a warning. A case that cannot be predicted is left out and listed in ``result["failed"]`` with its one-line reason.

Probabilities are calibrated, and the threshold chosen, by the operating point learnt with the model on its
training data (``model.json``; see :mod:`ctmil.stats.operating_point`), never on the evaluated cases.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctmil.io.atomic import atomic_write_csv, atomic_write_text
from ctmil.stats.calibration import brier_score, expected_calibration_error, plot_reliability
from ctmil.stats.metrics import roc_curve
from ctmil.report.plots import RocCurve, RocPoint, plot_roc as draw_roc
from ctmil.evaluate.report_html import write_evaluate_html
from ctmil.stats.statistics import bootstrap_ci, delong_auc_ci
from ctmil.bundle import read_labels
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.bag_inputs import is_bag_datalist
from ctmil.infer.model_io import recorded_operating_point
from ctmil.io.discovery import discover_cases
from ctmil.keys import Columns

__all__ = ["METRIC_LABELS", "evaluate_model", "held_out_metrics", "plot_roc", "point_source", "resolve_threshold", "write_held_out"]

logger = logging.getLogger(__name__)

METRIC_LABELS = {
    "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "auc": "AUC",
    "pr_auc": "PR-AUC", "auc_delong": "AUC (DeLong)", "brier": "Brier score", "ece": "ECE", Columns.THRESHOLD: "Threshold",
}  # fmt: skip
ECE_BINS = 10
PathLike = "str | os.PathLike[str]"


def point_source(point: Mapping[str, Any]) -> str:
    """Where an operating point's threshold came from, in words (``youden on 12 inner validation cases``)."""
    rule = "" if point.get("rule") == "fixed" else f"{point.get('rule')} on "
    return f"{rule}{point.get('source', 'the model')}"


def resolve_threshold(threshold: float | None, model: PathLike) -> tuple[float, str]:
    """``(threshold, where it came from)``: the given one, else the operating point recorded in ``model.json``
    beside the model (learnt on training data, :func:`~ctmil.infer.model_io.recorded_operating_point`), else 0.5."""
    source = "given (--threshold)"
    if threshold is None:
        point = recorded_operating_point(model)
        threshold, source = point[Columns.THRESHOLD], point_source(point)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold ({source}) must be a number in [0, 1], got {threshold!r}.")
    return float(threshold), source


def _both_classes_before_inference(sources: Sequence[PathLike], known: Mapping[str, float]) -> None:
    """Refuse, before any study is read, CT inputs whose labels cannot give both classes (discovery reads headers
    only); one line."""
    labels = [float(c[Columns.LABEL]) for c in discover_cases(list(sources), labels=dict(known), progress=False)
              if c.get(Columns.LABEL) is not None and c[Columns.LABEL] == c[Columns.LABEL]]
    n_pos, n_neg = sum(v == 1 for v in labels), sum(v == 0 for v in labels)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"evaluation needs labelled cases of both classes; the inputs' labels (--labels, or a datalist's "
                         f"label column) give {n_pos} positive and {n_neg} negative: nothing was run")


def _labelled(predictions: pd.DataFrame, n_failed: int) -> pd.DataFrame:
    """The predictions with a 0/1 label (the others are left out with a warning); at least one of each class."""
    known = predictions[Columns.LABEL].isin([0.0, 1.0])
    if not known.all():
        left = predictions.loc[~known, Columns.CASE_ID].tolist()
        logger.warning("%d case(s) without a 0/1 label are left out: %s", len(left), ", ".join(left[:10]))
    kept = predictions.loc[known].reset_index(drop=True)
    n_pos = int((kept[Columns.LABEL] == 1).sum())
    if n_pos == 0 or n_pos == len(kept):
        raise ValueError(f"evaluation needs at least one labelled case of each class; got {n_pos} positive and "
                         f"{len(kept) - n_pos} negative ({n_failed} failed, {int((~known).sum())} unlabelled).")
    return kept.assign(label=kept[Columns.LABEL].astype(int))


#: Fewer cases of either class than this: no bootstrap CI ("n too small for a CI"), never a zero-width interval.
MIN_CI_PER_CLASS = 5


def held_out_metrics(labels, probs, threshold: float, threshold_source: str = "given", n_resamples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> pd.DataFrame:  # fmt: skip
    """``metrics.csv``'s frame (``metric, estimate, lower, upper, method``) for ``labels, probs: (N,)``."""
    ci = bootstrap_ci(labels, probs, threshold, n_resamples=n_resamples, level=level, seed=seed, stratified=True)
    boot = f"percentile bootstrap, {n_resamples} stratified resamples, seed {seed}"
    y = np.asarray(labels, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if min(n_pos, n_neg) < MIN_CI_PER_CLASS:  # a resample of 3 + 3 cases barely varies: an interval would look exact
        too_few = (f"n too small for a CI ({n_pos} positive, {n_neg} negative; at least {MIN_CI_PER_CLASS} of each)")
        ci = ci.assign(lower=np.nan, upper=np.nan)
        boot = too_few
    rows = [{"metric": m, "estimate": r.estimate, "lower": r.lower, "upper": r.upper,
             "method": boot if pd.isna(r.lower) or r.upper > r.lower else f"{boot}; every resample gave this value"}
            for m, r in ci.iterrows()]
    try:
        auc = delong_auc_ci(labels, probs, level=level)
        rows.append({"metric": "auc_delong", "estimate": auc.auc, "lower": auc.lower, "upper": auc.upper,
                     "method": "DeLong variance, normal interval clipped to [0, 1]"})  # fmt: skip
    except ValueError as err:  # fewer than two cases of a class
        rows.append({"metric": "auc_delong", "estimate": float(ci.loc["auc", "estimate"]), "lower": np.nan,
                     "upper": np.nan, "method": f"DeLong not computed: {err}"})  # fmt: skip
    rows += [
        {"metric": "brier", "estimate": brier_score(probs, labels), "method": "mean of (probability - label)^2"},
        {"metric": "ece", "estimate": expected_calibration_error(probs, labels, ECE_BINS),
         "method": f"expected calibration error, {ECE_BINS} equal-width bins"},
        {"metric": Columns.THRESHOLD, "estimate": float(threshold), "method": threshold_source},
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["metric", "estimate", "lower", "upper", "method"])


def plot_roc(probs, labels, threshold: float, path: PathLike, title: str = "ROC", dpi: int = 100) -> Path:
    """Write the ROC curve of ``probs, labels: (N,)`` as a PNG, with the operating point at ``threshold`` marked
    (:func:`ctmil.report.plots.plot_roc`)."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    fpr, tpr, _ = roc_curve(p, y)
    called = p >= threshold
    point = RocPoint(called[y == 0].mean(), called[y == 1].mean(), f"threshold {threshold:.3g}")  # (1 - spec, sens)
    return draw_roc([RocCurve(fpr, tpr, "model")], path, title=title, points=[point], dpi=dpi)


def _table(metrics: pd.DataFrame, level: float) -> str:
    """The metrics as a Markdown table (estimate, CI where there is one, method)."""
    lines = [f"| Metric | Estimate | {level:.0%} CI | Method |", "|---|---:|---:|---|"]
    for r in metrics.itertuples():
        ci = ("n too small" if str(r.method).startswith("n too small") else "–") if pd.isna(r.lower) else f"{r.lower:.3f} – {r.upper:.3f}"
        lines.append(f"| {METRIC_LABELS.get(r.metric, r.metric)} | {r.estimate:.3f} | {ci} | {r.method} |")
    return "\n".join(lines)


def _markdown(table: str, predictions: pd.DataFrame, failed: pd.DataFrame, n_unlabelled: int, model: str,
              threshold: str, n_resamples: int, seed: int, level: float) -> str:  # fmt: skip
    n, n_pos = len(predictions), int(predictions[Columns.LABEL].sum())
    left = [f"- {r.case_id}: failed ({r.error})" for r in failed.head(20).itertuples()]
    left += [f"- ... and {len(failed) - 20} more failed cases"] if len(failed) > 20 else []
    return "\n".join([
        "# Held-out evaluation", "",
        f"Model `{model}`; {n} cases ({n_pos} positive, {n - n_pos} negative); threshold {threshold}.",
        f"Left out: {len(failed)} failed, {n_unlabelled} without a 0/1 label.", *left, "", table, "",
        "## How each number was made", "",
        "- Predictions: one probability per case (sigmoid of the bag logit); a case is called positive when "
        "probability >= threshold. `predictions.csv` holds every evaluated case.",
        "- Accuracy, sensitivity, specificity, F1 (TP / (TP + (FP + FN) / 2)) at the threshold, AUC (Mann-Whitney, "
        "ties 1/2) and PR-AUC (average precision, as scikit-learn's `average_precision_score`) on all cases.",
        f"- Their {level:.0%} CIs: percentile bootstrap over {n_resamples} resamples (seed {seed}), stratified: "
        "positives and negatives are resampled separately, so each resample keeps the class counts.",
        f"- AUC (DeLong): DeLong's (1988) variance of the AUC and the normal {level:.0%} interval, clipped to [0, 1] "
        "(needs at least two cases of each class).",
        f"- Brier score: mean of (probability - label)^2. ECE: sum over {ECE_BINS} equal-width probability bins of "
        "(cases in bin / N) x |fraction positive - mean probability|.",
        "", "![ROC curve](roc.png)", "", "![Reliability diagram](reliability.png)", "",
    ])  # fmt: skip


def evaluate_model(
    model: PathLike,
    inputs: "PathLike | Sequence[PathLike]",
    out_dir: PathLike,
    *,
    labels: "PathLike | Mapping[str, float] | None" = None,
    threshold: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    device: str = "cpu",
    progress: bool = False,
    save_maps: bool = False,
    allow_input_mismatch: bool = False,
    config: Sequence[PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict:
    """Predict the held-out cases of ``inputs`` with ``model`` and write the evaluation into ``out_dir``.

    Args:
        model: ``model.pt`` (weights only; its ``model.json`` records network, preprocessing, threshold).
        inputs: a bag datalist CSV, or CT inputs (export folders, NIfTI files, CT datalists).
        labels: labels CSV or mapping by case id, for cases the datalist gives no label.
        threshold: the operating threshold; ``None``: ``model.json``'s ``threshold``, else 0.5.
        n_resamples, seed, level: the bootstrap; ``level`` is also DeLong's.
        save_maps: attention maps (in ``out_dir/inference``), and overlays for CT inputs (a bag holds no CT).
        allow_input_mismatch: evaluate CT inputs of another intensity than the model was trained on
            (:func:`ctmil.infer.run_checks.check_input_intensity`; refused by default).
        config, overrides: more config files over the bundle's ``inference.json`` + ``evaluate.json`` and overrides by
            MONAI id (as ``ctmil infer --config/--set``; ``options#<field>`` changes what is written per case).

    Returns:
        ``metrics``, ``predictions``, ``failed`` (``case_id, error``) frames; ``table`` (Markdown); ``threshold``,
        ``threshold_source``; paths ``metrics_csv``, ``predictions_csv``, ``report``, ``roc``, ``reliability``.

    Raises:
        ModelError: the model cannot be loaded. ValueError: bad options, or not one labelled case of each class.
    """
    sources = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not sources:
        raise ValueError("no inputs to evaluate.")
    t, source = resolve_threshold(threshold, model)
    known, out = read_labels(labels), Path(out_dir)
    bags = any(is_bag_datalist(p) for p in sources)
    if bags and len(sources) > 1:
        raise ValueError("a bag datalist is evaluated on its own, not with other inputs.")
    if not bags:
        _both_classes_before_inference(sources, known)
    out.mkdir(parents=True, exist_ok=True)
    report = HeldOutReport(out, model=model, threshold=t, threshold_source=source, n_resamples=n_resamples, seed=seed, level=level)
    options = InferenceOptions(threshold=t, save_maps=save_maps, save_overlays=save_maps and not bags)
    run_inference(sources, model, out / "inference", options, device=device, labels=known, progress=progress,
                  allow_input_mismatch=allow_input_mismatch, config=["evaluate.json", *config],
                  overrides={"held_out": report, "evaluation_dir": str(out), **dict(overrides or {})})  # fmt: skip
    if report.result is None:  # pragma: no cover - the writer hands every finished table on
        raise RuntimeError("the evaluation workflow finished without its held-out report")
    return report.result


def write_held_out(predictions: pd.DataFrame, out_dir: PathLike, *, model: PathLike, threshold: float, threshold_source: str,
                   n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:  # fmt: skip
    """The held-out evaluation of an infer workflow's ``predictions`` table (``case_id, status, probability, label,
    error``, ...) into ``out_dir``: every file of the module docstring. Failed cases are listed, unlabelled ones left
    out with a warning; the result is what :func:`evaluate_model` returns.

    Raises:
        ValueError: not one labelled case of each class.
    """
    out = Path(out_dir)
    ok = predictions[Columns.STATUS] != "failed"
    failed = predictions.loc[~ok, [Columns.CASE_ID, "error"]].reset_index(drop=True)
    predicted = pd.DataFrame({Columns.CASE_ID: predictions.loc[ok, Columns.CASE_ID],
                              Columns.PROBABILITY: pd.to_numeric(predictions.loc[ok, Columns.PROBABILITY], errors="coerce"),
                              Columns.LABEL: pd.to_numeric(predictions.loc[ok, Columns.LABEL], errors="coerce")}).reset_index(drop=True)  # fmt: skip
    t = float(threshold)
    kept = _labelled(predicted, len(failed))
    y, p = kept[Columns.LABEL].to_numpy(), kept[Columns.PROBABILITY].to_numpy(dtype=np.float64)
    table_out = pd.DataFrame({Columns.CASE_ID: kept[Columns.CASE_ID], Columns.PROBABILITY: p, Columns.PREDICTION: (p >= t).astype(int), Columns.LABEL: y})
    metrics = held_out_metrics(y, p, t, threshold_source, n_resamples, seed, level)
    table = _table(metrics, level)
    paths = {name: out / name for name in ("metrics.csv", "predictions.csv", "evaluation.md", "roc.png", "reliability.png")}
    atomic_write_csv(metrics, paths["metrics.csv"])
    atomic_write_csv(table_out, paths["predictions.csv"])
    auc = metrics.set_index("metric").loc["auc", "estimate"]
    plot_roc(p, y, t, paths["roc.png"], title=f"ROC, {len(y)} held-out cases (AUC {auc:.3f})")
    plot_reliability(p, y, paths["reliability.png"], n_bins=ECE_BINS, title=f"Reliability, {len(y)} held-out cases")
    text = _markdown(table, table_out, failed, len(predicted) - len(kept), Path(model).name, f"{t:.4g} ({threshold_source})",
                     n_resamples, seed, level)  # fmt: skip
    atomic_write_text(text, paths["evaluation.md"])
    context = (f"Model {Path(model).name}; {len(y)} held-out cases ({int(y.sum())} positive); threshold {t:.4g} ({threshold_source}); "
               f"{n_resamples} stratified bootstrap resamples (seed {seed}).")  # fmt: skip
    paths["report.html"] = write_evaluate_html(out, metrics, table_out, failed, context, METRIC_LABELS)
    logger.info("%d cases evaluated (%d failed); report: %s", len(y), len(failed), paths["evaluation.md"])
    return {"metrics": metrics, "predictions": table_out, "failed": failed, "table": table, Columns.THRESHOLD: t,
            "threshold_source": threshold_source, "metrics_csv": paths["metrics.csv"], "predictions_csv": paths["predictions.csv"],
            "report": paths["evaluation.md"], "roc": paths["roc.png"], "reliability": paths["reliability.png"],
            "html": paths["report.html"]}  # fmt: skip


class HeldOutReport:
    """The held-out evaluation as the infer workflow's writer hands on its finished table (``InferenceWriter(then=...)``
    in ``evaluate.json``): :func:`write_held_out` into ``output_dir``, its result kept as :attr:`result`.

    Args:
        output_dir: where the evaluation goes (the infer workflow writes into its ``inference/``).
        model: the model file (named in the report).
        threshold: the operating threshold the predictions were made at.
        threshold_source: where it came from, in words; ``None``: from ``operating_point`` (the model's), or "given"
            when ``threshold`` is not that point's.
        operating_point: the model's recorded point (:func:`~ctmil.infer.model_io.recorded_operating_point`).
        n_resamples, seed, level: the bootstrap; ``level`` is also DeLong's.
    """

    def __init__(self, output_dir: PathLike, model: PathLike, threshold: float, threshold_source: str | None = None,
                 operating_point: Mapping[str, Any] | None = None, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> None:  # fmt: skip
        if threshold_source is None:
            recorded = operating_point is not None and float(operating_point[Columns.THRESHOLD]) == float(threshold)
            threshold_source = point_source(operating_point) if recorded else "given (threshold)"
        self.output_dir, self.model, self.threshold, self.threshold_source = Path(output_dir), model, float(threshold), threshold_source
        self.n_resamples, self.seed, self.level = int(n_resamples), int(seed), float(level)
        self.result: dict | None = None

    def __call__(self, predictions: pd.DataFrame) -> None:
        self.result = write_held_out(predictions, self.output_dir, model=self.model, threshold=self.threshold,
                                     threshold_source=self.threshold_source, n_resamples=self.n_resamples, seed=self.seed,
                                     level=self.level)  # fmt: skip
