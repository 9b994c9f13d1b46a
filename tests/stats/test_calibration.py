"""Calibration maps against scikit-learn and a JSON round trip; thresholds against brute force; ECE by hand."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.calibration import _sigmoid_calibration, calibration_curve  # Platt reference (private, pinned)
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from ctmil.stats.calibration import (
    apply_calibration, brier_score, choose_threshold, expected_calibration_error, fit_calibration, plot_reliability,
    reliability_curve,
)  # fmt: skip


def overconfident(seed, n):
    """Labels drawn from true probabilities q; the model reports sigmoid(3 logit q) (too extreme)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < q).astype(int)
    return y, 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def test_platt_equals_sklearn_sigmoid_calibration_and_recovers_the_truth():
    y, p = overconfident(0, 20000)
    calib = fit_calibration(p, y, "platt")
    assert calib["coef"] == pytest.approx(1 / 3, abs=0.03) and calib["intercept"] == pytest.approx(0, abs=0.05)
    a, b = _sigmoid_calibration(logit(p), y)  # sklearn's Platt fit: P = 1 / (1 + exp(a f + b))
    assert (calib["coef"], calib["intercept"]) == pytest.approx((-a, -b), abs=1e-5)
    new = np.linspace(0, 1, 101)
    np.testing.assert_allclose(apply_calibration(calib, new), 1 / (1 + np.exp(a * logit(new) + b)), atol=1e-5)


def test_platt_stays_finite_on_separable_scores():
    y = np.r_[np.ones(10), np.zeros(30)]
    p = np.r_[np.linspace(0.7, 0.99, 10), np.linspace(0.01, 0.4, 30)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning
        calib = fit_calibration(p, y, "platt")
    a, b = _sigmoid_calibration(logit(p), y)
    assert (calib["coef"], calib["intercept"]) == pytest.approx((-a, -b), rel=1e-3)
    assert 0 < calib["coef"] < 5  # hard labels would drive the slope towards infinity
    assert np.all(np.diff(apply_calibration(calib, np.linspace(0.3, 0.8, 11))) > 0)


def test_isotonic_equals_sklearn_predict_inside_and_outside_the_fitted_range():
    y, p = overconfident(1, 300)
    p = 0.1 + 0.8 * p  # fitted on [0.1, 0.9], applied on [0, 1]
    calib = fit_calibration(p, y, "isotonic")
    model = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p, y)
    new = np.r_[np.linspace(0, 1, 201), p]
    np.testing.assert_allclose(apply_calibration(calib, new), model.predict(new), atol=1e-12)
    assert np.all(np.diff(apply_calibration(calib, np.sort(new))) >= 0)


@pytest.mark.parametrize("method", ["platt", "isotonic", "none"])
def test_json_round_trip_gives_identical_outputs(method):
    y, p = overconfident(2, 200)
    calib = fit_calibration(p, y, method)
    loaded = json.loads(json.dumps(calib))
    new = np.random.default_rng(3).random(500)
    np.testing.assert_array_equal(apply_calibration(loaded, new), apply_calibration(calib, new))
    if method == "none":
        np.testing.assert_array_equal(apply_calibration(loaded, new), new)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_fitted_on_training_data_helps_on_held_out_data(method):
    y, p = overconfident(4, 4000)
    calib = fit_calibration(p[:2000], y[:2000], method)
    held_out = apply_calibration(calib, p[2000:])
    assert brier_score(held_out, y[2000:]) < brier_score(p[2000:], y[2000:])
    assert expected_calibration_error(held_out, y[2000:]) < 0.5 * expected_calibration_error(p[2000:], y[2000:])


def brute_force_threshold(p, y, rule, target=None):
    cands = np.unique(p)
    sens = np.array([np.mean(p[y == 1] >= t) for t in cands])
    spec = np.array([np.mean(p[y == 0] < t) for t in cands])
    if rule == "sensitivity":
        return max(t for t, s in zip(cands, sens) if s >= target - 1e-12)
    j = sens + spec - 1
    return min(t for t, v in zip(cands, j) if v >= j.max() - 1e-12)


@pytest.mark.parametrize("seed,n,levels", [(0, 30, None), (1, 50, 5), (2, 17, 3), (3, 80, 20)])
@pytest.mark.parametrize("rule,target", [("youden", None), ("sensitivity", 0.8), ("sensitivity", 1.0), ("sensitivity", 0.5)])
def test_threshold_equals_brute_force(seed, n, levels, rule, target):
    y, p = overconfident(seed, n)
    y[:2] = [0, 1]
    p = np.round(p * levels) / levels if levels else p
    t = choose_threshold(p, y, rule, target)
    assert t == brute_force_threshold(p, y, rule, target)
    if rule == "sensitivity":
        assert np.mean(p[y == 1] >= t) >= target
        higher = np.unique(p)[np.unique(p) > t]
        assert higher.size == 0 or np.mean(p[y == 1] >= higher[0]) < target  # the next threshold misses it


