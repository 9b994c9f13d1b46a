"""Evaluation of a trained model on held-out cases: metrics with confidence intervals, calibration, ROC and reliability.

:func:`evaluate_model` (``ctmil evaluate``) predicts the cases, keeps those with a 0/1 label and writes into ``out_dir``:

* ``predictions.csv``: ``case_id, probability, prediction, label`` of every evaluated case;
* ``metrics.csv``: ``metric, estimate, lower, upper, method``: accuracy, sensitivity, specificity, F1, AUC and
  PR-AUC with percentile bootstrap CIs (:func:`ctmil.stats.statistics.bootstrap_ci`, stratified, seeded),
  the AUC with DeLong's CI (``auc_delong``), the Brier score (``brier``), the expected calibration error
  (``ece``) and the operating ``threshold`` (its method says where it came from);
* ``evaluation.md``: the table and how each number was made; ``roc.png``, ``reliability.png``;
* ``report.html``: the same as one self-contained page (:mod:`ctmil.evaluate.report_html`).

Where the predictions come from (one predict path each, as in training and inference):

* a **bag datalist** (``case_id, bag, label``, what ``ctmil preprocess`` writes): :func:`ctmil.train.engines.predict`;
* **CT inputs** (export folders, NIfTI files, a CT datalist): :func:`ctmil.infer.batch.run_inference`, whose own
  outputs go to ``out_dir/inference``.

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

from ctmil.data.preprocess import case_error_text
from ctmil.io.atomic import atomic_write_csv, atomic_write_text
from ctmil.stats.calibration import apply_calibration, brier_score, expected_calibration_error, plot_reliability
from ctmil.stats.metrics import roc_curve
from ctmil.report.plots import RocCurve, RocPoint, plot_roc as draw_roc
from ctmil.evaluate.report_html import write_evaluate_html
from ctmil.stats.statistics import bootstrap_ci, delong_auc_ci
from ctmil.bundle import load_bag_datalist, read_labels
from ctmil.data.bags import BagDataset, load_bag
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.model_io import load_model, recorded_operating_point
from ctmil.io.discovery import discover_cases, read_table
from ctmil.train.engines import predict
from ctmil.networks.predict import BagInferer
from ctmil.keys import Columns

__all__ = ["METRIC_LABELS", "evaluate_model", "held_out_metrics", "plot_roc", "resolve_threshold"]

logger = logging.getLogger(__name__)

METRIC_LABELS = {
    "accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "auc": "AUC",
    "pr_auc": "PR-AUC", "auc_delong": "AUC (DeLong)", "brier": "Brier score", "ece": "ECE", Columns.THRESHOLD: "Threshold",
}  # fmt: skip
ECE_BINS = 10
PathLike = "str | os.PathLike[str]"


def resolve_threshold(threshold: float | None, model: PathLike) -> tuple[float, str]:
    """``(threshold, where it came from)``: the given one, else the operating point recorded in ``model.json``
    beside the model (learnt on training data, :func:`~ctmil.infer.model_io.recorded_operating_point`), else 0.5."""
    source = "given (--threshold)"
    if threshold is None:
        point = recorded_operating_point(model)
        rule = "" if point["rule"] == "fixed" else f"{point['rule']} on "
        threshold, source = point[Columns.THRESHOLD], f"{rule}{point['source']}"
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold ({source}) must be a number in [0, 1], got {threshold!r}.")
    return float(threshold), source


def _bag_datalist(inputs: Sequence[PathLike]) -> Path | None:
    """The one bag datalist among ``inputs`` (a CSV with a ``bag`` column), or ``None`` for CT inputs."""
    bags = [Path(p) for p in inputs if str(p).endswith(".csv") and Path(p).is_file() and "bag" in read_table(p).columns]
    if bags and len(inputs) > 1:
        raise ValueError(f"a bag datalist ({bags[0].name}) is evaluated on its own, not with other inputs.")
    return bags[0] if bags else None


def _bag_predictions(datalist: Path, loaded: Any, labels: Mapping[str, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(predictions [case_id, probability, label], failed [case_id, error])`` of a bag datalist, by ``predict``;
    rows without a 0/1 label (in the datalist or ``labels``) are not predicted and have ``nan`` label and probability."""
    if loaded.strategy != "parts":
        raise ValueError(f"a bag datalist needs a MILNet state dict (model.pt), not a {loaded.kind} model.")
    table = read_table(datalist)
    if Columns.CASE_ID not in table.columns:
        raise ValueError(f"{datalist}: a bag datalist needs case_id and bag columns (and label, or --labels).")
    table[Columns.LABEL] = table[Columns.LABEL] if Columns.LABEL in table.columns else ""
    known = pd.to_numeric(table[Columns.LABEL], errors="coerce").isin([0, 1])
    table.loc[~known, Columns.LABEL] = [str(int(labels[c])) if c in labels else "" for c in table.loc[~known, Columns.CASE_ID]]
    known = pd.to_numeric(table[Columns.LABEL], errors="coerce").isin([0, 1])
    unlabelled = pd.DataFrame({Columns.CASE_ID: table.loc[~known, Columns.CASE_ID], Columns.PROBABILITY: np.nan, Columns.LABEL: np.nan})
    table["bag"] = [p if Path(p).is_absolute() else str(datalist.resolve().parent / p) for p in table["bag"]]
    table = load_bag_datalist(table.loc[known])  # the one datalist reader (bag paths, duplicate ids)
    bags, failed = [], []
    for row in table.itertuples():
        try:
            bags.append((row.case_id, load_bag(row.bag), float(row.label)))
        except Exception as raised:  # one unreadable bag must not stop the evaluation
            failed.append({Columns.CASE_ID: row.case_id, "error": case_error_text(raised, row.case_id)})
    predictions = pd.DataFrame({Columns.CASE_ID: [], Columns.PROBABILITY: [], Columns.LABEL: []})
    if bags:
        ids, dicts, ys = zip(*bags)
        dataset = BagDataset(list(dicts), labels=list(ys), case_ids=list(ids))
        out = predict(loaded.module, dataset, device=loaded.device, inferer=BagInferer(loaded.chunk_size))
        probability = apply_calibration(loaded.operating_point["calibration"], np.asarray(out["prob"], dtype=np.float64))
        predictions = pd.DataFrame({Columns.CASE_ID: out[Columns.CASE_ID], Columns.PROBABILITY: probability, Columns.LABEL: out[Columns.LABEL]})
    predictions = pd.concat([predictions, unlabelled], ignore_index=True) if len(unlabelled) else predictions
    return predictions, pd.DataFrame(failed, columns=[Columns.CASE_ID, "error"])


