"""Uncertainty of bag-level metrics and paired comparisons of two settings.

* :func:`bootstrap_ci`: percentile bootstrap CIs of accuracy, sensitivity, specificity, F1, AUC and PR-AUC
  (stratified by default: positives and negatives are resampled separately, so class counts are kept).
  All resamples are evaluated at once from per-resample counts of each distinct score; AUC and PR-AUC equal
  scikit-learn's ``roc_auc_score`` and ``average_precision_score`` (tested).
* :func:`delong_auc_ci`, :func:`delong_test`: DeLong (1988) variance of the AUC and the test for two correlated
  ROC curves, by the midrank algorithm of Sun & Xu (2014).
* :func:`paired_ttest` (over repeats), :func:`corrected_resampled_ttest` (Nadeau & Bengio 2003, over
  folds x repeats) and :func:`bootstrap_auc_difference` (paired bootstrap CI of AUC_a - AUC_b).
* :func:`fold_summary`: mean and SD over folds for the report.

Labels are 0/1; ``probs`` are scores where a higher value means positive (``prob >= threshold`` is positive).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "BOOTSTRAP_METRICS", "AucInterval", "Comparison", "DifferenceInterval", "as_binary_arrays",
    "bootstrap_auc_difference", "bootstrap_ci", "bootstrap_samples", "corrected_resampled_ttest",
    "delong_auc_ci", "delong_test", "fold_summary", "paired_ttest",
]  # fmt: skip

BOOTSTRAP_METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc", "pr_auc")
_CHUNK = 2_000_000  # resampled cases evaluated per chunk (bounds memory for large sets)


class AucInterval(NamedTuple):
    auc: float
    variance: float
    lower: float
    upper: float
    level: float


class Comparison(NamedTuple):
    """A test of ``a - b``: statistic (t or z), two-sided p-value, degrees of freedom (``inf`` for z)."""

    statistic: float
    pvalue: float
    df: float
    difference: float


class DifferenceInterval(NamedTuple):
    difference: float
    lower: float
    upper: float
    level: float
    n_valid: int


def as_binary_arrays(labels, probs, both_classes: bool = False, unit_interval: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """``(labels, probs)`` as float64 vectors ``(N,)``, validated (0/1 labels, finite scores, equal length)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels and probs must be non-empty 1-D arrays of one length, got {y.shape} and {p.shape}.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1.")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite.")
    if unit_interval and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probs must lie in [0, 1].")
    if both_classes and (y.min() == y.max()):
        raise ValueError("labels must contain both classes.")
    return y, p


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")


def _resample_indices(y: np.ndarray, n_resamples: int, stratified: bool, rng: np.random.Generator) -> np.ndarray:
    """Case indices ``(n_resamples, N)``; stratified draws the positives' and the negatives' columns apart."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}.")
    if not stratified:
        return rng.integers(0, y.size, size=(n_resamples, y.size))
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return np.concatenate(
        [pos[rng.integers(0, pos.size, (n_resamples, pos.size))], neg[rng.integers(0, neg.size, (n_resamples, neg.size))]],
        axis=1,
    )


def _counts(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores ``(U,)`` ascending, and per resample the positives and negatives at each ``(B, U)``."""
    values, group = np.unique(p, return_inverse=True)
    b, u = idx.shape[0], values.size
    flat = (np.arange(b)[:, None] * u + group[idx]).ravel()
    pos = np.bincount(flat, weights=y[idx].ravel(), minlength=b * u).reshape(b, u)
    total = np.bincount(flat, minlength=b * u).reshape(b, u)
    return values, pos, total - pos


