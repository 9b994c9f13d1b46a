"""Calibration maps, operating thresholds, calibration metrics and the reliability diagram.

* :func:`fit_calibration` learns a map from raw probabilities to calibrated ones (Platt or isotonic) and returns
  it as a plain JSON-serialisable dict; :func:`apply_calibration` applies such a dict (the same outputs after a
  JSON round trip). Fit it on training data only (inner validation or out-of-fold predictions).
* :func:`choose_threshold` picks the operating point (Youden's J, a target sensitivity, or a fixed value).
* :func:`brier_score`, :func:`expected_calibration_error`, :func:`reliability_curve` share one binning, that of
  ``sklearn.calibration.calibration_curve``; :func:`plot_reliability` writes the diagram with a histogram as PNG.

A probability ``p`` is called positive when ``p >= threshold``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from ctmil.stats.statistics import as_binary_arrays

__all__ = [
    "CALIBRATION_METHODS", "THRESHOLD_RULES", "apply_calibration", "brier_score", "choose_threshold",
    "expected_calibration_error", "fit_calibration", "plot_reliability", "reliability_curve",
]  # fmt: skip

CALIBRATION_METHODS = ("platt", "isotonic", "none")
THRESHOLD_RULES = ("youden", "prevalence", "sensitivity", "fixed")
BIN_STRATEGIES = ("uniform", "quantile")
LOGIT_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit of the Platt map


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def _fit_platt(f: np.ndarray, y: np.ndarray) -> Dict:
    """Logistic regression on ``f`` towards Platt's smoothed targets ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``.

    Soft targets are fitted exactly as two weighted copies of each case; they keep the slope finite when
    the training scores separate the classes (an unpenalised fit on hard labels would diverge).
    """
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
        np.r_[f, f][:, None], np.r_[np.ones(f.size), np.zeros(f.size)], sample_weight=np.r_[target, 1.0 - target]
    )
    return {"method": "platt", "coef": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}


def fit_calibration(probs, labels, method: str = "platt") -> Dict:
    """A calibration map fitted on ``probs, labels: (N,)``, as a dict of plain floats and lists.

    * ``"platt"``: Platt scaling, an unpenalised logistic regression on ``logit(p)`` with Platt's smoothed
      targets (as ``sklearn.calibration``'s sigmoid method); ``{"method", "coef", "intercept"}``, applied as
      ``sigmoid(coef * logit(p) + intercept)``.
    * ``"isotonic"``: ``IsotonicRegression`` (increasing, clipped to [0, 1] and outside the fitted range);
      ``{"method", "x", "y"}`` are its ``X_thresholds_`` and ``y_thresholds_``, applied with ``np.interp``.
    * ``"none"``: ``{"method": "none"}``, the identity.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}.")
    y, p = as_binary_arrays(labels, probs, both_classes=method != "none", unit_interval=True)
    if method == "platt":
        return _fit_platt(_logit(p), y)
    if method == "isotonic":
        model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
        return {"method": "isotonic", "x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
    return {"method": "none"}


def apply_calibration(calib: Mapping, probs) -> np.ndarray:
    """Calibrated probabilities ``(N,)`` from raw ``probs: (N,)`` in [0, 1] and a map from :func:`fit_calibration`."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise ValueError(f"probs must be a 1-D array of finite values in [0, 1], got shape {p.shape}.")
    method = calib.get("method") if isinstance(calib, Mapping) else None
    if method == "platt":
        return 1.0 / (1.0 + np.exp(-(float(calib["coef"]) * _logit(p) + float(calib["intercept"]))))
    if method == "isotonic":
        return np.interp(p, np.asarray(calib["x"], dtype=np.float64), np.asarray(calib["y"], dtype=np.float64))
    if method == "none":
        return p.copy()
    raise ValueError(f"calib must be a dict from fit_calibration with method in {CALIBRATION_METHODS}, got {method!r}.")


def choose_threshold(probs, labels, rule: str = "youden", target: Optional[float] = None) -> float:
    """An operating threshold from ``probs, labels: (N,)`` (candidates are the distinct observed probabilities).

    * ``"youden"``: maximises ``J = sensitivity + specificity - 1``; on a tie the smallest such threshold
      (the more sensitive one) wins. ``target`` must be ``None``.
    * ``"sensitivity"``: the highest threshold whose sensitivity is ``>= target`` (``target`` in (0, 1]),
      i.e. the most specific one that still meets the target on these data.
    * ``"prevalence"``: the fraction of positives, ``target`` (in (0, 1); the prevalence of every case the model was
      trained and calibrated on, which the caller knows) or else ``labels``'. For calibrated probabilities this is the
      threshold that maximises the expected Youden's J (call ``p >= prevalence`` positive: ``p / π > (1 - p) / (1 - π)``),
      without picking one observed probability among a dozen fitting cases.
    * ``"fixed"``: ``target`` itself (in [0, 1]); the data are still validated.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}.")
    if rule == "youden" and target is not None:
        raise ValueError("rule 'youden' takes no target.")
    if rule == "sensitivity" and (target is None or not 0.0 < target <= 1.0):
        raise ValueError(f"rule 'sensitivity' needs a target in (0, 1], got {target}.")
    if rule == "fixed" and (target is None or not 0.0 <= target <= 1.0):
        raise ValueError(f"rule 'fixed' needs a target in [0, 1], got {target}.")
    if rule == "prevalence" and target is not None and not 0.0 < target < 1.0:
        raise ValueError(f"rule 'prevalence' takes a prevalence in (0, 1) as target, got {target}.")
    y, p = as_binary_arrays(labels, probs, both_classes=rule != "fixed", unit_interval=True)
    if rule == "fixed":
        return float(target)
    if rule == "prevalence":
        return float(target) if target is not None else float(y.mean())
    values = np.unique(p)  # ascending candidates; threshold t calls p >= t positive
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    tp = pos.size - np.searchsorted(pos, values, side="left")  # positives at or above each candidate
    if rule == "sensitivity":
        return float(values[np.flatnonzero(tp >= target * pos.size - 1e-9)[-1]])
    tn = np.searchsorted(neg, values, side="left")
    j_scaled = tp * neg.size + tn * pos.size  # (J + 1) n_pos n_neg in integers, so ties are exact
    return float(values[np.argmax(j_scaled)])  # argmax returns the first, i.e. the smallest, maximiser


