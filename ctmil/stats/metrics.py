"""Bag-level classification metrics (paper Eq. 7-10 and AUC) without scikit-learn.

* :func:`roc_auc` is the Mann-Whitney U statistic divided by ``n_pos * n_neg``, with tied scores given
  average ranks (a tie between a positive and a negative counts 1/2), i.e. the area under the ROC curve.
* :func:`binary_metrics` thresholds probabilities (``prob >= threshold`` is positive) and returns
  accuracy, sensitivity, specificity, F1 and AUC. A metric whose denominator is zero is ``nan``.

:class:`ctmil.train.metrics.BagMetrics` wraps :func:`binary_metrics` as an Ignite ``EpochMetric`` for the engines.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["METRIC_NAMES", "binary_metrics", "confusion_counts", "roc_auc", "roc_curve"]

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _as_arrays(scores, labels) -> Tuple[np.ndarray, np.ndarray]:
    s = _numpy(scores)
    y = _numpy(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.shape[0]} and {y.shape[0]}.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1.")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite.")
    return s, y


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula; ``nan`` when a class is absent.

    ``AUC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with average ranks for ties.
    """
    s, y = _as_arrays(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties, 1-based
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores, labels) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, one per distinct score (descending) plus the origin.

    A point at threshold ``t`` calls ``score >= t`` positive; the first point is ``(0, 0)`` at ``t = +inf``.
    """
    s, y = _as_arrays(scores, labels)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    tpr = np.r_[0.0, tp / n_pos] if n_pos > 0 else np.full(last.size + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg > 0 else np.full(last.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def confusion_counts(probs, labels, threshold: float = 0.5) -> Dict[str, int]:
    """``tp, fp, tn, fn`` for ``prob >= threshold`` called positive."""
    p, y = _as_arrays(probs, labels)
    pred = p >= threshold
    pos = y == 1
    return {
        "tp": int((pred & pos).sum()),
        "fp": int((pred & ~pos).sum()),
        "tn": int((~pred & ~pos).sum()),
        "fn": int((~pred & pos).sum()),
    }


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def binary_metrics(probs, labels, threshold: float = 0.5) -> Dict[str, float]:
    """Accuracy, sensitivity (TPR), specificity (TNR), F1 (``TP / (TP + (FP + FN) / 2)``) and AUC."""
    c = confusion_counts(probs, labels, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(tp, tp + 0.5 * (fp + fn)),
        "auc": roc_auc(probs, labels),
    }
