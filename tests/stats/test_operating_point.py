"""The operating point: a calibration map and a threshold learnt together, their fallbacks and their round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctmil.stats.calibration import choose_threshold
from ctmil.stats.operating_point import (
    apply_operating_point, check_operating_point, fit_operating_point, fixed_operating_point,
)  # fmt: skip


def scores(seed: int, n: int = 40):
    """Well ranked but badly scaled scores: every probability below 0.3, severe cases higher."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(int)
    return y, 0.05 + 0.2 * (0.6 * y + 0.4 * rng.random(n))


@pytest.mark.parametrize("calibration", ["platt", "isotonic", "none"])
@pytest.mark.parametrize("rule,target", [("youden", None), ("sensitivity", 0.9)])
def test_learnt_point_makes_the_chosen_decisions_with_a_margin(calibration, rule, target):
    y, p = scores(1)
    point = fit_operating_point(p, y, calibration, rule, target)
    p_cal, decision = apply_operating_point(point, p)
    chosen = choose_threshold(p_cal, y, rule, target if rule == "sensitivity" else None)
    assert (decision == (p_cal >= chosen)).all()  # the same decisions on the fitting cases as choose_threshold
    below = p_cal[p_cal < chosen]
    assert point["threshold"] <= chosen and (below.size == 0 or point["threshold"] > below.max())  # strictly between
    assert (p >= 0.5).sum() == 0 and decision.sum() >= y.sum() * (0.9 if rule == "sensitivity" else 0.5)
    assert point["n_cases"] == 40 and point["n_positive"] == 10 and point["calibration"]["method"] == calibration
    assert json.loads(json.dumps(point)) == point  # plain JSON, stored as is in model.json


def test_platt_calibration_brings_probabilities_to_the_observed_rate():
    y, p = scores(2, 400)
    p_cal, _ = apply_operating_point(fit_operating_point(p, y, "platt"), p)
    assert p.mean() < 0.2 and abs(p_cal.mean() - y.mean()) < 0.02


@pytest.mark.parametrize("probs,labels,why", [([], [], "no calibration cases"), ([0.2, 0.3], [0, 0], "one class")])
def test_fallback_is_the_fixed_threshold_and_says_why(probs, labels, why):
    point = fit_operating_point(probs, labels, "platt", "youden", fallback_threshold=0.4, source="inner validation")
    assert point["threshold"] == 0.4 and point["calibration"] == {"method": "none"} and point["rule"] == "fixed"
    assert why in point["source"] and "inner validation" in point["source"]


def test_cases_ranked_against_the_model_never_invert_it():
    point = fit_operating_point([0.3, 0.2, 0.25], [0, 1, 0], "platt", "youden", fallback_threshold=0.5)
    assert point["calibration"] == {"method": "none"} and point["threshold"] == 0.5 and "rank against" in point["source"]


def test_fixed_rule_keeps_its_threshold_but_still_calibrates():
    y, p = scores(3)
    point = fit_operating_point(p, y, "platt", "fixed", target=0.3)
    assert point["threshold"] == 0.3 and point["calibration"]["method"] == "platt"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fit_operating_point([0.1, 0.9], [0, 1], "beta"), "calibration must be one of"),
        (lambda: fit_operating_point([0.1, 0.9], [0, 1], "platt", "best"), "rule must be one of"),
        (lambda: check_operating_point({"calibration": {"method": "none"}}), "with 'calibration' and 'threshold'"),
        (lambda: check_operating_point({"threshold": 1.5}), r"\[0, 1\]"),
        (lambda: check_operating_point({"threshold": 0.5, "calibration": {"method": "beta"}}), "calib must be"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fixed_point_is_identity():
    p_cal, decision = apply_operating_point(fixed_operating_point(0.5), [0.2, 0.5, 0.7])
    assert p_cal.tolist() == [0.2, 0.5, 0.7] and decision.tolist() == [0, 1, 1]
