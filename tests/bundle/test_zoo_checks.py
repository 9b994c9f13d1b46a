"""The MONAI model zoo's own checks, run the way its CI runs them: absolute paths, from another working directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctmil.bundle import config_dir
from ctmil.networks import MILNet
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET, make_bags

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil"
CONFIGS = BUNDLE / "configs"


def _bundle(args, cwd):
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr + done.stdout


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A working directory that is neither the bundle nor the checkout."""
    return tmp_path_factory.mktemp("elsewhere")


def test_packaged_configs_are_the_bundle_configs():
    assert config_dir().resolve() == CONFIGS.resolve()


def test_verify_metadata_against_the_shipped_schema(elsewhere):
    out = _bundle(["verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"),
                   "--filepath", str(CONFIGS / "schema" / "meta_schema_20240725.json")], elsewhere)
    assert "metadata is verified with no error" in out


def test_verify_net_in_out_needs_no_trained_weights(elsewhere):
    assert not (elsewhere / "models").exists()
    out = _bundle(["verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
                   "--config_file", str(CONFIGS / "inference.json")], elsewhere)
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_to_torchscript_gives_the_model(elsewhere, tmp_path):
    torch.manual_seed(0)
    net = MILNet(**TINY_NET).eval()
    ckpt = save_model(net, tmp_path / "models")
    _bundle(["ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(ckpt),
             "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
             "--ckpt_path", str(ckpt)], elsewhere)  # inference.json reads the network's shape (one channel here) from it
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 24, 1, 60, 60)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-6)


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_workflow_properties_are_complete(elsewhere, tmp_path, monkeypatch, workflow_type):
    from monai.bundle import ConfigWorkflow

    monkeypatch.chdir(elsewhere)
    rows = []
    for i, bag in enumerate(make_bags([1, 0, 0, 1, 0, 0])):
        torch.save(bag, tmp_path / f"b{i}.pt")
        rows.append({"case_id": bag["case_id"], "bag": f"b{i}.pt", "label": int(bag["label"])})
    pd.DataFrame(rows).to_csv(tmp_path / "datalist.csv", index=False)
    name = "train.json" if workflow_type == "train" else "inference.json"
    overrides = {"bundle_root": str(tmp_path / "bundle"), "datalist": str(tmp_path / "datalist.csv"), "inputs": [str(tmp_path)]}
    workflow = ConfigWorkflow(config_file=str(CONFIGS / name), meta_file=str(CONFIGS / "metadata.json"),
                              workflow_type=workflow_type, **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []


def test_onnx_export_from_another_directory_matches_in_onnxruntime(elsewhere, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(1)
    net = MILNet(**TINY_NET).eval()
    ckpt = save_model(net, tmp_path / "models")
    done = subprocess.run([sys.executable, "-m", "ctmil.cli", "export", "--model", str(ckpt), "--format", "onnx",
                           "--out", str(tmp_path / "model.onnx")], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    x = torch.rand(1, 36, 1, 60, 60)
    got = ort.InferenceSession(str(tmp_path / "model.onnx")).run(None, {"patches": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), net(x), atol=1e-4)
