"""Stratified grouped folds, configs, datalists, the report and a tiny end-to-end cross-validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import ctmil.evaluate.cv as cv_module
from ctmil.bundle import load_bag_datalist as load_datalist
from ctmil.evaluate.cv import CVConfigError, cv_protocol, run_cv
from ctmil.stats.folds import make_folds, stratified_group_folds
from ctmil.networks import MILNet
from tests.train._bags import CHANNELS, TINY_NET, make_bag, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = ("train.json", "cv.json", "demo.json")


@pytest.mark.parametrize(
    "n_pos,n_neg,n_folds,seed", [(10, 30, 10, 0), (7, 23, 5, 1), (3, 9, 3, 2), (32, 197, 10, 3), (5, 5, 2, 4)]
)
def test_folds_are_stratified_and_cover_every_case_once(n_pos, n_neg, n_folds, seed):
    labels = [1] * n_pos + [0] * n_neg
    folds = stratified_group_folds(labels, [f"p{i}" for i in range(len(labels))], n_folds, seed)
    assert folds.shape == (len(labels),) and set(folds.tolist()) == set(range(n_folds))
    labels = np.array(labels)
    for cls in (0, 1):
        per_fold = np.bincount(folds[labels == cls], minlength=n_folds)
        assert per_fold.max() - per_fold.min() <= 1  # stratified
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_keep_patients_together(seed):
    rng = np.random.default_rng(seed)
    groups = [f"p{g}" for g in rng.integers(0, 25, 60)]
    labels = [int(g in {"p1", "p2", "p3", "p4", "p5", "p6"}) for g in groups]
    folds = stratified_group_folds(labels, groups, 5, seed)
    frame = pd.DataFrame({"group": groups, "fold": folds, "label": labels})
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert frame.groupby("fold")["label"].sum().min() >= 1  # every fold holds a positive


def test_folds_are_deterministic_per_seed():
    labels, groups = [1] * 8 + [0] * 22, list(range(30))
    a = stratified_group_folds(labels, groups, 5, seed=7)
    assert np.array_equal(a, stratified_group_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(a, stratified_group_folds(labels, groups, 5, seed=8))


def test_folds_reject_too_few_groups():
    with pytest.raises(ValueError):
        stratified_group_folds([0, 1, 0], ["a", "a", "b"], 3, 0)


def test_manifest_repeats_cover_each_case_once_and_never_leak():
    n = 24
    data = pd.DataFrame(
        {"case_id": [f"c{i}" for i in range(n)], "bag": "x", "label": [int(i % 4 == 0) for i in range(n)],
         "patient": [f"p{i // 2}" for i in range(n)]}
    )
    manifest = make_folds(data, n_folds=4, n_repeats=3, seed=0)
    assert len(manifest) == 3 * n
    for r, part in manifest.groupby("repeat"):
        assert sorted(part["case_id"]) == sorted(data["case_id"])
        for f in range(4):
            test, train = part[part["fold"] == f], part[part["fold"] != f]
            assert not set(test["case_id"]) & set(train["case_id"])
            assert not set(test["patient"]) & set(train["patient"])
    assert manifest[manifest.repeat == 0]["fold"].tolist() != manifest[manifest.repeat == 1]["fold"].tolist()


def test_protocol_comes_from_the_configs_with_overrides():
    paper = cv_protocol()
    assert (paper["n_folds"], paper["n_repeats"], paper["settings"]) == (10, 5, ["A", "B", "C", "D", "Q"])
    demo = cv_protocol(DEMO, {"cv#n_folds": 2})
    assert demo["n_folds"] == 2 and demo["settings"] == ["A", "D", "Q"] and demo["final_setting"] == "D"
    for bad in ({"cv#settings": ["E"]}, {"cv#settings": []}, {"cv#ssl_task": "both"}, {"cv#n_folds": 1},
                {"cv#final_model": "best"}, {"cv#settings": ["A"], "cv#final_setting": "D"}):
        with pytest.raises(CVConfigError):
            cv_protocol(DEMO, bad)


def test_load_datalist(tmp_path):
    (tmp_path / "bags").mkdir()
    pd.DataFrame(
        {"case_id": ["a", "b", "c"], "bag": ["bags/a.pt", "/abs/b.pt", "bags/c.pt"], "label": [1, 0, -1]}
    ).to_csv(tmp_path / "list.csv", index=False)
    data = load_datalist(tmp_path / "list.csv")
    assert data["case_id"].tolist() == ["a", "b"] and data["patient"].tolist() == ["a", "b"]
    assert data["bag"].tolist() == [str(tmp_path / "bags" / "a.pt"), "/abs/b.pt"]
    with pytest.raises(ValueError):
        load_datalist(pd.DataFrame({"case_id": ["a"], "label": [1]}))


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("bags")
    rows = []
    for i, label in enumerate([1, 1, 0, 0, 0, 0]):
        torch.save(make_bag(i, label, channels=CHANNELS), root / f"case{i}.pt")
        rows.append({"case_id": f"case{i}", "bag": f"case{i}.pt", "label": label, "patient": f"p{i}"})
    pd.DataFrame(rows).to_csv(root / "datalist.csv", index=False)
    return root / "datalist.csv"


TINY = {"max_epochs": 2, "threshold": 0.0, "train#virtual_bags#start_epoch": 1, "device": "$torch.device('cpu')",
        "cv#n_folds": 2, "cv#n_repeats": 1, "cv#settings": ["A", "B"], "cv#final_model": "last_fold",
        **{f"network_def#{k}": v for k, v in TINY_NET.items()}}


def test_run_cv_end_to_end_and_resume(datalist, tmp_path, monkeypatch):
    out = tmp_path / "out"
    predictions = run_cv(datalist, out, files=DEMO, overrides=TINY, progress=False)
    assert predictions.columns.tolist() == ["case_id", "setting", "repeat", "fold", "raw_probability", "label", "probability",
                                           "prediction", "threshold"]
    for setting in ("A", "B"):
        part = predictions[predictions.setting == setting]
        assert sorted(part["case_id"]) == [f"case{i}" for i in range(6)]  # every case tested exactly once
    folds = pd.read_csv(out / "folds.csv")
    merged = predictions.merge(folds, on=["case_id", "repeat"], suffixes=("", "_manifest"))
    assert (merged["fold"] == merged["fold_manifest"]).all()
    fold_of = {s: dict(zip(p["case_id"], p["fold"])) for s, p in predictions.groupby("setting")}
    assert fold_of["A"] == fold_of["B"]  # paired: both settings use the same folds
    for name in ("config.json", "report.md", "report.csv", "ttests.csv", "roc.png", "predictions.csv", "model.pt"):
        assert (out / name).exists(), name
    assert (out / "runs" / "B" / "r0_f1" / "predictions.csv").exists()
    assert not (out / "runs" / "B" / "r0_f1" / "checkpoints").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["overrides"]["max_epochs"] == 2 and config["protocol"]["n_folds"] == 2 and config["n_cases"] == 6
    info = json.loads((out / "model.json").read_text())
    model = MILNet(**info["network"])
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert info["setting"] == "B" and info["virtual_bags"] is True and info["ssl"] == "none"

    def no_training(*args, **kwargs):
        raise AssertionError("finished folds must not be trained again")

    monkeypatch.setattr(cv_module, "_train", no_training)
    again = run_cv(datalist, out, files=DEMO, overrides=TINY, progress=False)
    pd.testing.assert_frame_equal(again, predictions)


def test_run_cv_refuses_an_out_made_from_other_settings(datalist, tmp_path):
    out = tmp_path / "out"
    one = {**TINY, "cv#settings": ["A"], "cv#final_model": "none", "max_epochs": 1}
    run_cv(datalist, out, files=DEMO, overrides=one, progress=False)
    with pytest.raises(CVConfigError, match="--restart"):
        run_cv(datalist, out, files=DEMO, overrides={**one, "max_epochs": 2}, progress=False)
    run_cv(datalist, out, files=DEMO, overrides={**one, "max_epochs": 2}, progress=False, restart=True)
    assert json.loads((out / "config.json").read_text())["overrides"]["max_epochs"] == 2


def test_cv_runs_are_the_bundle_train_workflow(datalist, tmp_path, monkeypatch):
    """Every fold is built by ctmil.bundle.build_workflow from the same config files, with the fold's data."""
    seen = []
    real = cv_module.build_workflow

    def spy(files, overrides, properties=None):
        seen.append((list(files), {**dict(overrides), **dict(properties or {})}))
        return real(files, overrides, properties=properties)

    monkeypatch.setattr(cv_module, "build_workflow", spy)
    run_cv(datalist, tmp_path, files=DEMO, overrides={**TINY, "cv#settings": ["C"], "cv#final_model": "all_data",
                                                        "max_epochs": 1}, progress=False)
    assert len(seen) == 3 and all(Path(f[0][0]).name == "train.json" for f in seen)
    # two folds of 3 training cases (too few for an inner split: all train), then all 6 cases: 4 train, 2 calibrate
    assert [len(o["train_dataset"]) for _, o in seen] == [3, 3, 4]
    assert [o["val_dataset"] is None for _, o in seen] == [True, True, False]
    assert {o["ssl"] for _, o in seen} == {"absolute"} and not any(o["use_virtual_bags"] for _, o in seen)
    assert seen[-1][1]["seed"] == 0  # the final model: root seed
    final_ids = [ds[i]["case_id"] for ds in (seen[-1][1]["train_dataset"], seen[-1][1]["val_dataset"]) for i in range(len(ds))]
    assert sorted(final_ids) == [f"case{i}" for i in range(6)]
    assert (tmp_path / "model.pt").is_file() and not (tmp_path / "runs" / "C" / "all_data").exists()  # no empty folder left


