"""Bag datalists as inputs of the infer workflow (the evaluation workflow's second kind of input): cases, rows and
what a bag without CT gets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctmil.infer.bag_inputs import cases_or_bags, is_bag_case, load_bag_case
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import NO_CT_WARNING, InferenceOptions
from ctmil.io.discovery import discover_cases
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET, make_bags


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Four bag files (relative paths), one label missing from the datalist, one bag file gone."""
    root = tmp_path_factory.mktemp("bags")
    rows = []
    for bag, label in zip(make_bags([0, 1, 0, 1]), ["0", "1", "", "1"]):
        torch.save(bag, root / f"{bag['case_id']}.pt")
        rows.append({"case_id": bag["case_id"], "bag": f"{bag['case_id']}.pt", "label": label})
    rows.append({"case_id": "gone", "bag": "gone.pt", "label": "0"})
    pd.DataFrame(rows).to_csv(root / "datalist.csv", index=False)
    return root / "datalist.csv"


def test_a_bag_datalist_gives_one_case_per_row(bags):
    cases = cases_or_bags([bags], labels={"case2": 0.0})
    assert [c["case_id"] for c in cases] == ["case0", "case1", "case2", "case3", "gone"]
    assert [c["label"] for c in cases] == [0.0, 1.0, 0.0, 1.0, 0.0]  # case2's label from the labels mapping
    assert all(is_bag_case(c) and c["image"].startswith(str(bags.parent)) for c in cases[:4])  # resolved paths
    assert cases[4]["image"] is None and cases[4]["error"] == "bag not found: gone.pt"
    bag, seconds, _ = load_bag_case(cases[1])
    assert bag["case_id"] == "case1" and bag["label"] == 1.0 and seconds >= 0 and bag["patches"].dim() == 4


@pytest.mark.parametrize("label, expected", [("2", "label"), ("yes", "label")])
def test_a_bad_label_is_that_case_s_error(tmp_path, bags, label, expected):
    table = pd.read_csv(bags, dtype=str, keep_default_na=False)
    table.loc[0, "label"] = label
    table["bag"] = [str(bags.parent / b) for b in table["bag"]]
    table.to_csv(tmp_path / "dl.csv", index=False)
    case = cases_or_bags(tmp_path / "dl.csv")[0]
    assert case["image"] is None and expected in case["error"]


def test_a_bag_datalist_is_read_alone_and_ct_inputs_go_to_discovery(tmp_path, bags):
    with pytest.raises(ValueError, match="on its own"):
        cases_or_bags([bags, tmp_path])
    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    write_nifti(vol, info["spacing"], tmp_path / "in" / "c0.nii.gz")
    assert cases_or_bags([tmp_path / "in"], progress=False) == discover_cases([tmp_path / "in"], progress=False)


def test_the_infer_workflow_predicts_bags_without_overlays(tmp_path, bags):
    torch.manual_seed(0)
    model = save_model(MILNet(**TINY_NET), tmp_path / "model")
    options = InferenceOptions(threshold=0.5, save_maps=True, save_overlays=True)
    frame, n_failed = run_inference([bags], model, tmp_path / "out", options, progress=False)
    assert frame["case_id"].tolist() == ["case0", "case1", "case2", "case3", "gone"] and n_failed == 1
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 4 and np.isfinite(ok["probability"].astype(float)).all()
    assert (ok["overlay_paths"].fillna("") == "").all() and ok["warning"].str.contains(NO_CT_WARNING, regex=False).all()
    assert frame.set_index("case_id").loc["gone", "error"] == "bag not found: gone.pt"
