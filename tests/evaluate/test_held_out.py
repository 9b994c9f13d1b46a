"""``ctmil evaluate`` on tiny bags and small NIfTI phantoms: metrics equal direct computation on the written
predictions, CIs, determinism, the recorded threshold, plots, exit codes 2 and 3."""

import argparse
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, f1_score, recall_score,
                             roc_auc_score)  # fmt: skip

from ctmil import cli
from ctmil.data.bags import BagDataset
from ctmil.stats.calibration import expected_calibration_error
from ctmil.cli.evaluate import add_parser, run as cmd_evaluate
from ctmil.evaluate import held_out
from ctmil.evaluate.held_out import evaluate_model, resolve_threshold
from ctmil.stats.statistics import bootstrap_ci, delong_auc_ci
from ctmil.infer.model_io import load_model
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.train.engines import predict
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET, make_bags

LABELS = [0, 1, 0, 1, 0, 1, 0, 0, 1, 1]
CONTENT = [0, 1, 1, 0, 0, 1, 0, 1, 1, 0]  # what the bags look like (positives have bright patches)
N_RESAMPLES = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads mostly wait for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    """Bag files and their datalist (relative paths); the datalist's labels override the bags' own (CONTENT), so
    the untrained network ranks the cases neither perfectly nor at random."""
    root = tmp_path_factory.mktemp("bags")
    rows = []
    for bag, label in zip(make_bags(CONTENT), LABELS):
        torch.save(bag, root / f"{bag['case_id']}.pt")
        rows.append({"case_id": bag["case_id"], "bag": f"{bag['case_id']}.pt", "label": label})
    path = root / "datalist.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model(datalist, tmp_path_factory):
    """A tiny untrained MILNet whose model.json records a threshold between its middle two probabilities (so the
    recorded threshold, not 0.5, decides: half the cases are called positive)."""
    torch.manual_seed(0)
    network, folder = MILNet(**TINY_NET), tmp_path_factory.mktemp("model")
    table = pd.read_csv(datalist)
    probs = predict(network.eval(), BagDataset([str(datalist.parent / b) for b in table["bag"]]))["prob"]
    return save_model(network, folder, info={"threshold": round(float(np.median(probs)), 6)})


@pytest.fixture(scope="module")
def recorded(model):
    return json.loads(model.with_suffix(".json").read_text())["threshold"]


@pytest.fixture(scope="module")
def result(model, datalist, tmp_path_factory):
    return evaluate_model(model, datalist, tmp_path_factory.mktemp("eval"), n_resamples=N_RESAMPLES, seed=3)


@pytest.fixture
def main():
    """``ctmil.cli.main``, with ``evaluate`` among its commands."""
    assert "evaluate" in cli.build_parser()._subparsers._group_actions[0].choices
    return cli.main


def _frame(result):
    return pd.read_csv(result["metrics_csv"]).set_index("metric")


def test_metrics_equal_direct_computation_on_written_predictions(result, recorded):
    pred = pd.read_csv(result["predictions_csv"])
    assert list(pred.columns) == ["case_id", "probability", "prediction", "label"]
    y, p = pred["label"].to_numpy(), pred["probability"].to_numpy()
    assert list(pred["label"]) == LABELS and (pred["prediction"] == (p >= recorded)).all() and pred["prediction"].sum() == 5
    m = _frame(result)
    expected = {
        "accuracy": accuracy_score(y, pred["prediction"]), "sensitivity": recall_score(y, pred["prediction"]),
        "specificity": recall_score(1 - y, 1 - pred["prediction"]), "f1": f1_score(y, pred["prediction"]),
        "auc": roc_auc_score(y, p), "pr_auc": average_precision_score(y, p), "auc_delong": roc_auc_score(y, p),
        "brier": brier_score_loss(y, p), "ece": expected_calibration_error(p, y, 10), "threshold": recorded,
    }  # fmt: skip
    for name, value in expected.items():
        assert m.loc[name, "estimate"] == pytest.approx(value, abs=1e-9), name
    ci = bootstrap_ci(y, p, recorded, n_resamples=N_RESAMPLES, seed=3, stratified=True)
    np.testing.assert_allclose(m.loc[list(ci.index), ["lower", "upper"]], ci[["lower", "upper"]])
    delong = delong_auc_ci(y, p)
    assert (m.loc["auc_delong", "lower"], m.loc["auc_delong", "upper"]) == pytest.approx((delong.lower, delong.upper))
    assert "300 stratified resamples, seed 3" in m.loc["auc", "method"] and "DeLong" in m.loc["auc_delong", "method"]


