"""The operating point of a trained model: a calibration map and a decision threshold, learnt together.

An operating point is a plain JSON-serialisable dict, stored in ``model.json`` and used by ``ctmil infer``,
``ctmil evaluate`` and the cross-validation report::

    {"calibration": {"method": "platt", "coef": ..., "intercept": ...},   # see ctmil.stats.calibration
     "threshold": 0.41,        # applied to *calibrated* probabilities: positive when p_cal >= threshold
     "rule": "youden", "target": None,
     "n_cases": 12, "n_positive": 3, "source": "inner validation (12 cases, 3 severe)"}

It is fitted on cases the model did not train on and that are not test cases: the inner validation split of
``ctmil train`` and of every cross-validation fold (``cv#calibration_fraction``). With no such cases, cases of
one class only, or cases that rank against the model (a Platt slope <= 0: a map that would invert the model's
ranking is never learnt from a handful of cases), it falls back to the identity map and the fixed threshold,
and ``source`` says why.

The threshold is placed halfway between the chosen observed probability and the next lower observed one,
so it makes the same decisions on the fitting cases as :func:`~ctmil.stats.calibration.choose_threshold`
while leaving a margin on both sides for new cases (with a dozen fitting cases, a threshold exactly on the
lowest severe case's score would miss about half of the similar severe cases to come).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ctmil.stats.calibration import CALIBRATION_METHODS, THRESHOLD_RULES, apply_calibration, choose_threshold, fit_calibration
from ctmil.keys import Columns

__all__ = ["apply_operating_point", "check_operating_point", "fit_operating_point", "fixed_operating_point"]


def fixed_operating_point(threshold: float = 0.5, reason: str = "fixed threshold") -> Dict[str, Any]:
    """The identity calibration and ``threshold`` (what a model without calibration cases gets)."""
    return {"calibration": {"method": "none"}, Columns.THRESHOLD: float(threshold), "rule": "fixed", "target": None,
            "n_cases": 0, "n_positive": 0, "source": reason}  # fmt: skip


def _midpoint(threshold: float, probs: np.ndarray) -> float:
    below = probs[probs < threshold]
    return float(threshold if below.size == 0 else (threshold + below.max()) / 2.0)


def fit_operating_point(
    probs, labels, calibration: str = "platt", rule: str = "youden", target: Optional[float] = None,
    fallback_threshold: float = 0.5, source: str = "given cases",
) -> Dict[str, Any]:  # fmt: skip
    """Fit a calibration map on ``probs, labels: (N,)`` and choose the threshold on the calibrated probabilities.

    Args:
        calibration: ``"platt"``, ``"isotonic"`` or ``"none"``.
        rule: ``"youden"``, ``"prevalence"`` (``target``: the prevalence of the model's training and calibration cases;
            ``None``: of these cases), ``"sensitivity"`` (needs ``target``) or ``"fixed"`` (``target``, or
            ``fallback_threshold``).
        fallback_threshold: the threshold when the cases cannot support a fit (none, or one class only).
        source: words for where the cases came from, recorded in the result.
    """
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {calibration!r}.")
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES}, got {rule!r}.")
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    n, n_pos = int(y.size), int((y == 1).sum())
    if rule == "fixed":
        fixed = fixed_operating_point(fallback_threshold if target is None else target, f"fixed threshold; {source}")
        if n and 0 < n_pos < n and calibration != "none":
            fixed["calibration"] = fit_calibration(p, y, calibration)
        return {**fixed, "n_cases": n, "n_positive": n_pos}
    if n == 0 or n_pos in (0, n):
        why = "no calibration cases" if n == 0 else f"{n} calibration case(s) of one class"
        return {**fixed_operating_point(fallback_threshold, f"fixed {fallback_threshold:g}: {why} ({source})"),
                "n_cases": n, "n_positive": n_pos}  # fmt: skip
    calib = fit_calibration(p, y, calibration)
    if calib["method"] == "platt" and calib["coef"] <= 0.0:  # the cases rank against the model: too few to learn from
        return {**fixed_operating_point(fallback_threshold, f"fixed {fallback_threshold:g}: the {n} calibration cases rank "
                                        f"against the model (Platt slope {calib['coef']:.3g} <= 0; {source})"),
                "n_cases": n, "n_positive": n_pos}  # fmt: skip
    p_cal = apply_calibration(calib, p)
    if rule == "prevalence":  # a fraction, not an observed probability: no midpoint
        threshold = choose_threshold(p_cal, y, rule, target)
        target = threshold
    else:
        threshold = _midpoint(choose_threshold(p_cal, y, rule, target if rule == "sensitivity" else None), p_cal)
    return {"calibration": calib, Columns.THRESHOLD: threshold, "rule": rule, "target": target if rule in ("sensitivity", "prevalence") else None,
            "n_cases": n, "n_positive": n_pos, "source": f"{source} ({n} cases, {n_pos} positive)"}  # fmt: skip


def check_operating_point(point: Any) -> Dict[str, Any]:
    """``point`` validated (a dict with a usable ``calibration`` and a ``threshold`` in [0, 1]); ValueError if not."""
    if not isinstance(point, Mapping) or Columns.THRESHOLD not in point:
        raise ValueError(f"an operating point is a dict with 'calibration' and 'threshold', got {point!r}.")
    t = point[Columns.THRESHOLD]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"the operating point's threshold must be a number in [0, 1], got {t!r}.")
    calib = point.get("calibration") or {"method": "none"}
    apply_calibration(calib, np.array([0.5]))  # raises on an unusable map
    return {**dict(point), "calibration": dict(calib), Columns.THRESHOLD: float(t)}


def apply_operating_point(point: Mapping[str, Any], probs) -> Tuple[np.ndarray, np.ndarray]:
    """``(calibrated probabilities, 0/1 decisions)``, both ``(N,)``, of raw ``probs: (N,)`` at ``point``."""
    point = check_operating_point(point)
    p_cal = apply_calibration(point["calibration"], np.asarray(probs, dtype=np.float64).reshape(-1))
    return p_cal, (p_cal >= point[Columns.THRESHOLD]).astype(np.int64)
