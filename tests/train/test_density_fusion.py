"""DensityFusionHandler: the default network's fusion is fitted when training ends, from the training and the
inner validation cases, and what it fitted is recorded in model.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ctmil.data.bags import BagDataset
from ctmil.train.engines import predict
from ctmil.transforms import DENSITY_FEATURES
from tests.train._bags import CHANNELS, make_bag, one_thread, train_tiny  # noqa: F401 (a fixture)

F = len(DENSITY_FEATURES)


def _bags(labels, start: int, density: bool = True, separation: float = 3.0):
    """Bags whose patches carry no label signal (all dark) and whose lung density does: the two fraction features
    of severe bags are shifted by ``separation`` (with noise of SD 0.3), the other features are 0."""
    bags = []
    for i, y in enumerate(labels):
        bag = make_bag(start + i, 0.0, case_id=f"c{start + i}", channels=CHANNELS)  # label-free patches
        bag["label"] = torch.tensor(float(y))
        if density:
            g = np.random.default_rng(start + i)
            v = np.zeros(F)
            v[24:26] = separation * y + 0.3 * g.normal(size=2)
            bag["density"] = torch.as_tensor(v, dtype=torch.float32)
        bags.append(bag)
    return bags


TRAIN, VAL, TEST = [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0, 1, 0, 0, 1, 0, 0, 1, 0]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("val,expect", [
    (VAL, "Platt maps on 6 calibration cases (2 positive)"),
    (None, "no calibration cases: raw logits averaged"),
    ([0, 0, 0], "the 3 calibration cases hold one class: raw logits averaged"),
])
def test_the_fusion_is_fitted_at_the_end_and_ranks_by_density(tmp_path, val, expect):
    validate = None if val is None else BagDataset(_bags(val, 100))
    workflow = train_tiny(tmp_path, BagDataset(_bags(TRAIN, 0)), **{"validate#dataset": validate})
    network = workflow.parser.get_parsed_content("network_def")
    record = json.loads((tmp_path / "model.json").read_text())["density_fusion"]
    assert record["fitted"] and expect in record["source"] and record["n_fit"] == len(TRAIN)
    assert network.fusion.is_fitted() and record["weights"] == network.fusion.weights.tolist()
    assert sum(record["weights"]) == pytest.approx(1.0)
    # the patches say nothing here, the density everything: the fused model ranks the new cases by their density
    out = predict(network, BagDataset(_bags(TEST, 200)))
    assert roc_auc_score(out["label"], out["prob"]) == 1.0
    # the model written beside it predicts the same (the fusion lives in its weights)
    from ctmil.infer.model_io import load_model

    loaded = load_model(tmp_path / "model.pt")
    bag = _bags(TEST[:1], 200)[0]
    assert loaded.predict(bag["patches"], bag["density"]).raw_probability == pytest.approx(out["prob"][0], abs=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_bags_without_density_leave_the_paper_network(tmp_path, caplog):
    workflow = train_tiny(tmp_path, BagDataset(_bags(TRAIN, 0, density=False)))
    network = workflow.parser.get_parsed_content("network_def")
    assert not network.fusion.is_fitted()
    record = json.loads((tmp_path / "model.json").read_text())["density_fusion"]
    assert record == {"fitted": False, "source": "not fitted: a training bag records no lung density; the MIL network alone"}
    assert "density fusion not fitted" in caplog.text


@pytest.mark.usefixtures("one_thread")
def test_a_paper_run_has_no_fusion_and_no_record(tmp_path):
    workflow = train_tiny(tmp_path, BagDataset(_bags(TRAIN, 0)), density_fusion=False)
    assert workflow.parser.get_parsed_content("network_def").fusion is None
    record = json.loads((tmp_path / "model.json").read_text())
    assert "density_fusion" not in record and "n_density" not in record["network"]


@pytest.mark.usefixtures("one_thread")
def test_a_component_that_ranks_the_calibration_cases_backwards_gets_no_weight(tmp_path):
    """Validation cases whose density points the other way: the density logit's Platt slope is <= 0 there."""
    # seeded so that the barely trained MIL logit ranks these calibration cases with the labels (its own slope > 0),
    # which leaves the density logit the only component that ranks them against the labels
    backwards = _bags(VAL, 200, separation=-3.0)
    workflow = train_tiny(tmp_path, BagDataset(_bags(TRAIN, 0)), **{"validate#dataset": BagDataset(backwards)})
    record = json.loads((tmp_path / "model.json").read_text())["density_fusion"]
    assert record["weights"] == [1.0, 0.0] and "the density logit ranks them against the labels" in record["source"]
    assert not workflow.parser.get_parsed_content("network_def").fusion.is_fitted()