def test_threshold_known_values_and_tie_rule():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7])
    y = np.array([0, 0, 1, 0, 1, 1])
    assert choose_threshold(p, y, "youden") == 0.3  # J = 2/3 at 0.3 and 0.6: the smaller wins
    assert choose_threshold(p, y, "sensitivity", 2 / 3) == 0.6
    assert choose_threshold(p, y, "sensitivity", 0.7) == 0.3
    assert choose_threshold(p, y, "fixed", 0.42) == 0.42


def test_brier_equals_sklearn():
    y, p = overconfident(5, 100)
    assert brier_score(p, y) == pytest.approx(brier_score_loss(y, p))
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0 and brier_score([0.0, 1.0], [1, 0]) == 1.0


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_reliability_curve_equals_sklearn(strategy, n_bins):
    y, p = overconfident(6, 150)
    p = np.r_[p, 0.1, 0.2, 0.5]  # values on uniform bin edges go to the lower bin, as in sklearn
    y = np.r_[y, 0, 1, 1]
    curve = reliability_curve(p, y, n_bins, strategy)
    true, pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    np.testing.assert_allclose(curve["prob_true"], true)
    np.testing.assert_allclose(curve["prob_pred"], pred)
    assert curve["count"].sum() == p.size
    ece = np.sum(curve["count"] * np.abs(true - pred)) / p.size
    assert expected_calibration_error(p, y, n_bins, strategy) == pytest.approx(ece)


@pytest.mark.parametrize(
    "probs,labels,expected",
    [
        ([0.3] * 10, [1, 1, 1] + [0] * 7, 0.0),  # calibrated in its one bin
        ([0.8] * 10, [1, 1] + [0] * 8, 0.6),
        ([0.05, 0.05, 0.95, 0.95], [0, 1, 1, 1], 0.5 * 0.45 + 0.5 * 0.05),
    ],
)
def test_ece_known_values(probs, labels, expected):
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


@pytest.mark.parametrize("probs", ["one", "two"])
def test_plot_reliability_writes_a_png(tmp_path, probs):
    y, p = overconfident(7, 200)
    series = p if probs == "one" else {"raw": p, "platt": apply_calibration(fit_calibration(p, y), p)}
    out = plot_reliability(series, y, tmp_path / "sub" / "reliability.png", dpi=50)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out)
    assert image.shape[:2] == (300, 250) and image[..., :3].std() > 0.05  # 5 x 6 in at 50 dpi, not blank


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: fit_calibration([0.1, 0.9], [0, 1], "beta"), "method must be one of"),
        (lambda: fit_calibration([0.1, 0.9], [1, 1], "platt"), "both classes"),
        (lambda: fit_calibration([0.1, 1.2], [0, 1], "isotonic"), r"\[0, 1\]"),
        (lambda: apply_calibration({"method": "beta"}, [0.5]), "calib must be"),
        (lambda: apply_calibration({"method": "none"}, [[0.5]]), "1-D"),
        (lambda: choose_threshold([0.1, 0.9], [0, 1], "best"), "rule must be one of"),
        (lambda: choose_threshold([0.1, 0.9], [0, 1], "youden", 0.5), "takes no target"),
        (lambda: choose_threshold([0.1, 0.9], [0, 1], "sensitivity"), r"target in \(0, 1\]"),
        (lambda: choose_threshold([0.1, 0.9], [0, 1], "sensitivity", 0.0), r"target in \(0, 1\]"),
        (lambda: choose_threshold([0.1, 0.9], [0, 1], "fixed", 1.5), r"target in \[0, 1\]"),
        (lambda: choose_threshold([0.1, 0.9], [0, 0], "youden"), "both classes"),
        (lambda: expected_calibration_error([0.1, 0.9], [0, 1], n_bins=0), "n_bins"),
        (lambda: reliability_curve([0.1, 0.9], [0, 1], strategy="kmeans"), "strategy must be one of"),
        (lambda: plot_reliability({}, [0, 1], "x.png"), "at least one"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("target, expected", [(None, 0.4), (0.25, 0.25)])
def test_the_prevalence_rule_is_the_positive_fraction(target, expected):
    probs, labels = [0.1, 0.9, 0.3, 0.8, 0.2], [0, 1, 0, 1, 0]
    assert choose_threshold(probs, labels, "prevalence", target) == pytest.approx(expected)


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.1])
def test_the_prevalence_rule_refuses_a_fraction_outside_0_1(target):
    with pytest.raises(ValueError, match="prevalence"):
        choose_threshold([0.1, 0.9], [0, 1], "prevalence", target)


def test_at_the_prevalence_calibrated_probabilities_give_the_best_expected_youden():
    """Why the rule: for calibrated probabilities p (labels drawn with P(y=1) = p), thresholding at the prevalence
    maximises the expected sensitivity + specificity, here against every other threshold on a fine grid."""
    rng = np.random.default_rng(0)
    p = rng.beta(1.2, 2.5, size=200_000)
    prevalence = p.mean()

    def expected_j(t):
        called = p >= t
        return (p * called).sum() / p.sum() + ((1 - p) * ~called).sum() / (1 - p).sum() - 1

    grid = np.linspace(0.01, 0.99, 99)
    assert expected_j(prevalence) >= max(expected_j(t) for t in grid) - 1e-4
