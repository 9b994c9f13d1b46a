"""Bootstrap and DeLong intervals against scikit-learn, brute force and simulation; paired tests by hand formulas."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, recall_score, roc_auc_score

import ctmil.stats.statistics as st
from ctmil.stats.statistics import (
    BOOTSTRAP_METRICS, bootstrap_auc_difference, bootstrap_ci, bootstrap_samples, corrected_resampled_ttest,
    delong_auc_ci, delong_test, fold_summary, paired_ttest,
)  # fmt: skip

TRUE_AUC = stats.norm.cdf(1 / np.sqrt(2))  # binormal, unit variances, means 1 and 0


def make_data(seed, n, levels=None, prevalence=0.35):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, (np.round(p * levels) / levels if levels else p)  # levels: tied scores


def binormal(rng, m=30, n=30, shift=1.0):
    return np.r_[np.ones(m), np.zeros(n)], np.r_[rng.normal(shift, 1, m), rng.normal(0, 1, n)]


def sklearn_metrics(y, p, threshold):
    pred = (p >= threshold).astype(int)
    return {
        "accuracy": accuracy_score(y, pred),
        "sensitivity": recall_score(y, pred, zero_division=np.nan),
        "specificity": recall_score(1 - y, 1 - pred, zero_division=np.nan),
        "f1": f1_score(y, pred, zero_division=np.nan),
        "auc": roc_auc_score(y, p),
        "pr_auc": average_precision_score(y, p),
    }


CASES = [(0, 40, None, 0.5), (1, 25, 5, 0.5), (2, 60, 3, 0.34), (3, 15, None, 0.9), (4, 80, 10, 0.0)]


@pytest.mark.parametrize("seed,n,levels,threshold", CASES)
def test_estimates_equal_sklearn(seed, n, levels, threshold):
    y, p = make_data(seed, n, levels)
    ci = bootstrap_ci(y, p, threshold=threshold, n_resamples=50)
    for name, value in sklearn_metrics(y, p, threshold).items():
        assert ci.loc[name, "estimate"] == pytest.approx(value, abs=1e-12, nan_ok=True), name
    assert list(ci.index) == list(BOOTSTRAP_METRICS)


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("seed,n,levels,threshold", CASES[:3])
def test_every_resample_equals_sklearn_on_the_same_indices(seed, n, levels, threshold, stratified):
    y, p = make_data(seed, n, levels)
    samples = bootstrap_samples(y, p, threshold, n_resamples=12, seed=seed, stratified=stratified)
    idx = st._resample_indices(y.astype(float), 12, stratified, np.random.default_rng(seed))
    for row, i in zip(samples.itertuples(index=False), idx):
        if stratified:
            assert y[i].sum() == y.sum()  # class counts kept
        if y[i].min() == y[i].max():
            assert np.isnan(row).all()
            continue
        expected = sklearn_metrics(y[i], p[i], threshold)
        np.testing.assert_allclose([getattr(row, k) for k in BOOTSTRAP_METRICS], [expected[k] for k in BOOTSTRAP_METRICS])


def test_one_class_resamples_are_left_out_and_counted():
    y, p = np.array([1, 0, 0, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.6])
    samples = bootstrap_samples(y, p, n_resamples=400, seed=3, stratified=False)
    idx = st._resample_indices(y.astype(float), 400, False, np.random.default_rng(3))
    both = (y[idx].min(1) == 0) & (y[idx].max(1) == 1)
    assert 0 < both.sum() < 400  # the case is real: some resamples miss the positive
    np.testing.assert_array_equal(samples.notna().all(axis=1).to_numpy(), both)
    ci = bootstrap_ci(y, p, n_resamples=400, seed=3, stratified=False)
    assert (ci["n_valid"] == both.sum()).all()
    assert bootstrap_ci(y, p, n_resamples=400, seed=3)["n_valid"].eq(400).all()  # stratified never has them


def test_seeded_and_deterministic():
    y, p = make_data(7, 50)
    a, b = bootstrap_ci(y, p, seed=11, n_resamples=300), bootstrap_ci(y, p, seed=11, n_resamples=300)
    pd.testing.assert_frame_equal(a, b)
    c = bootstrap_ci(y, p, seed=12, n_resamples=300)
    assert not np.allclose(a[["lower", "upper"]], c[["lower", "upper"]])


def test_chunks_give_the_same_samples(monkeypatch):
    y, p = make_data(8, 40, levels=6)
    whole = bootstrap_samples(y, p, n_resamples=97, seed=1)
    diff = bootstrap_auc_difference(y, p, p[::-1], n_resamples=97, seed=1)
    monkeypatch.setattr(st, "_CHUNK", 3 * 40 + 5)  # three resamples per chunk, a short last one
    assert st._chunks(97, 40)[-1] == (96, 97)
    pd.testing.assert_frame_equal(bootstrap_samples(y, p, n_resamples=97, seed=1), whole)
    assert bootstrap_auc_difference(y, p, p[::-1], n_resamples=97, seed=1) == pytest.approx(diff)


def test_perfect_classifier_intervals_are_one():
    y = np.r_[np.ones(10), np.zeros(20)]
    p = np.r_[np.linspace(0.6, 1.0, 10), np.linspace(0.0, 0.4, 20)]
    ci = bootstrap_ci(y, p)
    assert (ci[["estimate", "lower", "upper"]] == 1.0).all().all()
    d = delong_auc_ci(y, p)
    assert (d.auc, d.variance, d.lower, d.upper) == (1.0, 0.0, 1.0, 1.0)


def test_higher_level_gives_a_wider_interval():
    y, p = make_data(9, 70)
    narrow, wide = bootstrap_ci(y, p, level=0.8), bootstrap_ci(y, p, level=0.99)
    assert (wide["lower"] <= narrow["lower"]).all() and (wide["upper"] >= narrow["upper"]).all()
    assert (wide["upper"] - wide["lower"] > narrow["upper"] - narrow["lower"]).loc[["auc", "accuracy"]].all()


def test_bootstrap_is_fast():
    y, p = make_data(10, 100)
    start = time.perf_counter()
    bootstrap_ci(y, p, n_resamples=2000)
    assert time.perf_counter() - start < 1.0


def test_bootstrap_auc_interval_covers_the_truth():
    rng = np.random.default_rng(1)
    hits = []
    for r in range(100):
        y, p = binormal(rng)
        ci = bootstrap_ci(y, p, n_resamples=500, seed=r).loc["auc"]
        hits.append(ci["lower"] <= TRUE_AUC <= ci["upper"])
    assert 0.87 <= np.mean(hits) <= 0.99


def brute_force_delong(y, scores):
    """Structural components by the pair definition (DeLong 1988): psi = 1, 1/2, 0 for x > y, x = y, x < y."""
    pos, neg = [np.where(y == 1)[0], np.where(y == 0)[0]]
    v10, v01 = [], []
    for s in scores:
        psi = np.array([[1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0 for j in neg] for i in pos])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    v10, v01 = np.array(v10), np.array(v01)
    aucs = v10.mean(1)
    s10 = np.array([[np.sum((a - a.mean()) * (b - b.mean())) / (len(pos) - 1) for b in v10] for a in v10])
    s01 = np.array([[np.sum((a - a.mean()) * (b - b.mean())) / (len(neg) - 1) for b in v01] for a in v01])
    return aucs, s10 / len(pos) + s01 / len(neg)


@pytest.mark.parametrize("seed,n,levels", [(0, 12, None), (1, 20, 4), (2, 9, 2), (3, 30, 7)])
def test_delong_equals_brute_force_structural_components(seed, n, levels):
    y, a = make_data(seed, n, levels)
    _, b = make_data(seed + 100, n, levels)
    aucs, cov = brute_force_delong(y, [a, b])
    ci = delong_auc_ci(y, a)
    assert ci.auc == pytest.approx(roc_auc_score(y, a)) and ci.auc == pytest.approx(aucs[0])
    assert ci.variance == pytest.approx(cov[0, 0], rel=1e-10)
    half = stats.norm.ppf(0.975) * np.sqrt(cov[0, 0])
    assert (ci.lower, ci.upper) == pytest.approx((max(aucs[0] - half, 0), min(aucs[0] + half, 1)))
    res = delong_test(y, a, b)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res.statistic == pytest.approx(z) and res.pvalue == pytest.approx(2 * stats.norm.sf(abs(z)))
    swapped = delong_test(y, b, a)
    assert swapped.statistic == pytest.approx(-z) and swapped.pvalue == pytest.approx(res.pvalue)


def test_delong_interval_covers_the_truth():
    rng = np.random.default_rng(2)
    hits = [(lambda c: c.lower <= TRUE_AUC <= c.upper)(delong_auc_ci(*binormal(rng))) for _ in range(300)]
    assert 0.91 <= np.mean(hits) <= 0.98


def test_delong_test_size_and_power():
    rng = np.random.default_rng(5)
    null, alt = [], []
    for _ in range(400):
        y, s = binormal(rng, 40, 40)
        null.append(delong_test(y, s + rng.normal(0, 1, 80), s + rng.normal(0, 1, 80)).pvalue < 0.05)
        alt.append(delong_test(y, s, s + rng.normal(0, 5, 80)).pvalue < 0.05)
    assert 0.02 <= np.mean(null) <= 0.09 and np.mean(alt) > 0.6  # AUC 0.76 vs 0.56


def test_delong_test_of_identical_scores():
    y, p = make_data(4, 30)
    assert tuple(delong_test(y, p, p)) == (0.0, 1.0, float("inf"), 0.0)


def test_auc_difference_is_paired_and_antisymmetric():
    rng = np.random.default_rng(6)
    y, s = binormal(rng, 40, 60)
    a, b = s + rng.normal(0, 0.3, 100), s + rng.normal(0, 0.3, 100)
    ab, ba = bootstrap_auc_difference(y, a, b), bootstrap_auc_difference(y, b, a)
    assert ab.difference == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert (ba.difference, ba.lower, ba.upper) == pytest.approx((-ab.difference, -ab.upper, -ab.lower))
    ci_a, ci_b = bootstrap_ci(y, a).loc["auc"], bootstrap_ci(y, b).loc["auc"]
    unpaired_width = np.hypot(ci_a["upper"] - ci_a["lower"], ci_b["upper"] - ci_b["lower"])
    assert ab.upper - ab.lower < 0.5 * unpaired_width  # shared cases cancel the common variation
    same = bootstrap_auc_difference(y, a, a)
    assert (same.difference, same.lower, same.upper) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("a,b", [([0.9, 0.8, 0.85, 0.7], [0.8, 0.75, 0.8, 0.72]), ([1, 2, 3, 5, 8], [1, 1, 2, 3, 5])])
def test_paired_ttest_by_hand(a, b):
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))
    res = paired_ttest(a, b)
    assert (res.statistic, res.pvalue, res.df, res.difference) == pytest.approx(
        (t, 2 * stats.t.sf(abs(t), d.size - 1), d.size - 1, d.mean())
    )
    assert paired_ttest(b, a).statistic == pytest.approx(-t)


@pytest.mark.parametrize("a,b,expected", [([1, 2, 3], [1, 2, 3], (0.0, 1.0)), ([2, 3, 4], [1, 2, 3], (np.inf, 0.0)),
                                          ([1, 2], [2, 3], (-np.inf, 0.0))])  # fmt: skip
def test_paired_ttest_with_equal_differences(a, b, expected):
    assert paired_ttest(a, b)[:2] == expected


def test_corrected_resampled_ttest():
    d = np.array([0.02, 0.05, -0.01, 0.03, 0.04, 0.0, 0.06, 0.01, 0.02, 0.03])  # e.g. 5 folds x 2 repeats
    res = corrected_resampled_ttest(d, n_train=80, n_test=20)
    t = d.mean() / np.sqrt((1 / 10 + 20 / 80) * d.var(ddof=1))
    assert (res.statistic, res.df) == pytest.approx((t, 9)) and res.pvalue == pytest.approx(2 * stats.t.sf(t, 9))
    plain = stats.ttest_1samp(d, 0.0)
    assert res.statistic == pytest.approx(plain.statistic * np.sqrt(0.1 / 0.35))  # the plain test, widened
    assert res.pvalue > plain.pvalue
    assert corrected_resampled_ttest(-d, 80, 20).statistic == pytest.approx(-t)


def test_fold_summary():
    per_fold = pd.DataFrame(
        {"setting": ["D", "D", "D", "A", "A"], "auc": [0.8, 0.9, 1.0, 0.7, np.nan], "accuracy": [0.5, 0.7, 0.9, 0.6, 0.8]}
    )
    out = fold_summary(per_fold, ["auc", "accuracy"], by=["setting"])
    assert list(out.columns) == ["setting", "metric", "mean", "sd", "n"]
    assert out[["setting", "metric"]].values.tolist() == [["D", "auc"], ["D", "accuracy"], ["A", "auc"], ["A", "accuracy"]]
    np.testing.assert_allclose(out["mean"], [0.9, 0.7, 0.7, 0.7])
    np.testing.assert_allclose(out["sd"], [0.1, 0.2, np.nan, np.sqrt(0.02)])
    assert out["n"].tolist() == [3, 3, 1, 2]
    whole = fold_summary(per_fold, ["accuracy"])
    assert whole.loc[0, "mean"] == pytest.approx(0.7) and whole.loc[0, "sd"] == pytest.approx(np.std([0.5, 0.7, 0.9, 0.6, 0.8], ddof=1))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: bootstrap_ci([0, 1, 2], [0.1, 0.2, 0.3]), "labels must be 0 or 1"),
        (lambda: bootstrap_ci([0, 1], [0.1]), "one length"),
        (lambda: bootstrap_ci([1, 1], [0.1, 0.2]), "both classes"),
        (lambda: bootstrap_ci([0, 1], [0.1, np.nan]), "finite"),
        (lambda: bootstrap_ci([0, 1], [0.1, 0.2], level=1.0), "level"),
        (lambda: bootstrap_ci([0, 1], [0.1, 0.2], n_resamples=0), "n_resamples"),
        (lambda: delong_auc_ci([0, 1, 1], [0.1, 0.2, 0.3]), "at least 2 cases of each class"),
        (lambda: delong_test([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2]), "one length"),
        (lambda: paired_ttest([1, 2], [1, 2, 3]), "one length"),
        (lambda: paired_ttest([1], [1]), "at least 2"),
        (lambda: corrected_resampled_ttest([0.1, 0.2], 0, 10), "positive"),
        (lambda: fold_summary(pd.DataFrame({"auc": [1.0]}), ["f1"]), "missing"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_brute_force_helper_is_itself_right():
    """The reference above against a hand count on a 2 x 2 example with a tie."""
    y, s = np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.4, 0.1])
    aucs, _ = brute_force_delong(y, [s])
    assert aucs[0] == pytest.approx(np.mean([1, 1, 0.5, 1]))