def _auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row (a tie counts 1/2); ``nan`` where a class is absent."""
    neg_below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def _metrics_from_counts(values: np.ndarray, pos: np.ndarray, neg: np.ndarray, threshold: float) -> Dict[str, np.ndarray]:
    m, n = pos.sum(1), neg.sum(1)
    called = values >= threshold
    tp, fp = pos[:, called].sum(1), neg[:, called].sum(1)
    fn, tn = m - tp, n - fp
    pos_desc = pos[:, ::-1]  # average precision walks the thresholds from the highest score down
    tp_cum, fp_cum = np.cumsum(pos_desc, 1), np.cumsum(neg[:, ::-1], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp_cum > 0, tp_cum / np.maximum(tp_cum + fp_cum, 1), 0.0)
        out = {
            "accuracy": (tp + tn) / (m + n),
            "sensitivity": tp / m,
            "specificity": tn / n,
            "f1": tp / (tp + 0.5 * (fp + fn)),
            "auc": _auc_from_counts(pos, neg),
            "pr_auc": (pos_desc * precision).sum(1) / m,
        }
    degenerate = (m == 0) | (n == 0)  # a resample of one class: every metric is undefined, not just AUC
    return {k: np.where(degenerate, np.nan, v) for k, v in out.items()}


def _chunks(n_resamples: int, n_cases: int):
    step = max(1, _CHUNK // max(n_cases, 1))
    return [(s, min(s + step, n_resamples)) for s in range(0, n_resamples, step)]


def bootstrap_samples(labels, probs, threshold: float = 0.5, n_resamples: int = 2000, seed: int = 0,
                      stratified: bool = True) -> pd.DataFrame:  # fmt: skip
    """The metrics of each bootstrap resample: ``(n_resamples, len(BOOTSTRAP_METRICS))`` frame.

    Resample indices come from ``np.random.default_rng(seed)``, so equal arguments give equal frames.
    Without ``stratified`` a resample may hold one class only; its row is all ``nan`` (stratified never has one).
    """
    y, p = as_binary_arrays(labels, probs, both_classes=True)
    idx = _resample_indices(y, n_resamples, stratified, np.random.default_rng(seed))
    parts = [_metrics_from_counts(*_counts(y, p, idx[s:e]), threshold) for s, e in _chunks(n_resamples, y.size)]
    return pd.DataFrame({k: np.concatenate([part[k] for part in parts]) for k in BOOTSTRAP_METRICS})


def bootstrap_ci(labels, probs, threshold: float = 0.5, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                 stratified: bool = True) -> pd.DataFrame:  # fmt: skip
    """Point estimate and percentile bootstrap CI of each metric at ``threshold``.

    ``labels, probs: (N,)``. Returns a frame indexed by metric (``BOOTSTRAP_METRICS`` order) with columns
    ``estimate`` (on all cases), ``lower``, ``upper`` (the ``(1 -/+ level) / 2`` quantiles of the resamples)
    and ``n_valid`` (resamples holding both classes; the one-class ones are left out of the quantiles).
    """
    _check_level(level)
    y, p = as_binary_arrays(labels, probs, both_classes=True)
    point = _metrics_from_counts(*_counts(y, p, np.arange(y.size)[None, :]), threshold)
    samples = bootstrap_samples(y, p, threshold, n_resamples, seed, stratified)
    valid = samples.dropna(how="all")
    if valid.empty:
        raise ValueError("no bootstrap resample holds both classes; use stratified=True.")
    q = np.quantile(valid.to_numpy(), [(1 - level) / 2, (1 + level) / 2], axis=0)
    frame = pd.DataFrame(
        {"estimate": [float(point[k][0]) for k in BOOTSTRAP_METRICS], "lower": q[0], "upper": q[1], "n_valid": len(valid)},
        index=pd.Index(BOOTSTRAP_METRICS, name="metric"),
    )
    return frame


def bootstrap_auc_difference(labels, probs_a, probs_b, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                             stratified: bool = True) -> DifferenceInterval:  # fmt: skip
    """Paired bootstrap CI of ``AUC_a - AUC_b``: both score vectors ``(N,)`` use the same resampled cases."""
    _check_level(level)
    y, a = as_binary_arrays(labels, probs_a, both_classes=True)
    _, b = as_binary_arrays(labels, probs_b)
    idx = _resample_indices(y, n_resamples, stratified, np.random.default_rng(seed))
    diffs = []
    for s, e in _chunks(n_resamples, y.size):
        auc_a = _auc_from_counts(*_counts(y, a, idx[s:e])[1:])
        auc_b = _auc_from_counts(*_counts(y, b, idx[s:e])[1:])
        diffs.append(auc_a - auc_b)
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("no bootstrap resample holds both classes; use stratified=True.")
    full = np.arange(y.size)[None, :]
    point = _auc_from_counts(*_counts(y, a, full)[1:])[0] - _auc_from_counts(*_counts(y, b, full)[1:])[0]
    lower, upper = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return DifferenceInterval(float(point), float(lower), float(upper), float(level), int(d.size))


def _delong(y: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and their DeLong covariance ``(k, k)`` for score rows ``(k, N)`` (Sun & Xu midranks)."""
    m, n = int(y.sum()), int(y.size - y.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 cases of each class, got {m} positive and {n} negative.")
    x, z = scores[:, y == 1], scores[:, y == 0]
    tz = stats.rankdata(np.concatenate([x, z], axis=1), axis=1)  # midranks over all cases
    v10 = (tz[:, :m] - stats.rankdata(x, axis=1)) / n  # per positive: fraction of negatives below (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - stats.rankdata(z, axis=1)) / m  # per negative: fraction of positives above
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), cov