def test_probabilities_are_those_of_predict(model, datalist, result):
    table = pd.read_csv(datalist)
    dataset = BagDataset([str(datalist.parent / b) for b in table["bag"]], labels=LABELS, case_ids=table["case_id"].tolist())
    direct = predict(load_model(model).module, dataset)
    pred = pd.read_csv(result["predictions_csv"])
    assert pred["case_id"].tolist() == direct["case_id"]
    # the evaluation workflow is the infer workflow: its table keeps 6 decimals, as ctmil infer's predictions.csv
    np.testing.assert_allclose(pred["probability"], direct["prob"], rtol=0, atol=5e-7)
    assert np.ptp(pred["probability"]) > 0  # the untrained net still ranks the cases: AUC is not a constant 0.5


def test_intervals_contain_the_estimate(result):
    m = _frame(result)
    with_ci = m.dropna(subset=["lower"])
    assert set(with_ci.index) == {"accuracy", "sensitivity", "specificity", "f1", "auc", "pr_auc", "auc_delong"}
    assert ((with_ci["lower"] <= with_ci["estimate"] + 1e-12) & (with_ci["estimate"] <= with_ci["upper"] + 1e-12)).all()
    assert (with_ci["lower"] < with_ci["upper"]).any()


def test_deterministic_for_a_seed(model, datalist, result, tmp_path):
    again = evaluate_model(model, datalist, tmp_path / "again", n_resamples=N_RESAMPLES, seed=3)
    assert again["metrics_csv"].read_bytes() == result["metrics_csv"].read_bytes()
    assert again["predictions_csv"].read_bytes() == result["predictions_csv"].read_bytes()


def test_threshold_given_recorded_or_default(model, datalist, result, recorded, tmp_path):
    assert recorded != 0.5 and resolve_threshold(None, model) == (recorded, "threshold recorded in model.json")
    assert resolve_threshold(0.7, model) == (0.7, "given (--threshold)")
    assert resolve_threshold(None, tmp_path / "bare.pt") == (0.5, "default 0.5 (no operating point recorded with the model)")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_threshold(1.5, model)
    probs = pd.read_csv(result["predictions_csv"])["probability"]
    lowest = float(probs.min())
    out = evaluate_model(model, datalist, tmp_path / "b", threshold=lowest, n_resamples=50)
    assert out["predictions"]["prediction"].tolist() == [1] * 10 and out["threshold_source"] == "given (--threshold)"
    assert out["metrics"].set_index("metric").loc["specificity", "estimate"] == 0.0
    assert "given (--threshold)" in out["report"].read_text()


def test_plots_and_report(result, recorded):
    for key in ("roc", "reliability"):
        image = np.asarray(Image.open(result[key]).convert("L"), dtype=np.float64)
        assert image.shape[0] > 200 and image.std() > 5 and (image < 100).mean() > 0.002, key  # drawn, not blank
    text = result["report"].read_text()
    assert "| AUC (DeLong) |" in text and f"threshold {recorded:.4g} (threshold recorded in model.json)" in text and "![ROC curve](roc.png)" in text
    assert "10 cases (5 positive, 5 negative)" in text and "stratified" in text


