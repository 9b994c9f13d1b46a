"""The cross-validation report: pooled and per-fold metrics, DeLong CIs, paired comparisons, Table IV, ROC curves.

How the numbers are made (``report.md`` says the same in words, with this run's numbers):

* **Pooled per repeat** (``repeat_metrics.csv``): for each setting and repeat, the out-of-fold predictions of all
  folds are pooled (every case predicted once, by the model that did not see it) and the five metrics are
  computed once on the pool, with the DeLong CI of the pooled AUC. ``report.csv`` has the mean and sample SD
  (``ddof=1``; ``nan`` with one repeat) over repeats, and the mean over repeats of the DeLong bounds.
* **Per fold** (``fold_metrics.csv``): the metrics of each test fold; ``report.csv`` has their mean and SD over all
  folds x repeats (``<metric>_fold_mean``, ``_fold_sd``) and the number of folds where each is defined
  (``_fold_n``; AUC is undefined for a fold of one class, which is skipped and counted).
* **Paired comparisons** (``ttests.csv``, one row per pair; ``auc_differences.csv``, one row per pair and repeat):
  see :mod:`ctmil.evaluate.report_comparisons`. ``t, p_value`` are now the *paired* t-test over repeats.
* ``report.md``: the tables (:mod:`ctmil.evaluate.report_tables`), including Table IV beside the paper.
* ``roc.png``: one ROC curve per (setting, repeat) of the pooled predictions.
* ``report.html``: the same tables and the ROC plot as one self-contained page (:mod:`ctmil.evaluate.report_html`).
* **Crop shortcut check** (``shortcut_check.csv``, given by ``ctmil cv``): whether the lung box's size relative to
  the body alone separates the classes (:mod:`ctmil.evaluate.shortcut`); a report written from predictions alone
  has no such section.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import pandas as pd

from ctmil.io.atomic import atomic_write_csv
from ctmil.report.plots import RocCurve, plot_roc as draw_roc
from ctmil.stats.metrics import METRIC_NAMES, binary_metrics, roc_auc, roc_curve
from ctmil.evaluate.report_comparisons import auc_delong, paired_comparisons
from ctmil.evaluate.report_html import write_cv_html
from ctmil.evaluate.report_tables import describe, render_markdown
from ctmil.stats.statistics import fold_summary
from ctmil.keys import Columns

__all__ = ["PREDICTION_COLUMNS", "RENAMED_COLUMNS", "fold_metrics", "read_predictions", "learnt_summary", "metric_table", "plot_roc", "repeat_metrics",
           "summary_table", "write_report"]  # fmt: skip

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = (Columns.CASE_ID, Columns.SETTING, Columns.REPEAT, Columns.FOLD, Columns.RAW_PROBABILITY, Columns.LABEL)
_DELONG = ("auc_delong_lower", "auc_delong_upper")
#: the columns of CV predictions written before the one vocabulary of every command's outputs (docs/cli.md)
RENAMED_COLUMNS = {"prob": Columns.RAW_PROBABILITY, "prob_calibrated": Columns.PROBABILITY}


def read_predictions(path: Union[str, "os.PathLike[str]"]) -> pd.DataFrame:
    """A CV ``predictions.csv`` (of a whole run or of one fold), columns in today's vocabulary whatever version wrote it."""
    return pd.read_csv(path, dtype={Columns.CASE_ID: str}).rename(columns=RENAMED_COLUMNS)


def _check(predictions: pd.DataFrame) -> None:
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions are missing columns {missing}.")
    if predictions.duplicated([Columns.SETTING, Columns.REPEAT, Columns.CASE_ID]).any():
        raise ValueError("predictions hold a case twice in one (setting, repeat).")


def metric_table(predictions: pd.DataFrame, by: List[str], threshold: float = 0.5, decision: Optional[str] = None,
                 score: str = Columns.RAW_PROBABILITY) -> pd.DataFrame:  # fmt: skip
    """The five metrics (and the case counts) of each group of ``predictions`` grouped by ``by``.

    With ``decision`` (a 0/1 column, e.g. ``prediction`` at each run's learnt threshold) the threshold-dependent
    metrics come from that column and ``threshold`` is unused; AUC ranks the ``score`` column.
    """
    _check(predictions)
    rows = []
    for key, part in predictions.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        if decision is None:
            m = binary_metrics(part[Columns.RAW_PROBABILITY].to_numpy(), part[Columns.LABEL].to_numpy(), threshold)
        else:
            m = {**binary_metrics(part[decision].to_numpy(dtype=float), part[Columns.LABEL].to_numpy(), 0.5),
                 "auc": roc_auc(part[score].to_numpy(), part[Columns.LABEL].to_numpy())}  # fmt: skip
        rows.append({**dict(zip(by, key)), "n_cases": len(part), "n_positive": int(part[Columns.LABEL].sum()), **m})
    return pd.DataFrame(rows, columns=[*by, "n_cases", "n_positive", *METRIC_NAMES])


