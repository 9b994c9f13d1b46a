"""Paired comparisons of the AUC of two cross-validated settings, and the DeLong CI of a pooled AUC.

For every pair of settings ``(a, b)`` (:func:`setting_pairs`: ``a`` before ``b`` in sorted order; the quantitative
baseline ``Q`` is always ``a``, against each deep setting), on the cases both settings predicted in the same
(repeat, fold), :func:`paired_comparisons` gives, for ``AUC_b - AUC_a``:

* the paired t-test over repeats of the per-repeat pooled AUCs (:func:`~ctmil.stats.statistics.paired_ttest`,
  ``scipy.stats.ttest_rel``; ``df = R - 1``);
* the Nadeau-Bengio corrected resampled t-test over folds x repeats of the per-fold AUC differences
  (:func:`~ctmil.stats.statistics.corrected_resampled_ttest`; folds of one class are skipped and counted;
  ``n_train, n_test`` are the mean training and test fold sizes, rounded);
* per repeat, the paired stratified bootstrap CI of the pooled AUC difference
  (:func:`~ctmil.stats.statistics.bootstrap_auc_difference`) and DeLong's test for two correlated ROC curves;
  the pair's row holds the mean over repeats of the difference and of the bounds.

Statistics need enough cases: a test or interval that cannot be computed is ``nan``, never an error.
"""

from __future__ import annotations

import itertools
import logging
from typing import List, Tuple

import numpy as np
import pandas as pd

from ctmil.stats.folds import run_seed
from ctmil.stats.metrics import roc_auc
from ctmil.stats.quantitative import QUANTITATIVE
from ctmil.stats.statistics import (
    AucInterval, bootstrap_auc_difference, corrected_resampled_ttest, delong_auc_ci, delong_test, paired_ttest,
)  # fmt: skip
from ctmil.keys import Columns

__all__ = ["COMPARISON_COLUMNS", "DIFFERENCE_COLUMNS", "auc_delong", "paired_comparisons", "paired_frame", "setting_pairs"]

logger = logging.getLogger(__name__)

COMPARISON_COLUMNS = (
    "setting_a", "setting_b", "metric", "mean_a", "mean_b", "difference", "t", "df", "p_value", "n_repeats",
    "nb_t", "nb_df", "nb_p_value", "n_splits", "n_splits_skipped", "n_train", "n_test",
    "boot_difference", "boot_lower", "boot_upper", "boot_n_repeats", "level",
)  # fmt: skip
DIFFERENCE_COLUMNS = (
    "setting_a", "setting_b", Columns.REPEAT, "n_cases", "auc_a", "auc_b", "difference", "boot_lower", "boot_upper",
    "boot_n_valid", "delong_z", "delong_p_value",
)  # fmt: skip
_NAN = float("nan")


def _both_classes(labels: np.ndarray, at_least: int = 1) -> bool:
    return int((labels == 1).sum()) >= at_least and int((labels == 0).sum()) >= at_least


def auc_delong(labels, probs, level: float = 0.95) -> AucInterval:
    """:func:`~ctmil.stats.statistics.delong_auc_ci`, or ``nan`` CI bounds when a class has fewer than 2 cases."""
    y = np.asarray(labels, dtype=np.float64)
    if not _both_classes(y, 2):
        return AucInterval(roc_auc(probs, y), _NAN, _NAN, _NAN, float(level))
    return delong_auc_ci(y, probs, level)


def paired_frame(predictions: pd.DataFrame, a: object, b: object) -> pd.DataFrame:
    """``repeat, fold, case_id, label, prob_a, prob_b`` of the cases both settings predicted in one (repeat, fold)."""
    keys = [Columns.REPEAT, Columns.FOLD, Columns.CASE_ID, Columns.LABEL]
    left = predictions.loc[predictions[Columns.SETTING] == a, [*keys, Columns.RAW_PROBABILITY]]
    right = predictions.loc[predictions[Columns.SETTING] == b, [*keys, Columns.RAW_PROBABILITY]]
    merged = left.merge(right, on=keys, suffixes=("_a", "_b")).sort_values([Columns.REPEAT, Columns.FOLD, Columns.CASE_ID])
    merged = merged.rename(columns={"raw_probability_a": "prob_a", "raw_probability_b": "prob_b"})
    if len(merged) < max(len(left), len(right)):
        logger.warning("settings %s and %s share %d of %d / %d predictions; the others are left out of their comparison.",
                       a, b, len(merged), len(left), len(right))
    return merged.reset_index(drop=True)