def test_unlabelled_cases_are_left_out_and_labels_fill_blanks(model, datalist, tmp_path, caplog):
    table = pd.read_csv(datalist, dtype=str).assign(bag=lambda t: [str(datalist.parent / b) for b in t["bag"]])
    table.loc[[0, 1], "label"] = ""
    table.to_csv(tmp_path / "dl.csv", index=False)
    pd.DataFrame({"case_id": ["case1"], "label": [1]}).to_csv(tmp_path / "labels.csv", index=False)
    with caplog.at_level(logging.WARNING):
        out = evaluate_model(model, tmp_path / "dl.csv", tmp_path / "o", labels=tmp_path / "labels.csv", n_resamples=50)
    assert out["predictions"]["case_id"].tolist() == [f"case{i}" for i in range(1, 10)]
    assert "1 case(s) without a 0/1 label are left out: case0" in caplog.text
    assert "0 failed, 1 without a 0/1 label" in out["report"].read_text()


def test_command_through_its_own_parser(model, datalist, recorded, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ctmil")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", "--model", str(model), "--datalist", str(datalist), "--out", str(tmp_path / "o"),
                              "--n-resamples", "50", "-q"])  # fmt: skip
    assert args.func is cmd_evaluate and cmd_evaluate(args) == 0
    out = capsys.readouterr().out
    assert f"threshold {recorded:.4g} (threshold recorded in model.json)" in out and "| PR-AUC |" in out
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"metrics.csv", "predictions.csv", "evaluation.md", "roc.png", "reliability.png",
                                                             "report.html", "inference"}  # inference/: the evaluation workflow's own table
    with pytest.raises(cli.UsageError, match="not both"):
        cmd_evaluate(parser.parse_args(["evaluate", str(datalist), "--model", str(model), "--datalist", str(datalist), "--out", str(tmp_path)]))
    with pytest.raises(cli.UsageError, match="either"):
        cmd_evaluate(parser.parse_args(["evaluate", "--model", str(model), "--out", str(tmp_path)]))