def _ids(ds):
    return set() if ds is None else {ds[i]["case_id"] for i in range(len(ds))}


def test_operating_point_is_learnt_on_inner_cases_never_the_test_fold(tmp_path, monkeypatch):
    """12 cases, 2 folds, a third held back: each run trains on 4 of its 6 training cases, calibrates on the other 2
    and is tested on its 6 test cases; the learnt point reaches predictions.csv, the report and model.json."""
    for i in range(12):
        torch.save(make_bag(i, i % 2, channels=CHANNELS), tmp_path / f"c{i}.pt")
    datalist = tmp_path / "bags.csv"
    pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "bag": [f"c{i}.pt" for i in range(12)],
                  "label": [i % 2 for i in range(12)]}).to_csv(datalist, index=False)  # fmt: skip
    seen = []
    real = cv_module.build_workflow
    monkeypatch.setattr(cv_module, "build_workflow",
                        lambda files, o, properties=None: seen.append({**o, **properties}) or real(files, o, properties=properties))
    out = tmp_path / "out"
    pred = run_cv(datalist, out, files=DEMO, overrides={**TINY, "cv#settings": ["A"], "cv#final_model": "all_data",
                                                          "max_epochs": 1, "threshold": 0.5, "cv#calibration_fraction": 0.34},
                 progress=False)  # fmt: skip
    for o, (_, test) in zip(seen, pred.groupby("fold")):
        fit, calib, tested = _ids(o["train_dataset"]), _ids(o["val_dataset"]), set(test["case_id"])
        assert len(fit) == 4 and len(calib) == 2 and not (fit | calib) & tested and len(fit | calib | tested) == 12
        point = json.loads((out / "runs" / "A" / f"r0_f{test['fold'].iloc[0]}" / "operating_point.json").read_text())
        assert set(point["calibration_cases"]) == calib and point["n_cases"] == 2 and point["n_positive"] == 1
        assert (test["threshold"] == point["threshold"]).all()
        # a Platt map, or (a 1-epoch tiny net may rank the 2 cases wrongly) the fixed threshold, saying why
        assert point["calibration"]["method"] == "platt" or ("rank against" in point["source"] and point["threshold"] == 0.5)
        assert ((test["probability"] >= point["threshold"]).astype(int) == test["prediction"]).all()
    assert len(seen) == 3 and len(_ids(seen[-1]["val_dataset"])) >= 2
    info = json.loads((out / "model.json").read_text())
    assert info["calibration"] == info["operating_point"]["calibration"] and 0.0 <= info["threshold"] <= 1.0
    assert "inner validation" in info["operating_point"]["source"]
    assert "## At the operating point learnt on training data" in (out / "report.md").read_text()
    learnt = pd.read_csv(out / "report_learnt_threshold.csv")
    assert learnt["threshold_mean"].iloc[0] == pytest.approx(pred.drop_duplicates("fold")["threshold"].mean())


def test_relative_ssl_variants_run_beside_the_settings(datalist, tmp_path, monkeypatch):
    """C and C-rel in one CV: same folds and seeds, the absolute and the relative task; the report names both."""
    seen = []
    real = cv_module.build_workflow
    monkeypatch.setattr(cv_module, "build_workflow",
                        lambda files, o, properties=None: seen.append({**o, **properties}) or real(files, o, properties=properties))
    pred = run_cv(datalist, tmp_path, files=DEMO, overrides={**TINY, "cv#settings": ["C", "C-rel"], "max_epochs": 1,
                                                             "cv#final_model": "last_fold"}, progress=False)  # fmt: skip
    assert [o["ssl"] for o in seen] == ["absolute", "absolute", "relative", "relative"]
    assert [o["seed"] for o in seen[:2]] == [o["seed"] for o in seen[2:]]
    assert sorted(pred["setting"].unique()) == ["C", "C-rel"]
    assert json.loads((tmp_path / "model.json").read_text())["setting"] == "C-rel"
    assert "(C-rel) MIL + self-supervision (relative patch location)" in (tmp_path / "report.md").read_text()