def _both_classes_before_inference(sources: Sequence[PathLike], known: Mapping[str, float]) -> None:
    """Refuse, before any study is read, CT inputs whose labels cannot give both classes (discovery reads headers
    only); one line."""
    labels = [float(c[Columns.LABEL]) for c in discover_cases(list(sources), labels=dict(known), progress=False)
              if c.get(Columns.LABEL) is not None and c[Columns.LABEL] == c[Columns.LABEL]]
    n_pos, n_neg = sum(v == 1 for v in labels), sum(v == 0 for v in labels)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"evaluation needs labelled cases of both classes; the inputs' labels (--labels, or a datalist's "
                         f"label column) give {n_pos} positive and {n_neg} negative: nothing was run")


def _ct_predictions(inputs: Sequence[PathLike], loaded: Any, out_dir: Path, labels: Mapping[str, float], threshold: float,
                    progress: bool, save_maps: bool, allow_input_mismatch: bool = False, config: Sequence[PathLike] = (),
                    overrides: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """``(predictions, failed)`` of CT inputs by :func:`run_inference` into ``out_dir/inference``."""
    options = InferenceOptions(threshold=threshold, save_maps=save_maps, save_overlays=save_maps)
    frame, _ = run_inference(list(inputs), loaded, out_dir / "inference", options, labels=dict(labels), progress=progress,
                             allow_input_mismatch=allow_input_mismatch, config=list(config), overrides=dict(overrides or {}))  # fmt: skip
    ok = frame[Columns.STATUS] != "failed"
    predictions = pd.DataFrame({Columns.CASE_ID: frame.loc[ok, Columns.CASE_ID], Columns.PROBABILITY: frame.loc[ok, Columns.PROBABILITY],
                                Columns.LABEL: frame.loc[ok, Columns.LABEL].astype(float)})  # fmt: skip
    return predictions.reset_index(drop=True), frame.loc[~ok, [Columns.CASE_ID, "error"]].reset_index(drop=True)


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
        save_maps: attention maps and overlays for CT inputs (in ``out_dir/inference``).
        allow_input_mismatch: evaluate CT inputs of another intensity than the model was trained on
            (:func:`ctmil.infer.run_checks.check_input_intensity`; refused by default).
        config, overrides: for CT inputs, more config files over the bundle's ``inference.json`` and overrides by
            MONAI id (as ``ctmil infer --config/--set``).

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
    loaded, known, out = load_model(model, device=device), read_labels(labels), Path(out_dir)
    datalist = _bag_datalist(sources)
    if datalist is None:
        _both_classes_before_inference(sources, known)
    out.mkdir(parents=True, exist_ok=True)
    if datalist is not None:
        predicted, failed = _bag_predictions(datalist, loaded, known)
    else:
        predicted, failed = _ct_predictions(sources, loaded, out, known, t, progress, save_maps, allow_input_mismatch,
                                            config, overrides)  # fmt: skip
    kept = _labelled(predicted, len(failed))
    y, p = kept[Columns.LABEL].to_numpy(), kept[Columns.PROBABILITY].to_numpy(dtype=np.float64)
    predictions = pd.DataFrame({Columns.CASE_ID: kept[Columns.CASE_ID], Columns.PROBABILITY: p, Columns.PREDICTION: (p >= t).astype(int), Columns.LABEL: y})
    metrics = held_out_metrics(y, p, t, source, n_resamples, seed, level)
    table = _table(metrics, level)
    paths = {name: out / name for name in ("metrics.csv", "predictions.csv", "evaluation.md", "roc.png", "reliability.png")}
    atomic_write_csv(metrics, paths["metrics.csv"])
    atomic_write_csv(predictions, paths["predictions.csv"])
    auc = metrics.set_index("metric").loc["auc", "estimate"]
    plot_roc(p, y, t, paths["roc.png"], title=f"ROC, {len(y)} held-out cases (AUC {auc:.3f})")
    plot_reliability(p, y, paths["reliability.png"], n_bins=ECE_BINS, title=f"Reliability, {len(y)} held-out cases")
    text = _markdown(table, predictions, failed, len(predicted) - len(kept), Path(model).name, f"{t:.4g} ({source})",
                     n_resamples, seed, level)  # fmt: skip
    atomic_write_text(text, paths["evaluation.md"])
    context = (f"Model {Path(model).name}; {len(y)} held-out cases ({int(y.sum())} positive); threshold {t:.4g} ({source}); "
               f"{n_resamples} stratified bootstrap resamples (seed {seed}).")  # fmt: skip
    paths["report.html"] = write_evaluate_html(out, metrics, predictions, failed, context, METRIC_LABELS)
    logger.info("%d cases evaluated (%d failed); report: %s", len(y), len(failed), paths["evaluation.md"])
    return {"metrics": metrics, "predictions": predictions, "failed": failed, "table": table, Columns.THRESHOLD: t,
            "threshold_source": source, "metrics_csv": paths["metrics.csv"], "predictions_csv": paths["predictions.csv"],
            "report": paths["evaluation.md"], "roc": paths["roc.png"], "reliability": paths["reliability.png"],
            "html": paths["report.html"]}  # fmt: skip