def test_one_class_exits_2_with_one_line(main, model, datalist, tmp_path, capsys):
    table = pd.read_csv(datalist).assign(bag=lambda t: [str(datalist.parent / b) for b in t["bag"]])
    table[table["label"] == 0].to_csv(tmp_path / "negatives.csv", index=False)
    assert main(["evaluate", "--model", str(model), "--datalist", str(tmp_path / "negatives.csv"), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "each class; got 0 positive and 5 negative" in err[0]


def test_a_failing_bag_exits_3(main, model, datalist, tmp_path, capsys):
    table = pd.read_csv(datalist).assign(bag=lambda t: [str(datalist.parent / b) for b in t["bag"]])
    table.loc[2, "bag"] = str(tmp_path / "gone.pt")
    table.to_csv(tmp_path / "dl.csv", index=False)
    args = ["evaluate", "--model", str(model), "--datalist", str(tmp_path / "dl.csv"), "--out", str(tmp_path / "o"), "-q",
            "--n-resamples", "50"]  # fmt: skip
    assert main(args) == 3
    captured = capsys.readouterr()
    failed = [ln for ln in captured.err.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED case2: ") and "bag not found: gone.pt" in failed[0]
    assert "| Accuracy |" in captured.out
    assert len(pd.read_csv(tmp_path / "o" / "predictions.csv")) == 9
    assert "case2: failed" in (tmp_path / "o" / "evaluation.md").read_text()


def test_ct_phantoms_through_inference(main, model, tmp_path, capsys, monkeypatch):
    """NIfTI phantoms (labels from --labels, one left unlabelled) and one unreadable file: predicted by
    run_inference into OUT/inference; the unlabelled case is left out with a warning, the broken one gives exit 3."""
    table = generate_cohort(tmp_path / "c", n=4, seed=1, formats=("nifti",), shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0), progress=False)
    unlabelled = table.loc[table["label"] == 0, "case_id"].iloc[0]
    table.loc[table["case_id"] != unlabelled, ["case_id", "label"]].to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file")
    args = ["evaluate", str(tmp_path / "c" / "nifti"), str(tmp_path / "junk.nii.gz"), "--model", str(model),
            "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o"), "-q", "--n-resamples", "100"]  # fmt: skip
    records = []  # on the module's logger: the bundle workflow's logging.conf replaces the root's handlers (caplog's)
    collect = logging.Handler(logging.WARNING)
    collect.emit = lambda record: records.append(record.getMessage())
    monkeypatch.setattr(held_out.logger, "handlers", [collect])
    assert main(args) == 3
    err = capsys.readouterr().err
    assert [ln.split(":")[0] for ln in err.splitlines() if ln.startswith("FAILED")] == ["FAILED junk"]
    assert any(f"left out: {unlabelled}" in r for r in records)
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert sorted(pred["case_id"]) == sorted(set(table["case_id"]) - {unlabelled})
    inference = pd.read_csv(tmp_path / "o" / "inference" / "predictions.csv")
    assert sorted(inference["case_id"]) == sorted([*table["case_id"], "junk"])
    merged = pred.merge(inference, on="case_id", suffixes=("", "_inference"))
    np.testing.assert_allclose(merged["probability"], merged["probability_inference"])
    assert (merged["label"] == merged["case_id"].map(dict(zip(table["case_id"], table["label"])))).all()
    m = pd.read_csv(tmp_path / "o" / "metrics.csv").set_index("metric")
    assert m.loc["auc", "estimate"] == pytest.approx(roc_auc_score(pred["label"], pred["probability"]))
    assert np.isnan(m.loc["auc_delong", "lower"]) and "at least 2 cases of each class" in m.loc["auc_delong", "method"]
    assert "1 failed, 1 without a 0/1 label" in (tmp_path / "o" / "evaluation.md").read_text()


@pytest.mark.parametrize("n_pos, n_neg, has_ci", [(3, 3, False), (4, 20, False), (5, 5, True), (12, 30, True)])
def test_too_few_cases_give_no_ci_instead_of_an_exact_looking_one(n_pos, n_neg, has_ci):
    from ctmil.evaluate.held_out import _table, held_out_metrics

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    probs = np.clip(0.3 * labels + rng.uniform(0, 0.7, labels.size), 0, 1)
    m = held_out_metrics(labels, probs, 0.5, n_resamples=200).set_index("metric")
    boot = m.loc[["accuracy", "sensitivity", "specificity", "auc"]]
    assert boot["lower"].notna().all() == has_ci
    assert boot["method"].str.startswith("n too small for a CI").all() == (not has_ci)
    table = _table(m.reset_index(), 0.95)
    assert ("n too small" in table) == (not has_ci)


def test_a_constant_metric_is_said_to_be_constant():
    """Every case predicted negative: accuracy is the share of negatives in every stratified resample."""
    from ctmil.evaluate.held_out import held_out_metrics

    labels = np.r_[np.ones(6), np.zeros(12)]
    m = held_out_metrics(labels, np.full(18, 0.1) + np.linspace(0, 0.01, 18), 0.5, n_resamples=200).set_index("metric")
    assert m.loc["accuracy", "lower"] == m.loc["accuracy", "upper"] and "every resample gave this value" in m.loc["accuracy", "method"]


def test_ct_inputs_without_both_classes_are_refused_before_inference(tmp_path, monkeypatch):
    """No study is read when the labels cannot give both classes (issue 25): the refusal comes before inference."""
    import ctmil.evaluate.held_out as held_out
    from ctmil.networks import MILNet
    from ctmil.synthetic.phantoms import make_phantom, write_nifti
    from ctmil.train.handlers import save_model

    for i in range(2):
        vol, _, info = make_phantom(i, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
        write_nifti(vol, info["spacing"], tmp_path / "in" / f"c{i}.nii.gz")
    (tmp_path / "labels.csv").write_text("case_id,label\nc0,1\nc1,1\n")
    model = save_model(MILNet(feature_dim=16, attention_dim=8, ssl_hidden=8), tmp_path / "m")
    monkeypatch.setattr(held_out, "run_inference", lambda *a, **k: pytest.fail("inference ran"))
    with pytest.raises(ValueError, match="give 2 positive and 0 negative: nothing was run"):
        held_out.evaluate_model(model, [tmp_path / "in"], tmp_path / "out", labels=tmp_path / "labels.csv")
    assert not (tmp_path / "out").exists()