def _per_repeat(pair: pd.DataFrame, a, b, n_resamples: int, level: float, seed: int) -> pd.DataFrame:
    rows = []
    for r, part in pair.groupby(Columns.REPEAT, sort=True):
        y, pa, pb = part[Columns.LABEL].to_numpy(float), part["prob_a"].to_numpy(float), part["prob_b"].to_numpy(float)
        auc_a, auc_b = roc_auc(pa, y), roc_auc(pb, y)
        row = {"setting_a": a, "setting_b": b, Columns.REPEAT: r, "n_cases": len(part), "auc_a": auc_a, "auc_b": auc_b,
               "difference": auc_b - auc_a, "boot_lower": _NAN, "boot_upper": _NAN, "boot_n_valid": 0,
               "delong_z": _NAN, "delong_p_value": _NAN}
        if _both_classes(y):
            ci = bootstrap_auc_difference(y, pb, pa, n_resamples=n_resamples, level=level, seed=run_seed(seed, int(r)))
            row.update(boot_lower=ci.lower, boot_upper=ci.upper, boot_n_valid=ci.n_valid)
        if _both_classes(y, 2):
            test = delong_test(y, pb, pa)
            row.update(delong_z=test.statistic, delong_p_value=test.pvalue)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def _per_fold(pair: pd.DataFrame) -> pd.DataFrame:
    """``repeat, fold, n_test, n_train, difference`` (``nan`` for a fold of one class) of each paired test fold."""
    totals = pair.groupby(Columns.REPEAT).size()
    rows = []
    for (r, f), part in pair.groupby([Columns.REPEAT, Columns.FOLD], sort=True):
        y = part[Columns.LABEL].to_numpy(float)
        diff = roc_auc(part["prob_b"], y) - roc_auc(part["prob_a"], y)
        rows.append({Columns.REPEAT: r, Columns.FOLD: f, "n_test": len(part), "n_train": int(totals[r]) - len(part), "difference": diff})
    return pd.DataFrame(rows, columns=[Columns.REPEAT, Columns.FOLD, "n_test", "n_train", "difference"])


def _compare(predictions: pd.DataFrame, a, b, n_resamples: int, level: float, seed: int) -> Tuple[dict, pd.DataFrame]:
    pair = paired_frame(predictions, a, b)
    reps = _per_repeat(pair, a, b, n_resamples, level, seed)
    folds = _per_fold(pair)
    row = {"setting_a": a, "setting_b": b, "metric": "auc", "level": float(level)}
    valid = reps.dropna(subset=["auc_a", "auc_b"])
    row.update(mean_a=float(valid["auc_a"].mean()), mean_b=float(valid["auc_b"].mean()),
               difference=float(valid["difference"].mean()), n_repeats=len(valid), t=_NAN, df=_NAN, p_value=_NAN)
    if len(valid) >= 2:
        res = paired_ttest(valid["auc_b"], valid["auc_a"])
        row.update(t=res.statistic, df=res.df, p_value=res.pvalue)
    used = folds.dropna(subset=["difference"])
    row.update(n_splits=len(used), n_splits_skipped=len(folds) - len(used), nb_t=_NAN, nb_df=_NAN, nb_p_value=_NAN,
               n_train=_NAN, n_test=_NAN)
    if len(used):
        row.update(n_train=float(round(used["n_train"].mean())), n_test=float(round(used["n_test"].mean())))
    if len(used) >= 2 and row["n_train"] > 0:
        res = corrected_resampled_ttest(used["difference"], n_train=int(row["n_train"]), n_test=int(row["n_test"]))
        row.update(nb_t=res.statistic, nb_df=res.df, nb_p_value=res.pvalue)
    boot = reps.dropna(subset=["boot_lower", "boot_upper"])
    row.update(boot_difference=float(boot["difference"].mean()) if len(boot) else _NAN,
               boot_lower=float(boot["boot_lower"].mean()) if len(boot) else _NAN,
               boot_upper=float(boot["boot_upper"].mean()) if len(boot) else _NAN, boot_n_repeats=len(boot))
    return row, reps


def setting_pairs(settings) -> List[Tuple[str, str]]:
    """The compared ``(a, b)`` pairs: every pair of the other settings (sorted), then ``(Q, s)`` for each other ``s``."""
    names = sorted(set(settings))
    others = [s for s in names if s != QUANTITATIVE]
    return [*itertools.combinations(others, 2), *((QUANTITATIVE, s) for s in others if QUANTITATIVE in names)]


def paired_comparisons(predictions: pd.DataFrame, n_resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> Tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """The paired comparisons of AUC of every pair of settings in ``predictions`` (:func:`setting_pairs`).

    Returns ``(comparisons, differences)``: one row per pair (:data:`COMPARISON_COLUMNS`; ``t, df, p_value`` are
    the paired t-test over repeats, ``nb_*`` the corrected resampled t-test over folds x repeats, ``boot_*`` the
    mean over repeats of the bootstrap difference and bounds) and one row per (pair, repeat)
    (:data:`DIFFERENCE_COLUMNS`). The bootstrap of repeat ``r`` is seeded with ``run_seed(seed, r)``.
    """
    rows, diffs = [], []
    for a, b in setting_pairs(predictions[Columns.SETTING].unique()):
        row, reps = _compare(predictions, a, b, n_resamples, level, seed)
        rows.append(row)
        diffs.append(reps)
    differences = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame(columns=list(DIFFERENCE_COLUMNS))
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS)), differences