def delong_auc_ci(labels, probs, level: float = 0.95) -> AucInterval:
    """AUC with DeLong's variance and the normal CI ``auc -/+ z sqrt(var)``, clipped to [0, 1].

    ``labels, probs: (N,)`` with at least two cases of each class. A perfect classifier has variance 0, CI [1, 1].
    """
    _check_level(level)
    y, p = as_binary_arrays(labels, probs, both_classes=True)
    auc, cov = _delong(y, p[None, :])
    var = float(max(cov[0, 0], 0.0))
    half = stats.norm.ppf((1 + level) / 2) * np.sqrt(var)
    return AucInterval(float(auc[0]), var, float(max(auc[0] - half, 0.0)), float(min(auc[0] + half, 1.0)), float(level))


def _z_or_t(mean: float, se: float, df: float) -> Tuple[float, float]:
    """Statistic and two-sided p; a zero standard error gives (0, 1) for a zero mean, else (+-inf, 0)."""
    if se <= 0.0:
        return (0.0, 1.0) if mean == 0.0 else (float(np.copysign(np.inf, mean)), 0.0)
    t = mean / se
    dist = stats.norm if np.isinf(df) else stats.t(df)
    return float(t), float(2.0 * dist.sf(abs(t)))


def delong_test(labels, probs_a, probs_b) -> Comparison:
    """DeLong's z test of ``AUC_a = AUC_b`` for two score vectors ``(N,)`` on the same cases (correlated ROCs)."""
    y, a = as_binary_arrays(labels, probs_a, both_classes=True)
    _, b = as_binary_arrays(labels, probs_b)
    auc, cov = _delong(y, np.stack([a, b]))
    diff = float(auc[0] - auc[1])
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    z, pvalue = _z_or_t(diff, float(np.sqrt(max(var, 0.0))), np.inf)
    return Comparison(z, pvalue, float("inf"), diff)


def _paired_vector(values, name: str, min_size: int = 2) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < min_size or not np.isfinite(v).all():
        raise ValueError(f"{name} must be a finite 1-D array of at least {min_size} values, got shape {v.shape}.")
    return v


def paired_ttest(a, b) -> Comparison:
    """Paired t-test of ``a - b`` over matched values ``(R,)``, e.g. one metric per repeat (``scipy.stats.ttest_rel``).

    Equal differences (zero variance) give ``t = 0, p = 1`` when they are 0 and ``t = +-inf, p = 0`` otherwise.
    """
    a, b = _paired_vector(a, "a"), _paired_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one length, got {a.size} and {b.size}.")
    d = a - b
    if np.ptp(d) == 0.0:
        return Comparison(*_z_or_t(float(d[0]), 0.0, d.size - 1), float(d.size - 1), float(d[0]))
    res = stats.ttest_rel(a, b)
    return Comparison(float(res.statistic), float(res.pvalue), float(d.size - 1), float(d.mean()))


def corrected_resampled_ttest(diffs, n_train: int, n_test: int) -> Comparison:
    """Nadeau & Bengio (2003) corrected resampled t-test of per-split differences ``(J,)`` (J = folds x repeats).

    ``t = mean / sqrt((1 / J + n_test / n_train) var)`` with the sample variance (ddof 1) and ``J - 1`` df;
    ``n_train, n_test`` are the cases per training and test split. The correction widens the plain one-sample
    test, whose variance ``var / J`` ignores that the splits overlap.
    """
    d = _paired_vector(diffs, "diffs")
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}.")
    j = d.size
    se = float(np.sqrt((1.0 / j + n_test / n_train) * d.var(ddof=1)))
    return Comparison(*_z_or_t(float(d.mean()), se, j - 1), float(j - 1), float(d.mean()))


def fold_summary(per_fold: pd.DataFrame, metric_cols: Sequence[str], by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and SD (ddof 1) over the rows (folds) of ``per_fold``, per metric and per group of ``by`` columns.

    Returns one row per (group, metric) with columns ``*by, metric, mean, sd, n`` (``n`` non-missing folds;
    ``sd`` is ``nan`` for one fold). Groups keep their first-seen order, metrics the order of ``metric_cols``.
    """
    missing = [c for c in [*metric_cols, *by] if c not in per_fold.columns]
    if missing or not len(metric_cols):
        raise ValueError(f"metric_cols must be non-empty columns of per_fold; missing {missing}.")
    groups = per_fold.groupby(list(by), sort=False) if len(by) else [((), per_fold)]
    rows = []
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metric_cols:
            values = pd.to_numeric(frame[metric], errors="raise").dropna()
            sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            rows.append({**dict(zip(by, key)), "metric": metric, "mean": float(values.mean()), "sd": sd, "n": len(values)})
    return pd.DataFrame(rows, columns=[*by, "metric", "mean", "sd", "n"])
