"""The crop shortcut check: does the lung box's size relative to the body alone tell severe from non-severe?

Preprocessing crops each slice to the box of the lungs and records, per bag, ``meta["crop"]``:
``box_height_share`` and ``box_width_share`` (the box's height / width as a share of the body's, mean over the
kept slices). If such a measure separates the classes on its own, a model can learn box geometry (how the crop
was made) instead of the lungs. :func:`shortcut_check` measures that, one row per measure:

* ``auc``: the AUC of the measure as it is (a higher value scores severe), with its DeLong CI
  (:func:`~ctmil.stats.statistics.delong_auc_ci`; ``nan`` bounds with fewer than 2 cases of a class);
  ``separation_auc = max(auc, 1 - auc)`` and ``direction`` (``higher`` / ``lower``: the measure in severe
  cases) say how well it separates either way;
* ``spearman_rho, spearman_p``: Spearman's correlation of the measure with the 0/1 label;
* ``warn``: the CI of the AUC excludes 0.5 (the measure alone tells the classes apart).

A measure that no case records is left out (bags made before the key was added); cases without it are counted
in ``n_missing``. numpy / pandas / scipy / scikit-learn only (and the measure names of :mod:`ctmil.data.qc`): :func:`read_crop_measures` takes the bag reader.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, List, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from ctmil.data.qc import CROP_MEASURES
from ctmil.stats.statistics import delong_auc_ci
from ctmil.keys import Columns

__all__ = ["CROP_KEYS", "CROP_MEASURES", "SHORTCUT_COLUMNS", "logged_shortcut_check", "measure_name", "read_crop_measures",
           "shortcut_check", "shortcut_warnings"]  # fmt: skip

logger = logging.getLogger(__name__)

#: where preprocessing records the measures (:data:`ctmil.data.qc.CROP_MEASURES`) in a bag:
#: ``bag[CROP_KEYS[0]][CROP_KEYS[1]][measure]``
CROP_KEYS = ("meta", "crop")
SHORTCUT_COLUMNS = ("measure", "n_cases", "n_severe", "n_missing", "auc", "auc_lower", "auc_upper", "level",
                    "separation_auc", "direction", "spearman_rho", "spearman_p", "warn")  # fmt: skip
_NAMES = {"box_height_share": "the crop box's height share", "box_width_share": "the crop box's width share"}
_NAN = float("nan")


def measure_name(measure: str) -> str:
    """What ``measure`` is, in words (``box_height_share`` -> ``the crop box's height share``)."""
    return _NAMES.get(measure, str(measure).replace("_", " "))


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _NAN
    return number if math.isfinite(number) else _NAN


def read_crop_measures(cases: pd.DataFrame, load: Callable[[Any], Mapping[str, Any]], bag_column: str = "bag",
                       measures: Sequence[str] = CROP_MEASURES) -> pd.DataFrame:  # fmt: skip
    """``case_id, label`` and one column per measure, read from each case's bag (``nan`` where it is absent).

    Args:
        cases: one row per case with ``case_id``, ``label`` and ``bag_column`` (the table of
            :func:`ctmil.bundle.bag_table`: its ``bag`` column holds the bag paths).
        load: reads one bag (e.g. :func:`ctmil.data.bags.load_bag`).
    """
    rows = []
    for case_id, label, source in zip(cases[Columns.CASE_ID], cases[Columns.LABEL], cases[bag_column]):
        crop = load(source)
        for key in CROP_KEYS:
            crop = crop.get(key) if isinstance(crop, Mapping) else None
        crop = crop if isinstance(crop, Mapping) else {}
        rows.append({Columns.CASE_ID: str(case_id), Columns.LABEL: int(label), **{m: _number(crop.get(m)) for m in measures}})
    return pd.DataFrame(rows, columns=[Columns.CASE_ID, Columns.LABEL, *measures])


def _spearman(values: np.ndarray, labels: np.ndarray) -> tuple:
    if np.ptp(values) == 0 or np.ptp(labels) == 0:
        return _NAN, _NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(values, labels)
    return float(result.statistic), float(result.pvalue)


def _measure_row(measure: str, values: np.ndarray, labels: np.ndarray, n_missing: int, level: float) -> dict:
    n_severe = int(labels.sum())
    n_other = labels.size - n_severe
    auc, lower, upper = _NAN, _NAN, _NAN
    if n_severe >= 2 and n_other >= 2:
        ci = delong_auc_ci(labels, values, level)
        auc, lower, upper = ci.auc, ci.lower, ci.upper
    elif n_severe and n_other:
        auc = float(roc_auc_score(labels, values))
    rho, p = _spearman(values, labels)
    return {"measure": measure, "n_cases": int(labels.size), "n_severe": n_severe, "n_missing": n_missing,
            "auc": auc, "auc_lower": lower, "auc_upper": upper, "level": float(level),
            "separation_auc": max(auc, 1.0 - auc) if math.isfinite(auc) else _NAN,
            "direction": "" if not math.isfinite(auc) else ("higher" if auc >= 0.5 else "lower"),
            "spearman_rho": rho, "spearman_p": p, "warn": bool(lower > 0.5 or upper < 0.5)}  # fmt: skip


def shortcut_check(cases: pd.DataFrame, measures: Sequence[str] = CROP_MEASURES, level: float = 0.95) -> pd.DataFrame:
    """One row (:data:`SHORTCUT_COLUMNS`) per measure of ``cases`` that at least one case records.

    Args:
        cases: one row per case: ``case_id``, ``label`` (0/1, 1 = severe) and the ``measures`` columns
            (``nan`` or a missing column: not recorded).
        level: the confidence of the DeLong CI.

    Raises:
        ValueError: a label other than 0/1, or a case id twice.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    labels = pd.to_numeric(cases[Columns.LABEL], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 (non-severe) or 1 (severe).")
    if cases[Columns.CASE_ID].duplicated().any():
        raise ValueError("the shortcut check needs one row per case; some case ids appear twice.")
    rows = []
    for measure in measures:
        if measure not in cases.columns:
            continue
        values = pd.to_numeric(cases[measure], errors="coerce").to_numpy(dtype=np.float64)
        known = np.isfinite(values)
        if known.any():
            rows.append(_measure_row(measure, values[known], labels[known], int((~known).sum()), level))
    return pd.DataFrame(rows, columns=list(SHORTCUT_COLUMNS))


def shortcut_warnings(check: pd.DataFrame) -> List[str]:
    """One warning sentence per measure of ``check`` with ``warn`` set (none when nothing separates the classes)."""
    lines = []
    for row in check[check["warn"].astype(bool)].to_dict("records"):
        bigger = "larger" if row["direction"] == "higher" else "smaller"
        lines.append(
            f"Warning: {measure_name(row['measure'])} alone separates severe from non-severe "
            f"(AUC {row['auc']:.2f} [{row['auc_lower']:.2f}, {row['auc_upper']:.2f}], {bigger} in severe cases); "
            "the model may learn box geometry instead of the lungs."
        )
    return lines


def logged_shortcut_check(cases: pd.DataFrame, load: Callable[[Any], Mapping[str, Any]]) -> pd.DataFrame:
    """:func:`shortcut_check` of the measures :func:`read_crop_measures` reads with ``load``, its warnings logged (and
    one line when no bag records the measures), as ``ctmil cv`` runs it before training."""
    check = shortcut_check(read_crop_measures(cases, load))
    if not len(check):
        logger.info("crop shortcut check skipped: no bag records meta['crop'] (bags made before it was recorded).")
    for warning in shortcut_warnings(check):
        logger.warning(warning)
    return check