def repeat_metrics(predictions: pd.DataFrame, threshold: float = 0.5, level: float = 0.95,
                   decision: Optional[str] = None, score: str = Columns.RAW_PROBABILITY) -> pd.DataFrame:  # fmt: skip
    """Metrics of the pooled out-of-fold predictions of each (setting, repeat), with the DeLong CI of the AUC
    (``auc_delong_lower, auc_delong_upper``; ``nan`` with fewer than 2 cases of a class)."""
    table = metric_table(predictions, [Columns.SETTING, Columns.REPEAT], threshold, decision, score)
    cis = [auc_delong(p[Columns.LABEL], p[score], level) for _, p in predictions.groupby([Columns.SETTING, Columns.REPEAT], sort=True)]
    table["auc_delong_lower"] = [ci.lower for ci in cis]
    table["auc_delong_upper"] = [ci.upper for ci in cis]
    return table


def fold_metrics(predictions: pd.DataFrame, threshold: float = 0.5, decision: Optional[str] = None,
                 score: str = Columns.RAW_PROBABILITY) -> pd.DataFrame:  # fmt: skip
    """Metrics of each (setting, repeat, fold) test fold."""
    return metric_table(predictions, [Columns.SETTING, Columns.REPEAT, Columns.FOLD], threshold, decision, score)


def summary_table(per_repeat: pd.DataFrame, per_fold: pd.DataFrame,
                  descriptions: Optional[Mapping[str, str]] = None) -> pd.DataFrame:  # fmt: skip
    """One row per setting: ``setting, description, n_repeats``, ``<metric>_mean, <metric>_sd`` over repeats
    (pooled per repeat), ``auc_delong_lower, auc_delong_upper`` (mean over repeats), ``n_folds`` (folds x repeats)
    and ``<metric>_fold_mean, <metric>_fold_sd, <metric>_fold_n`` over the folds where the metric is defined."""
    per_repeat = per_repeat.sort_values([Columns.SETTING, Columns.REPEAT])
    rep = fold_summary(per_repeat, [*METRIC_NAMES, *_DELONG], by=[Columns.SETTING]).set_index([Columns.SETTING, "metric"])
    fold = fold_summary(per_fold, METRIC_NAMES, by=[Columns.SETTING]).set_index([Columns.SETTING, "metric"])
    rows = []
    for setting in per_repeat[Columns.SETTING].unique():
        row: Dict[str, object] = {Columns.SETTING: setting, "description": describe(setting, descriptions),
                                  "n_repeats": int((per_repeat[Columns.SETTING] == setting).sum())}
        for m in METRIC_NAMES:
            row[f"{m}_mean"], row[f"{m}_sd"] = rep.loc[(setting, m), "mean"], rep.loc[(setting, m), "sd"]
        row.update({c: rep.loc[(setting, c), "mean"] for c in _DELONG})
        row["n_folds"] = int((per_fold[Columns.SETTING] == setting).sum())
        for m in METRIC_NAMES:
            stats = fold.loc[(setting, m)]
            row.update({f"{m}_fold_mean": stats["mean"], f"{m}_fold_sd": stats["sd"], f"{m}_fold_n": int(stats["n"])})
        rows.append(row)
    return pd.DataFrame(rows)


def learnt_summary(predictions: pd.DataFrame, level: float = 0.95,
                   descriptions: Optional[Mapping[str, str]] = None) -> Optional[pd.DataFrame]:  # fmt: skip
    """:func:`summary_table` at each run's learnt operating point (the ``prediction`` column), with the mean and
    SD over runs of the learnt ``threshold`` (``threshold_mean, threshold_sd``); ``None`` without those columns.

    AUC ranks ``probability`` (calibrated): each run's (increasing) map keeps the order within its fold and puts the
    folds' models on one scale, so the pooled AUC is not lowered by models that merely differ in scale.
    """
    if not {Columns.PREDICTION, Columns.THRESHOLD, Columns.PROBABILITY} <= set(predictions.columns) or predictions[Columns.PREDICTION].isna().any():
        return None
    summary = summary_table(repeat_metrics(predictions, level=level, decision=Columns.PREDICTION, score=Columns.PROBABILITY),
                            fold_metrics(predictions, decision=Columns.PREDICTION, score=Columns.PROBABILITY), descriptions)  # fmt: skip
    runs = predictions.drop_duplicates([Columns.SETTING, Columns.REPEAT, Columns.FOLD]).groupby(Columns.SETTING, sort=False)[Columns.THRESHOLD]
    summary["threshold_mean"] = summary[Columns.SETTING].map(runs.mean())
    summary["threshold_sd"] = summary[Columns.SETTING].map(runs.std(ddof=1))
    # a run that fitted nothing (its inner validation cases lacked a class) keeps probability == raw_probability
    fitted = predictions.groupby([Columns.SETTING, Columns.REPEAT, Columns.FOLD], sort=False).apply(
        lambda run: bool((run[Columns.PROBABILITY] != run[Columns.RAW_PROBABILITY]).any()), include_groups=False)
    per_setting = fitted.groupby(level=Columns.SETTING, sort=False)
    summary["runs_fitted"] = summary[Columns.SETTING].map(per_setting.sum()).astype(int)
    summary["runs"] = summary[Columns.SETTING].map(per_setting.size()).astype(int)
    return summary


