"""The quantitative baseline Q: density features, the model, and its place in ``ctmil cv`` beside the deep settings."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
import torch

import ctmil.evaluate.cv as cv_module
from ctmil.evaluate.cv import CVConfigError, cv_protocol, run_cv
from ctmil.stats.folds import make_folds
from ctmil.stats.metrics import roc_auc
from ctmil.stats.quantitative import (
    C_GRID, FALLBACK_C, DropEmptyColumns, _inner_splits, density_features, fit_baseline, predict_fold,
)  # fmt: skip
from ctmil.evaluate.report_comparisons import setting_pairs
from ctmil.transforms import DENSITY_FEATURES, LungDensity
from ctmil.transforms.intensity import LUNG_WINDOW_HU
from tests.train._bags import CHANNELS, TINY_NET, make_bag, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = ("train.json", "cv.json", "demo.json")
Q_LABEL = "(Q) lung-density histogram + logistic regression (quantitative baseline)"


def synthetic_density(seed: int, label: int, intensity: str = "hu") -> dict:
    """``meta["density"]`` of a lung whose HU values are drawn (severe: 25-45 % ground glass), by the real transform."""
    rng = np.random.default_rng(seed)
    share = rng.uniform(0.25, 0.45) if label else rng.uniform(0.0, 0.1)
    hu = np.r_[rng.normal(-850, 60, 3000), rng.normal(-450, 120, int(3000 * share)), rng.normal(-100, 80, int(600 * share))]
    values = np.clip((hu - LUNG_WINDOW_HU[0]) / np.ptp(LUNG_WINDOW_HU), 0, 1) if intensity == "windowed" else hu
    density = LungDensity(intensity=intensity, slice_axis=1)(values.reshape(1, 1, 1, -1), np.ones((1, 1, 1, values.size), bool))
    if intensity == "hu":
        density["volume_ml"] = float(rng.normal(4500, 600))
    return density


def _table(labels, patients=None) -> pd.DataFrame:
    ids = [f"c{i:02d}" for i in range(len(labels))]
    return pd.DataFrame({"case_id": ids, "bag": ids, "label": list(labels), "patient": patients or ids})


def _loader(bags: dict):
    return lambda path: bags[path]


@pytest.mark.parametrize("intensity,kept", [("hu", len(DENSITY_FEATURES)), ("windowed", len(DENSITY_FEATURES) - 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_q_separates_synthetic_density_out_of_fold(intensity, kept, seed):
    table = _table([int(i % 3 == 0) for i in range(24)])
    bags = {c: {"meta": {"density": synthetic_density(seed * 100 + i, y, intensity)}} for i, (c, y) in enumerate(zip(table.case_id, table.label))}
    features, reason = density_features(table, _loader(bags))
    assert reason == "" and list(features.columns) == list(DENSITY_FEATURES) and features.index.tolist() == table.case_id.tolist()
    folds = make_folds(table, 3, 1, seed).set_index("case_id")["fold"]
    preds = []
    for f in range(3):
        test = table[table.case_id.map(folds) == f]
        fit = table[table.case_id.map(folds) != f]
        pred, point = predict_fold(features, fit, fit.iloc[:0], test, seed)
        assert point["source"].startswith("fixed 0.5: no calibration cases") and point["model"]["C"] in C_GRID
        preds.append(pred)
        again, _ = predict_fold(features, fit, fit.iloc[:0], test, seed)
        pd.testing.assert_frame_equal(pred, again)  # seeded: deterministic
    pred = pd.concat(preds)
    assert sorted(pred.case_id) == sorted(table.case_id) and roc_auc(pred["raw_probability"], pred["label"]) >= 0.95
    model = fit_baseline(features, table.label, table.patient.tolist(), seed)
    assert model.named_steps["drop"].keep_.sum() == kept  # the volume of slice images is dropped, nothing else


@pytest.mark.parametrize(
    "x,kept,error",
    [([[1.0, np.nan], [2.0, np.nan]], [True, False], None), ([[1.0, 3.0], [2.0, np.nan]], None, "missing \\(nan\\) in 1 case"),
     ([[np.nan], [np.nan]], None, "every density feature is nan")],
)  # fmt: skip
def test_empty_columns_are_dropped_and_nothing_is_imputed(x, kept, error):
    if error:
        with pytest.raises(ValueError, match=error):
            DropEmptyColumns().fit(np.array(x))
        return
    drop = DropEmptyColumns().fit(np.array(x))
    assert drop.keep_.tolist() == kept and drop.transform(np.array(x)).shape == (2, sum(kept))
    with pytest.raises(ValueError, match="missing"):
        drop.transform(np.array([[np.nan, 1.0]]))


@pytest.mark.parametrize(
    "change,reason",
    [("missing", "1 of 6 bags record no lung-density features"), ("mixed", "the bags mix intensity kinds \\(1 hu, 5 windowed\\)"),
     ("partial_nan", "volume_ml missing \\(nan\\) in 1 case"), ("bad_bins", "unusable \\(density histogram has 3 bins")],
)  # fmt: skip
def test_density_features_give_the_reason_q_cannot_run(change, reason):
    table = _table([0, 1, 0, 1, 0, 1])
    kind = "hu" if change == "partial_nan" else "windowed"
    bags = {c: {"meta": {"density": synthetic_density(i, i % 2, kind)}} for i, c in enumerate(table.case_id)}
    first = bags["c00"]["meta"]
    if change == "missing":
        first.pop("density")
    elif change == "mixed":
        first["density"] = synthetic_density(0, 0, "hu")
    elif change == "partial_nan":
        first["density"]["volume_ml"] = float("nan")
    else:
        first["density"]["histogram"] = [0.5, 0.25, 0.25]
    features, why = density_features(table, _loader(bags))
    assert features is None
    assert re.search(reason, why), why


@pytest.mark.parametrize("labels,patients,n_inner", [([0, 1] * 6, None, 3), ([0, 0, 0, 1, 1, 0, 1, 0], None, 3),
                                                     ([0, 0, 0, 0, 1, 1], None, 2), ([0, 0, 0, 1], None, None),
                                                     ([0, 1] * 6, [f"p{i // 4}" for i in range(12)], 3)])  # fmt: skip
def test_inner_search_folds_keep_patients_and_both_classes(labels, patients, n_inner):
    y = np.array(labels)
    groups = patients or [f"c{i}" for i in range(len(y))]
    splits = _inner_splits(y, groups, seed=3)
    if n_inner is None:
        assert splits is None
        model = fit_baseline(np.random.default_rng(0).normal(size=(len(y), 3)), y, groups, seed=3)
        assert model.named_steps["model"].C == FALLBACK_C  # too few patients: no search
        return
    assert len(splits) == n_inner
    for train, test in splits:
        assert set(y[train]) == set(y[test]) == {0, 1}
        assert not {groups[i] for i in train} & {groups[i] for i in test}


@pytest.mark.parametrize("label", [0, 1])
def test_a_training_set_of_one_class_predicts_that_class(label):
    table = _table([label] * 4 + [1 - label] * 2)
    bags = {c: {"meta": {"density": synthetic_density(i, y)}} for i, (c, y) in enumerate(zip(table.case_id, table.label))}
    features, _ = density_features(table, _loader(bags))
    pred, point = predict_fold(features, table.iloc[:4], table.iloc[:0], table.iloc[4:], seed=0)
    assert (pred["raw_probability"] == label).all() and point["model"] == {"name": "DummyClassifier", "C": None, "n_fit": 4}


@pytest.mark.parametrize("settings,pairs", [(["A", "D", "Q"], [("A", "D"), ("Q", "A"), ("Q", "D")]), (["Q"], []),
                                            (["B", "A"], [("A", "B")]), (["Q", "D-rel", "C"], [("C", "D-rel"), ("Q", "C"), ("Q", "D-rel")])])  # fmt: skip
def test_each_deep_setting_is_compared_with_q(settings, pairs):
    assert setting_pairs(settings) == pairs


@pytest.mark.parametrize(
    "overrides",
    [{"cv#settings": ["Q"], "cv#final_model": "all_data"}, {"cv#settings": ["Q"], "cv#final_model": "last_fold"},
     {"cv#settings": ["A", "Q"], "cv#final_setting": "Q"}],
)  # fmt: skip
def test_a_final_model_of_q_is_refused(overrides):
    with pytest.raises(CVConfigError, match="needs a deep setting") as err:
        cv_protocol(DEMO, overrides)
    assert "\n" not in str(err.value)


def test_q_is_a_default_setting_and_the_final_model_stays_deep():
    assert cv_protocol()["settings"][-1] == "Q" and cv_protocol()["final_setting"] == "D"
    assert cv_protocol(DEMO)["final_setting"] == "D"
    assert cv_protocol(DEMO, {"cv#settings": ["Q"], "cv#final_model": "none"})["settings"] == ["Q"]
    assert "Q" not in cv_protocol(DEMO, {"cv#settings": ["A", "D"]})["settings"]  # users drop Q by leaving it out


TINY = {"max_epochs": 1, "threshold": 0.5, "device": "$torch.device('cpu')", "cv#n_folds": 2, "cv#n_repeats": 2,
        "cv#final_model": "none", "cv#calibration_fraction": 0.34, **{f"network_def#{k}": v for k, v in TINY_NET.items()}}


def _datalist(root, n: int, density: bool) -> str:
    rows = []
    for i in range(n):
        bag = make_bag(i, i % 2, case_id=f"c{i:02d}", channels=CHANNELS)
        if density:
            bag["meta"] = {"density": synthetic_density(i, i % 2)}
        torch.save(bag, root / f"c{i:02d}.pt")
        rows.append({"case_id": f"c{i:02d}", "bag": f"c{i:02d}.pt", "label": i % 2})
    pd.DataFrame(rows).to_csv(root / "bags.csv", index=False)
    return str(root / "bags.csv")


def test_q_runs_on_the_deep_folds_with_the_same_inner_cases(tmp_path, monkeypatch):
    """12 cases, A and Q, 2 folds x 2 repeats: Q builds no workflow, tests every case once per repeat in the fold A
    tests it in, learns its point on the very cases A's run held back, and is a row of every report table."""
    seen = []
    real = cv_module.build_workflow
    monkeypatch.setattr(cv_module, "build_workflow",
                        lambda files, o, properties=None: seen.append(dict(o)) or real(files, o, properties=properties))
    out = tmp_path / "out"
    pred = run_cv(_datalist(tmp_path, 12, True), out, files=DEMO, overrides={**TINY, "cv#settings": ["A", "Q"]}, progress=False)
    assert len(seen) == 4 and {o["ssl"] for o in seen} == {"none"}  # A's four runs only
    assert pred.columns.tolist() == list(cv_module._COLUMNS) and set(pred.setting) == {"A", "Q"}
    fold_of = {k: dict(zip(p.case_id, p.fold)) for k, p in pred.groupby(["setting", "repeat"])}
    manifest = pd.read_csv(out / "folds.csv", dtype={"case_id": str})
    for r, part in manifest.groupby("repeat"):
        assert fold_of[("Q", r)] == fold_of[("A", r)] == dict(zip(part.case_id, part.fold))
    for (r, f), test in pred[pred.setting == "Q"].groupby(["repeat", "fold"]):
        q, a = (json.loads((out / "runs" / s / f"r{r}_f{f}" / "operating_point.json").read_text()) for s in ("Q", "A"))
        assert q["calibration_cases"] == a["calibration_cases"] and len(q["calibration_cases"]) == 2
        assert q["source"].startswith("inner validation") and q["model"]["n_fit"] == 4
        assert not set(q["calibration_cases"]) & set(test.case_id)
        assert (test["threshold"] == q["threshold"]).all() and ((test.probability >= q["threshold"]) == test.prediction).all()
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert f"| {Q_LABEL} |" in md and "| (A) vs (Q) |" in md and Q_LABEL in html and "(A) vs (Q)" in html
    table_iv = md.split("## Table IV")[1].split("## Paired")[0]
    assert f"| {Q_LABEL} | ctmil |" in table_iv and table_iv.count("not in the paper") == 1
    for name in ("report.csv", "report_learnt_threshold.csv", "repeat_metrics.csv"):
        assert "Q" in set(pd.read_csv(out / name)["setting"]), name
    assert pd.read_csv(out / "ttests.csv")[["setting_a", "setting_b"]].values.tolist() == [["Q", "A"]]


