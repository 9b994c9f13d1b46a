"""The cross-validation report against direct scipy / statistics computations on predictions of known structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ctmil.stats.folds import run_seed
from ctmil.stats.metrics import METRIC_NAMES, binary_metrics, roc_auc
from ctmil.evaluate.report import write_report
from ctmil.evaluate.report_comparisons import paired_comparisons
from ctmil.evaluate.report_tables import PAPER_RESULTS, canonical_setting, describe
from ctmil.stats.statistics import bootstrap_auc_difference, delong_auc_ci

N_RESAMPLES = 200  # bootstrap resamples in these tests (the report's default is 2000)


def _fake_predictions(settings=(("A", 0.1), ("D", 0.4)), n_repeats=3, n_cases=20, n_folds=4, seed=0):
    """Scores ``0.3 + shift * label + noise``; case ``i`` is in fold ``(i + repeat) % n_folds``; 30 % severe."""
    rng = np.random.default_rng(seed)
    rows = []
    for setting, shift in settings:
        for repeat in range(n_repeats):
            for i in range(n_cases):
                label = int(i < 0.3 * n_cases)
                rows.append({"case_id": f"c{i:03d}", "setting": setting, "repeat": repeat, "fold": (i + repeat) % n_folds,
                             "raw_probability": float(np.clip(0.3 + shift * label + rng.normal(0, 0.2), 0, 1)), "label": label})
    return pd.DataFrame(rows)


def _per_repeat_auc(predictions, setting):
    part = predictions[predictions.setting == setting]
    return np.array([roc_auc(p["raw_probability"], p["label"]) for _, p in part.groupby("repeat")])


def _per_fold_auc(predictions, setting):
    part = predictions[predictions.setting == setting]
    return np.array([roc_auc(p["raw_probability"], p["label"]) for _, p in part.groupby(["repeat", "fold"])])


def _nadeau_bengio(diffs, n_train, n_test):
    j = len(diffs)
    t = np.mean(diffs) / np.sqrt((1 / j + n_test / n_train) * np.var(diffs, ddof=1))
    return t, 2 * stats.t.sf(abs(t), j - 1)


def _report(tmp_path, predictions, **kwargs):
    paths = write_report(tmp_path, predictions, n_resamples=N_RESAMPLES, **kwargs)
    return paths, pd.read_csv(paths["report_csv"]).set_index("setting"), pd.read_csv(paths["ttests"]), paths["report_md"].read_text()


def test_report_files_and_values(tmp_path):
    predictions = _fake_predictions()
    paths, report, tests, md = _report(tmp_path, predictions)
    assert {p.name for p in paths.values()} == {"report.md", "report.csv", "repeat_metrics.csv", "fold_metrics.csv",
                                               "ttests.csv", "auc_differences.csv", "roc.png", "report.html"}  # fmt: skip
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    old = ["setting", "description", "n_repeats"] + [f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "sd")]
    assert report.reset_index().columns.tolist()[: len(old)] == old  # old readers keep their columns
    per_repeat = [binary_metrics(p["raw_probability"], p["label"]) for _, p in predictions[predictions.setting == "D"].groupby("repeat")]
    d = report.loc["D"]
    assert d["auc_mean"] == pytest.approx(np.mean([m["auc"] for m in per_repeat]))
    assert d["accuracy_sd"] == pytest.approx(np.std([m["accuracy"] for m in per_repeat], ddof=1))
    fold_auc = _per_fold_auc(predictions, "D")
    assert d["auc_fold_mean"] == pytest.approx(fold_auc.mean()) and d["auc_fold_sd"] == pytest.approx(fold_auc.std(ddof=1))
    assert d["n_folds"] == 12 and d["auc_fold_n"] == 12
    folds = pd.read_csv(paths["fold_metrics"])
    assert len(folds) == 2 * 3 * 4 and {"setting", "repeat", "fold", "n_cases", *METRIC_NAMES} <= set(folds.columns)
    cis = [delong_auc_ci(p["label"], p["raw_probability"]) for _, p in predictions[predictions.setting == "D"].groupby("repeat")]
    assert d["auc_delong_lower"] == pytest.approx(np.mean([c.lower for c in cis]))
    assert d["auc_delong_upper"] == pytest.approx(np.mean([c.upper for c in cis]))

    row = tests.iloc[0]
    assert (row["setting_a"], row["setting_b"]) == ("A", "D") and len(tests) == 1
    expected = stats.ttest_rel(_per_repeat_auc(predictions, "D"), _per_repeat_auc(predictions, "A"))
    assert row["p_value"] == pytest.approx(expected.pvalue) and row["t"] == pytest.approx(expected.statistic)
    assert row["df"] == 2 and row["n_repeats"] == 3
    nb_t, nb_p = _nadeau_bengio(_per_fold_auc(predictions, "D") - _per_fold_auc(predictions, "A"), n_train=15, n_test=5)
    assert (row["n_train"], row["n_test"], row["n_splits"], row["nb_df"]) == (15, 5, 12, 11)
    assert row["nb_t"] == pytest.approx(nb_t) and row["nb_p_value"] == pytest.approx(nb_p)
    boots = []
    for r in range(3):
        a, b = (predictions[(predictions.setting == s) & (predictions.repeat == r)].sort_values(["fold", "case_id"])
                for s in ("A", "D"))  # fmt: skip
        boots.append(bootstrap_auc_difference(b["label"], b["raw_probability"], a["raw_probability"], n_resamples=N_RESAMPLES,
                                              seed=run_seed(0, r)))  # fmt: skip
    assert row["boot_lower"] == pytest.approx(np.mean([c.lower for c in boots]))
    assert row["boot_upper"] == pytest.approx(np.mean([c.upper for c in boots]))
    assert row["boot_difference"] == pytest.approx(row["difference"]) == pytest.approx(row["mean_b"] - row["mean_a"])
    differences = pd.read_csv(paths["auc_differences"])
    assert differences["boot_lower"].tolist() == pytest.approx([c.lower for c in boots])

    assert "| (D) MIL + both |" in md and f"{d['auc_mean']:.3f} ± {d['auc_sd']:.3f}" in md
    assert f"[{d['auc_delong_lower']:.3f}, {d['auc_delong_upper']:.3f}]" in md
    assert f"| {d['auc_fold_mean']:.3f} ± {d['auc_fold_sd']:.3f} | 12 | 0 |" in md
    assert f"t = {row['t']:.2f} (df 2), p = {row['p_value']:.3g}" in md
    assert f"t = {row['nb_t']:.2f} (df 11), p = {row['nb_p_value']:.3g}" in md
    assert "| 0.006 |" in md  # the paper's p of D vs A
    assert "ttest_rel" in md and "Nadeau & Bengio" in md and "n_test = 5, n_train = 15" in md


def test_strictly_better_setting_is_significant_by_every_test():
    rng = np.random.default_rng(1)
    predictions = _fake_predictions((("A", -0.05), ("D", 0.9)), n_repeats=5, n_cases=50, n_folds=5, seed=1)
    d = predictions.setting == "D"
    predictions.loc[d, "raw_probability"] = 0.1 + 0.8 * predictions.loc[d, "label"] + rng.uniform(0, 0.05, int(d.sum()))
    diffs = _per_fold_auc(predictions, "D") - _per_fold_auc(predictions, "A")
    assert (diffs > 0).all()  # better on every fold
    tests, per_repeat = paired_comparisons(predictions, n_resamples=N_RESAMPLES)
    row = tests.iloc[0]
    assert row["p_value"] < 1e-3 and row["nb_p_value"] < 1e-3 and row["boot_lower"] > 0
    assert row["nb_p_value"] > stats.ttest_1samp(diffs, 0).pvalue  # the correction widens the naive test
    assert (per_repeat["auc_b"] == 1).all() and (per_repeat["delong_p_value"] < 0.01).all()


def test_identical_settings_differ_by_zero_with_p_one(tmp_path):
    a = _fake_predictions((("A", 0.2),))
    predictions = pd.concat([a, a.assign(setting="B")], ignore_index=True)
    _, _, tests, md = _report(tmp_path, predictions)
    row = tests.iloc[0]
    assert row["difference"] == 0 and (row["t"], row["p_value"]) == (0, 1) and (row["nb_t"], row["nb_p_value"]) == (0, 1)
    assert (row["boot_lower"], row["boot_upper"]) == (0, 0)
    assert "| (B) vs (A) |" in md and "+0.000" in md and "p = 1 |" in md


def test_pairing_is_by_case_not_by_row_order():
    predictions = _fake_predictions()
    shuffled = predictions.sample(frac=1.0, random_state=0)
    left, _ = paired_comparisons(predictions, n_resamples=N_RESAMPLES)
    right, _ = paired_comparisons(shuffled, n_resamples=N_RESAMPLES)
    pd.testing.assert_frame_equal(left, right)


def test_one_repeat_has_no_repeat_test_but_a_fold_test(tmp_path):
    predictions = _fake_predictions(n_repeats=1, n_cases=40)
    _, report, tests, md = _report(tmp_path, predictions)
    assert np.isnan(report.loc["D", "auc_sd"]) and np.isnan(tests.loc[0, "p_value"]) and np.isnan(tests.loc[0, "t"])
    assert np.isfinite(tests.loc[0, "nb_p_value"]) and tests.loc[0, "n_splits"] == 4
    assert "n/a (needs ≥ 2 repeats)" in md
    assert f"| (D) MIL + both | {report.loc['D', 'accuracy_mean']:.3f} |" in md  # a mean without ± SD


def test_a_fold_of_one_class_is_skipped_and_counted(tmp_path):
    predictions = _fake_predictions(n_repeats=2, n_cases=24)
    predictions.loc[(predictions.repeat == 0) & (predictions.fold == 3), "label"] = 0  # negatives only
    predictions = predictions[~((predictions.repeat == 1) & (predictions.fold == 0) & (predictions.label == 1))]
    _, report, tests, md = _report(tmp_path, predictions)
    folds = pd.read_csv(tmp_path / "fold_metrics.csv")
    one_class = folds[((folds.repeat == 0) & (folds.fold == 3)) | ((folds.repeat == 1) & (folds.fold == 0))]
    assert len(one_class) == 4 and one_class["auc"].isna().all() and one_class["sensitivity"].isna().all()
    assert (report["n_folds"] == 8).all() and (report["auc_fold_n"] == 6).all()
    assert report.loc["D", "auc_fold_mean"] == pytest.approx(np.nanmean(_per_fold_auc(predictions, "D")))
    assert "| 8 | 2 |" in md
    a = predictions[predictions.setting == "A"]
    sizes = [(len(p), (a.repeat == r).sum() - len(p)) for (r, _), p in a.groupby(["repeat", "fold"]) if p.label.nunique() == 2]
    n_test, n_train = round(np.mean([s[0] for s in sizes])), round(np.mean([s[1] for s in sizes]))
    diffs = _per_fold_auc(predictions, "D") - _per_fold_auc(predictions, "A")
    row = tests.iloc[0]
    assert (row["n_splits"], row["n_splits_skipped"], row["n_test"], row["n_train"]) == (6, 2, n_test, n_train)
    assert row["nb_t"] == pytest.approx(_nadeau_bengio(diffs[np.isfinite(diffs)], n_train, n_test)[0])


def test_table_iv_beside_the_paper_with_variants_and_unknown_settings(tmp_path):
    predictions = _fake_predictions((("A", 0.1), ("D", 0.4), ("D-rel", 0.3), ("X", 0.2)), n_repeats=2)
    _, report, tests, md = _report(tmp_path, predictions)
    assert report.loc["D-rel", "description"] == "MIL + both (relative patch location)"
    assert pd.isna(report.loc["X", "description"]) and "| (X) |" in md
    table = md.split("## Table IV")[1].split("## Paired")[0]
    paper_d = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in PAPER_RESULTS["D"][1])
    assert f"| | paper (Table IV) | {paper_d} |" in table and "0.981 ± 0.006" in table
    assert "| (B) MIL + augmentation | ctmil | not run |" in table and "| (C) MIL + self-supervision | ctmil | not run |" in table
    assert table.count("not in the paper") == 2  # D-rel and X
    assert len(tests) == 6 and "| (X) vs (D-rel) |" in md
    _, report, _, md = _report(tmp_path, predictions[predictions.setting == "X"], descriptions={"X": "a new idea"})
    assert report.loc["X", "description"] == "a new idea" and "| (X) a new idea |" in md


@pytest.mark.parametrize(
    "name,canonical,description",
    [("A", "A", "MIL only"), ("d", "D", "MIL + both"), ("C-rel", "C-rel", "MIL + self-supervision (relative patch location)"),
     ("D_relative", "D-rel", "MIL + both (relative patch location)"), ("E", None, ""), ("Drel2", None, ""), (3, None, ""),
     ("Q", "Q", "lung-density histogram + logistic regression (quantitative baseline)"), ("Q-rel", None, "")],
)  # fmt: skip
def test_setting_names(name, canonical, description):
    assert canonical_setting(name) == canonical and describe(name) == description


def test_one_setting_and_bad_predictions(tmp_path):
    predictions = _fake_predictions((("A", 0.3),), n_repeats=1)
    _, _, tests, md = _report(tmp_path, predictions)
    assert len(tests) == 0 and "Only one setting: no comparison." in md
    with pytest.raises(ValueError, match="missing columns"):
        write_report(tmp_path, predictions.drop(columns="fold"))
    with pytest.raises(ValueError, match="twice"):
        write_report(tmp_path, pd.concat([predictions, predictions.iloc[:1]]))


@pytest.mark.parametrize("fitted_runs, expected", [
    ((True, True), "all 2 runs fitted a map and a threshold"),
    ((True, False), "1 of 2 runs fitted a map and a threshold; 1 kept the fixed threshold"),
])
def test_the_report_says_what_each_run_did(fitted_runs, expected):
    """A run whose inner validation cases lacked a class keeps probability == raw_probability and the fixed threshold: the
    report says how many runs did that instead of claiming every run fitted a map."""
    from ctmil.evaluate.report import learnt_summary
    from ctmil.evaluate.report_tables import _learnt_section

    rng = np.random.default_rng(0)
    frames = []
    for fold, fitted in enumerate(fitted_runs):
        labels = np.r_[np.ones(5), np.zeros(5)]
        prob = np.clip(0.4 * labels + rng.uniform(0, 0.6, 10), 0, 1)
        calibrated = np.clip(prob * 0.8 + 0.05, 0, 1) if fitted else prob
        threshold = 0.42 if fitted else 0.5
        frames.append(pd.DataFrame({"case_id": [f"f{fold}c{i}" for i in range(10)], "setting": "D", "repeat": 0, "fold": fold,
                                    "raw_probability": prob, "label": labels, "probability": calibrated, "threshold": threshold,
                                    "prediction": (calibrated >= threshold).astype(int)}))
    text = "\n".join(_learnt_section(learnt_summary(pd.concat(frames, ignore_index=True)), None))
    assert expected in text


@pytest.mark.parametrize("columns", [("prob", "prob_calibrated"), ("raw_probability", "probability")])
def test_predictions_of_any_version_read_in_todays_vocabulary(tmp_path, columns):
    """CV folders written before the one column vocabulary (prob, prob_calibrated) still report."""
    from ctmil.evaluate.report import read_predictions

    raw, calibrated = columns
    pd.DataFrame({"case_id": ["007", "8"], "setting": "D", "repeat": 0, "fold": 0, raw: [0.2, 0.9], "label": [0, 1],
                  calibrated: [0.1, 0.95], "prediction": [0, 1], "threshold": 0.5}).to_csv(tmp_path / "p.csv", index=False)
    table = read_predictions(tmp_path / "p.csv")
    assert table["case_id"].tolist() == ["007", "8"] and table["raw_probability"].tolist() == [0.2, 0.9]
    assert table["probability"].tolist() == [0.1, 0.95] and "prob" not in table