def brier_score(probs, labels) -> float:
    """Mean squared error ``mean((p - y)^2)`` of ``probs, labels: (N,)``."""
    y, p = as_binary_arrays(labels, probs, unit_interval=True)
    return float(np.mean((p - y) ** 2))


def _bins(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """Bin edges ``(n_bins + 1,)``: equal width on [0, 1] or quantiles of ``p`` (as ``calibration_curve``)."""
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"strategy must be one of {BIN_STRATEGIES}, got {strategy!r}.")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    return np.percentile(p, np.linspace(0.0, 100.0, n_bins + 1))


def reliability_curve(probs, labels, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Per non-empty bin: ``lower, upper`` edges, ``prob_pred`` (mean probability), ``prob_true`` (fraction
    positive) and ``count``. ``prob_true, prob_pred`` equal ``sklearn.calibration.calibration_curve``'s."""
    y, p = as_binary_arrays(labels, probs, unit_interval=True)
    edges = _bins(p, n_bins, strategy)
    ids = np.searchsorted(edges[1:-1], p)  # the binning of calibration_curve: a value on an edge goes left
    count = np.bincount(ids, minlength=n_bins)
    keep = count > 0
    return pd.DataFrame(
        {
            "lower": edges[:-1][keep],
            "upper": edges[1:][keep],
            "prob_pred": np.bincount(ids, weights=p, minlength=n_bins)[keep] / count[keep],
            "prob_true": np.bincount(ids, weights=y, minlength=n_bins)[keep] / count[keep],
            "count": count[keep],
        }
    )


def expected_calibration_error(probs, labels, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE: ``sum_b (n_b / N) |fraction positive_b - mean probability_b|`` over the bins of :func:`reliability_curve`."""
    curve = reliability_curve(probs, labels, n_bins, strategy)
    return float(np.sum(curve["count"] * np.abs(curve["prob_true"] - curve["prob_pred"])) / curve["count"].sum())


def plot_reliability(probs, labels, path: str | os.PathLike, n_bins: int = 10, strategy: str = "uniform",
                     title: str = "Reliability", dpi: int = 100) -> Path:  # fmt: skip
    """Write a PNG: the reliability diagram (above) and the histogram of probabilities (below).

    ``probs`` is one vector ``(N,)`` or a mapping ``name -> (N,)`` (e.g. raw and calibrated), drawn as one
    curve each with its ECE in the legend. Returns the path written. Uses matplotlib's Agg canvas, no pyplot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = dict(probs) if isinstance(probs, Mapping) else {"model": probs}
    if not series:
        raise ValueError("probs must hold at least one vector.")
    fig = Figure(figsize=(5.0, 6.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for name, p in series.items():
        curve = reliability_curve(p, labels, n_bins, strategy)
        ece = expected_calibration_error(p, labels, n_bins, strategy)
        ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", label=f"{name} (ECE {ece:.3f})")
        hist.hist(np.asarray(p, dtype=np.float64), bins=_bins(np.asarray(p, dtype=np.float64), n_bins, "uniform"),
                  histtype="step", label=name)  # fmt: skip
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive", title=title)
    ax.legend(loc="upper left", fontsize="small")
    hist.set(xlabel="predicted probability", ylabel="cases")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