@pytest.mark.parametrize("settings", [["A", "Q"], ["Q"]])
def test_bags_without_density_skip_q_with_the_reason(tmp_path, caplog, settings):
    datalist = _datalist(tmp_path, 6, density=False)
    overrides = {**TINY, "cv#settings": settings, "cv#n_repeats": 1}
    with caplog.at_level(logging.WARNING, logger="ctmil.evaluate.cv"):
        if settings == ["Q"]:
            with pytest.raises(CVConfigError, match="nothing to cross-validate: setting Q skipped"):
                run_cv(datalist, tmp_path / "out", files=DEMO, overrides=overrides, progress=False)
        else:
            pred = run_cv(datalist, tmp_path / "out", files=DEMO, overrides=overrides, progress=False)
            assert set(pred.setting) == {"A"} and "(Q)" not in (tmp_path / "out" / "report.md").read_text()
    skipped = [r.getMessage() for r in caplog.records if "setting Q skipped" in r.getMessage()]
    assert skipped == ["setting Q skipped: 6 of 6 bags record no lung-density features (meta['density'], e.g. c00): bags "
                       "made before they were recorded; preprocess them again."]  # fmt: skip


@pytest.fixture(scope="module")
def phantom_datalist(tmp_path_factory):
    """12 small NIfTI phantoms, half severe, through the real preprocessing into bags on disk."""
    from ctmil.synthetic.chest import make_phantom
    from ctmil.synthetic.nifti_writer import write_nifti
    from ctmil.transforms import preprocessing_transforms

    root, chain, rows = tmp_path_factory.mktemp("phantoms"), preprocessing_transforms(), []
    for i in range(12):
        vol, _, info = make_phantom(i, shape=(24, 96, 96), spacing=(8.0, 3.6, 3.6), severe=bool(i % 2))
        bag = chain({"image": str(write_nifti(vol, info["spacing"], root / f"p{i}.nii.gz")), "case_id": f"p{i}", "label": info["label"]})
        torch.save(bag, root / f"p{i}.pt")
        rows.append({"case_id": f"p{i}", "bag": f"p{i}.pt", "label": info["label"]})
    pd.DataFrame(rows).to_csv(root / "bags.csv", index=False)
    return root / "bags.csv"


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_q_separates_severe_phantoms_after_real_preprocessing(phantom_datalist, tmp_path, monkeypatch, fraction):
    def no_workflow(*args, **kwargs):
        raise AssertionError("Q must not build a training workflow")

    monkeypatch.setattr(cv_module, "build_workflow", no_workflow)
    overrides = {"cv#settings": ["Q"], "cv#final_model": "none", "cv#n_folds": 3, "cv#n_repeats": 2, "cv#calibration_fraction": fraction}
    pred = run_cv(phantom_datalist, tmp_path, files=DEMO, overrides=overrides, progress=False)
    assert len(pred) == 24 and set(pred.setting) == {"Q"}
    for _, rep in pred.groupby("repeat"):
        assert roc_auc(rep["raw_probability"], rep["label"]) >= 0.9  # pooled out-of-fold AUC of each repeat
    learnt = pd.read_csv(tmp_path / "report_learnt_threshold.csv").set_index("setting")
    assert learnt.loc["Q", "auc_mean"] >= 0.9
    if fraction == 0.0:
        assert (pred["threshold"] == 0.5).all()  # no inner cases: the fixed threshold, as a deep run keeps it


def test_q_learns_the_prevalence_rule_from_every_case_it_was_fitted_and_calibrated_on():
    """As the deep runs' handler: rule "prevalence" thresholds Q's calibrated probability at the severe fraction of
    its fit and calibration rows (here 9 of 27), not of the calibration rows alone (2 of 9)."""
    table = _table([int(i % 3 == 0) for i in range(36)])
    bags = {c: {"meta": {"density": synthetic_density(i, y)}} for i, (c, y) in enumerate(zip(table.case_id, table.label))}
    features, _ = density_features(table, _loader(bags))
    test, calibration, fit = table.iloc[:9], table.iloc[9:18], table.iloc[18:]
    calibration = calibration.assign(label=[1, 0, 0, 1, 0, 0, 0, 0, 0])  # 2 of 9 severe
    _, point = predict_fold(features, fit, calibration, test, 0, rule="prevalence")
    expected = (fit.label.sum() + 2) / (len(fit) + 9)
    assert point["rule"] == "prevalence" and point["threshold"] == pytest.approx(expected) != pytest.approx(2 / 9)
