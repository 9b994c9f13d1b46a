"""OperatingPointHandler learns calibration + threshold on held-back cases at COMPLETED; ModelWriter records it;
inference and evaluation apply what was recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from ctmil.data.bags import BagDataset
from ctmil.stats.operating_point import apply_operating_point
from ctmil.infer.model_io import ModelError, load_model, recorded_operating_point
from ctmil.networks import MILNet
from ctmil.train.engines import predict
from ctmil.train.handlers import ModelWriter, OperatingPointHandler
from tests.train._bags import TINY_NET, make_bags


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return MILNet(**TINY_NET).eval()


def _run(handlers):
    engine = Engine(lambda e, b: None)
    for h in handlers:
        h.attach(engine)
    engine.run([0], max_epochs=1)
    return engine


@pytest.mark.parametrize("writer_first", [False, True])
def test_point_is_fitted_on_the_given_cases_and_written_with_the_model(net, tmp_path, writer_first):
    """The writer names the handler it depends on: attached before or after it, it writes the learnt point."""
    calib = BagDataset(make_bags([1, 0, 1, 0, 0, 1, 0, 0]))
    handler = OperatingPointHandler(net, calib, "platt", "youden", fallback_threshold=0.5)
    writer = ModelWriter(net, tmp_path, {"threshold": 0.5, "setting": "A"}, operating_point=handler)
    _run([writer, handler] if writer_first else [handler, writer])
    point = handler.result
    assert point["n_cases"] == 8 and point["n_positive"] == 3
    assert point["calibration"]["method"] == "platt" and point["source"].startswith("inner validation")
    raw = np.asarray(predict(net, calib)["prob"])
    _, decision = apply_operating_point(point, raw)
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0])
    youden = decision[labels == 1].mean() + (1 - decision[labels == 0]).mean() - 1
    best = max((raw[labels == 1] >= t).mean() + (raw[labels == 0] < t).mean() - 1 for t in raw)
    assert youden == pytest.approx(best)  # the learnt point is Youden-optimal on its own cases
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["threshold"] == point["threshold"] and info["calibration"] == point["calibration"]
    assert info["operating_point"] == point and info["setting"] == "A"
    assert recorded_operating_point(tmp_path / "model.pt") == point


@pytest.mark.parametrize("train_labels, expected", [([1, 0, 0, 0], 4 / 12), ([], 3 / 8), ([1, 1, 1, 1, 1, 1, 1, 0], 10 / 16)])
def test_the_prevalence_rule_thresholds_at_the_severe_fraction_of_every_case_it_learnt_from(net, train_labels, expected):
    """rule "prevalence": the calibrated probability is called severe at or above the severe fraction of the training
    and calibration cases together (the Youden-optimal threshold of calibrated probabilities), with no midpoint."""
    calib = BagDataset(make_bags([1, 0, 1, 0, 0, 1, 0, 0]))
    train = BagDataset(make_bags(train_labels)) if train_labels else None
    handler = OperatingPointHandler(net, calib, "platt", "prevalence", train_dataset=train)
    _run([handler])
    point = handler.result
    assert point["rule"] == "prevalence" and point["threshold"] == pytest.approx(expected) == point["target"]
    assert point["calibration"]["method"] == "platt" and point["n_cases"] == 8


def test_without_cases_the_fixed_threshold_is_recorded(net, tmp_path):
    handler = OperatingPointHandler(net, None, fallback_threshold=0.3)
    _run([handler, ModelWriter(net, tmp_path, operating_point=handler)])
    assert handler.result["threshold"] == 0.3
    assert json.loads((tmp_path / "model.json").read_text())["calibration"] == {"method": "none"}


def test_bad_arguments_fail_when_built(net):
    with pytest.raises(ValueError, match="calibration must be one of"):
        OperatingPointHandler(net, None, calibration="beta")


def test_inference_applies_the_recorded_point(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "model.pt")
    point = {"calibration": {"method": "platt", "coef": 2.0, "intercept": 1.0}, "threshold": 0.8, "rule": "youden",
             "target": None, "n_cases": 8, "n_positive": 3, "source": "inner validation (8 cases, 3 positive)"}
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET, "operating_point": point}))
    model = load_model(tmp_path / "model.pt")
    pred = model.predict(make_bags([1])[0]["patches"])
    raw = pred.raw_probability
    expected = 1 / (1 + np.exp(-(2.0 * np.log(raw / (1 - raw)) + 1.0)))
    assert model.threshold == 0.8 and pred.probability == pytest.approx(expected)
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET, "operating_point": {"threshold": 7}}))
    with pytest.raises(ModelError, match="unusable operating point"):
        load_model(tmp_path / "model.pt")


def test_evaluate_applies_the_recorded_point(net, tmp_path):
    from ctmil.evaluate.held_out import evaluate_model
    from tests.bundle._datalist import write_bag_datalist

    datalist = write_bag_datalist(tmp_path / "data", [1, 0, 1, 0, 0, 1], channels=1)  # the paper network's one channel
    torch.save(net.state_dict(), tmp_path / "model.pt")
    point = {"calibration": {"method": "platt", "coef": 3.0, "intercept": 2.0}, "threshold": 0.6, "rule": "youden",
             "target": None, "n_cases": 8, "n_positive": 3, "source": "inner validation (8 cases, 3 positive)"}
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET, "operating_point": point}))
    result = evaluate_model(tmp_path / "model.pt", datalist, tmp_path / "eval", n_resamples=50)
    raw = np.asarray(predict(net, BagDataset(make_bags([1, 0, 1, 0, 0, 1])))["prob"])
    calibrated, decision = apply_operating_point(point, raw)
    got = result["predictions"].set_index("case_id").loc[[f"case{i}" for i in range(6)]]
    np.testing.assert_allclose(got["probability"], calibrated, rtol=1e-5)
    assert (got["prediction"].to_numpy() == decision).all() and result["threshold"] == 0.6
    assert result["threshold_source"] == "youden on inner validation (8 cases, 3 positive)"


def test_a_model_recorded_before_the_window_keeps_its_preprocessing(net, tmp_path):
    """model.json from before window_hu / max_slices existed: inference preprocesses as that model was trained."""
    from ctmil.infer.model_io import recorded_preprocessing
    from ctmil.transforms import preprocessing_transforms

    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET, "preprocessing": {"min_slices": 8}}))
    old = recorded_preprocessing(tmp_path / "model.pt")
    assert old["window_hu"] is None and old["max_slices"] is None and old["slab_mm"] is None and old["patch_norm"] == "minmax"
    assert load_model(tmp_path / "model.pt").preprocessing == old
    chain = preprocessing_transforms(**old)  # a valid chain, making the one min-max channel the model was trained on
    assert [t.patch_norm for t in chain.transforms if hasattr(t, "patch_norm")] == ["minmax"]
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET, "preprocessing": {"window_hu": [-1000, 400], "max_slices": 6}}))
    new = recorded_preprocessing(tmp_path / "model.pt")
    assert new["window_hu"] == (-1000, 400) and new["max_slices"] == 6
    (tmp_path / "model.json").write_text(json.dumps({"network": TINY_NET}))
    assert recorded_preprocessing(tmp_path / "model.pt") == {"patch_norm": "minmax"}  # nothing recorded: today's defaults, but the one channel of the weights
