"""One training stack: ``ctmil train``, ``ctmil cv`` (its all-data model) and ``python -m monai.bundle run``
give bit-identical weights from the same seed and settings (issue 9, "Done when").

The three runs share a tiny bag datalist and one set of settings: 2 epochs, seed 3 (not the default, so a
path that dropped the seed would differ), every case in training, virtual bags from epoch 1 with threshold 0
(so epoch 2 trains on virtual bags and the virtual-bag handler's draws are part of what must agree), and a
tiny network. All three run on one intra-op thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctmil.bundle import build_workflow, config_dir
from ctmil.cli import main
from tests.bundle._datalist import NET_OVERRIDES, write_bag_datalist
from tests.train._bags import one_thread  # noqa: F401 (fixture)

SEED, EPOCHS = 3, 2
SETTINGS = {"train#virtual_bags#start_epoch": 1, "threshold": 0.0, **NET_OVERRIDES}
SETS = [f"{k}={v}" for k, v in SETTINGS.items()]
#: the relative-location head: no gradient with the default absolute SSL task; the density fusion: no optimiser
#: ever moves it, and these bags record no lung density, so it is left unfitted
UNUSED = ("ssl_heads.relative.", "fusion.")


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _initial_weights(datalist: Path, out: Path) -> dict:
    """The network as the train workflow builds it from these settings, before any step."""
    with torch.random.fork_rng(devices=[]):
        workflow = build_workflow(["train.json"], {
            "datalist": str(datalist), "bundle_root": str(out), "seed": SEED, "val_fraction": 0,
            "device": "$torch.device('cpu')", **SETTINGS,
        })
        return {k: v.detach().clone() for k, v in workflow.parser.get_parsed_content("network_def").state_dict().items()}


def _bundle_run(datalist: Path, bundle_root: Path, cwd: Path) -> None:
    configs = config_dir()
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", str(configs / "train.json"), "--meta_file", str(configs / "metadata.json"),
           "--datalist", str(datalist), "--bundle_root", str(bundle_root), "--val_fraction", "0",
           "--max_epochs", str(EPOCHS), "--seed", str(SEED), "--device", "$torch.device('cpu')"]
    for key, value in SETTINGS.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.usefixtures("one_thread")
def test_train_cv_and_bundle_run_give_the_same_weights(tmp_path):
    datalist = write_bag_datalist(tmp_path / "data")
    common = ["--epochs", str(EPOCHS), "--device", "cpu", "-q"]
    assert main(["train", str(datalist), "--out", str(tmp_path / "train"), "--seed", str(SEED), "--val-fraction", "0",
                 *common, "--set", *SETS]) == 0
    assert main(["cv", "--datalist", str(datalist), "--out", str(tmp_path / "cv"), *common, "--set", f"seed={SEED}", *SETS,
                 "cv#n_folds=2", "cv#n_repeats=1", 'cv#settings=["D"]', "cv#final_model=all_data",
                 "cv#calibration_fraction=0"]) == 0  # every case trains, as --val-fraction 0
    _bundle_run(datalist, tmp_path / "bundle", cwd=tmp_path)

    models = {"ctmil train": tmp_path / "train" / "model.pt", "ctmil cv": tmp_path / "cv" / "model.pt",
              "monai.bundle run": tmp_path / "bundle" / "models" / "model.pt"}
    weights = {name: _weights(path) for name, path in models.items()}
    reference = weights["ctmil train"]
    for name, state in weights.items():
        assert state.keys() == reference.keys(), name
        differ = {k: float((state[k] - reference[k]).abs().max()) for k in reference if not torch.equal(state[k], reference[k])}
        assert not differ, f"{name} and ctmil train trained different weights (max abs difference): {differ}"

    # the runs trained: every tensor moved from the initialisation except the head no loss term uses, which
    # stayed exactly there (so the initial weights here are the ones the runs started from)
    initial = _initial_weights(datalist, tmp_path / "init")
    assert initial.keys() == reference.keys()
    unused = [k for k in reference if k.startswith(UNUSED)]
    assert unused and all(torch.equal(reference[k], initial[k]) for k in unused)
    assert [k for k in reference if k not in unused and torch.equal(reference[k], initial[k])] == []

    # epoch 2 trained on virtual bags made from epoch 1's attention (checkpoint of ctmil train's last epoch)
    checkpoint = _weights(tmp_path / "train" / "checkpoints" / f"checkpoint_{EPOCHS}.pt")
    assert len(checkpoint["virtual_bags"]["virtual"]) == 2 and checkpoint["virtual_bags"]["made_at_epoch"] == EPOCHS

    # and every path recorded the same run in model.json
    records = {name: json.loads(path.with_suffix(".json").read_text()) for name, path in models.items()}
    assert records["ctmil train"]["seed"] == SEED and records["ctmil train"]["trained_on"] == 8
    assert records["ctmil cv"] == records["ctmil train"] == records["monai.bundle run"]


@pytest.mark.usefixtures("one_thread")
def test_held_back_cases_are_the_same_in_train_and_cv(tmp_path):
    """ctmil train --val-fraction 0.2 and the CV's all-data model with cv#calibration_fraction 0.2 hold back the
    same cases: same weights and the same operating point learnt on them."""
    datalist = write_bag_datalist(tmp_path / "data", [1, 0] * 5)
    common = ["--epochs", str(EPOCHS), "--device", "cpu", "-q"]
    assert main(["train", str(datalist), "--out", str(tmp_path / "train"), "--seed", str(SEED), "--val-fraction", "0.2",
                 *common, "--set", *SETS]) == 0
    assert main(["cv", "--datalist", str(datalist), "--out", str(tmp_path / "cv"), *common, "--set", f"seed={SEED}", *SETS,
                 "cv#n_folds=2", "cv#n_repeats=1", 'cv#settings=["D"]', "cv#final_model=all_data",
                 "cv#calibration_fraction=0.2"]) == 0
    train, cv = _weights(tmp_path / "train" / "model.pt"), _weights(tmp_path / "cv" / "model.pt")
    assert all(torch.equal(train[k], cv[k]) for k in train)
    points = [json.loads((tmp_path / run / "model.json").read_text())["operating_point"] for run in ("train", "cv")]
    assert points[0] == points[1] and points[0]["n_cases"] == 2 and points[0]["n_positive"] == 1