def plot_roc(predictions: pd.DataFrame, path: Union[str, "os.PathLike[str]"],
             descriptions: Optional[Mapping[str, str]] = None) -> None:  # fmt: skip
    """ROC curves of the pooled out-of-fold predictions, one per (setting, repeat), coloured by setting
    (:func:`ctmil.report.plots.plot_roc`)."""
    from matplotlib import rcParams

    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    per_repeat = metric_table(predictions, [Columns.SETTING, Columns.REPEAT])
    curves = []
    for i, (setting, part) in enumerate(predictions.groupby(Columns.SETTING, sort=True)):
        aucs = per_repeat.loc[per_repeat[Columns.SETTING] == setting, "auc"]
        label = f"{setting} {describe(setting, descriptions)} (AUC {aucs.mean():.3f})"
        for j, (_, rep) in enumerate(part.groupby(Columns.REPEAT, sort=True)):
            if rep[Columns.LABEL].nunique() < 2:  # no curve when a repeat holds one class
                continue
            fpr, tpr, _ = roc_curve(rep[Columns.RAW_PROBABILITY].to_numpy(), rep[Columns.LABEL].to_numpy())
            curves.append(RocCurve(fpr, tpr, label if j == 0 else None, colours[i % len(colours)], 0.8 if j == 0 else 0.35))
    draw_roc(curves, path, title="Out-of-fold ROC, one curve per repeat")


def write_report(
    out_dir: Union[str, "os.PathLike[str]"],
    predictions: pd.DataFrame,
    threshold: float = 0.5,
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    descriptions: Optional[Mapping[str, str]] = None,
    shortcut: Optional[pd.DataFrame] = None,
) -> Dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``repeat_metrics.csv``, ``fold_metrics.csv``, ``ttests.csv`` (paired
    comparisons), ``auc_differences.csv`` and ``roc.png`` into ``out_dir``; returns their paths by name.

    ``level`` is the confidence of the DeLong and bootstrap intervals, ``n_resamples`` and ``seed`` drive the
    bootstrap; ``descriptions`` (setting -> text) overrides the built-in descriptions of the settings.
    ``shortcut`` (:func:`ctmil.evaluate.shortcut.shortcut_check` of the run's cases) adds the "Crop shortcut
    check" section and ``shortcut_check.csv``; without it the report has no such section.
    """
    _check(predictions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_repeat = repeat_metrics(predictions, threshold, level)
    per_fold = fold_metrics(predictions, threshold)
    summary = summary_table(per_repeat, per_fold, descriptions)
    tests, differences = paired_comparisons(predictions, n_resamples=n_resamples, level=level, seed=seed)
    names = ("report_csv", "report_md", "repeat_metrics", "fold_metrics", "ttests", "auc_differences", "roc")
    files = ("report.csv", "report.md", "repeat_metrics.csv", "fold_metrics.csv", "ttests.csv", "auc_differences.csv",
             "roc.png")  # fmt: skip
    paths = {name: out / file for name, file in zip(names, files)}
    frames = [("report_csv", summary), ("repeat_metrics", per_repeat), ("fold_metrics", per_fold), ("ttests", tests),
              ("auc_differences", differences)]  # fmt: skip
    learnt = learnt_summary(predictions, level, descriptions)
    if learnt is not None:
        paths["report_learnt"] = out / "report_learnt_threshold.csv"
        frames.append(("report_learnt", learnt))
    if shortcut is not None:
        paths["shortcut_check"] = out / "shortcut_check.csv"
        frames.append(("shortcut_check", shortcut))
    for name, frame in frames:
        atomic_write_csv(frame, paths[name])
    pools = predictions.drop_duplicates([Columns.REPEAT, Columns.CASE_ID])
    ctx = {"n_repeats": int(predictions[Columns.REPEAT].nunique()), "n_folds": int(predictions[Columns.FOLD].nunique()),
           "n_cases": int(pools[Columns.CASE_ID].nunique()), "n_positive": int(pools.drop_duplicates(Columns.CASE_ID)[Columns.LABEL].sum()),
           Columns.THRESHOLD: threshold, "level": level, "n_resamples": n_resamples}  # fmt: skip
    paths["report_md"].write_text(render_markdown(summary, tests, ctx, descriptions, learnt, shortcut))
    plot_roc(predictions, paths["roc"], descriptions)
    paths["report_html"] = write_cv_html(out, summary, tests, ctx, learnt, descriptions, shortcut)
    logger.info("report written to %s", out)
    return paths
