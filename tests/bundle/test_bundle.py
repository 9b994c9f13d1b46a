"""The MONAI bundle ``bundles/covid19_severity_mil``: its workflows on tiny data (configs and tooling: test_bundle_configs.py).

The train workflow runs through ``monai.bundle.ConfigWorkflow`` on tiny bag files; the model it writes is then
evaluated with ``python -m monai.bundle run`` over ``inference.json`` + ``evaluate.json`` on CT phantoms (which the
workflow preprocesses), used by the inference workflow, and exported to TorchScript with
``python -m monai.bundle ckpt_export``. The model is the bundle's default network, as a user trains it. The
command-line tools run as users run them, from the bundle folder with relative config paths; everything they
write goes to temporary folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import ignite.distributed as idist
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from ctmil import bundle as bu
from ctmil.data.epochs import EpochBags
from ctmil.stats.metrics import binary_metrics
from ctmil.stats.operating_point import apply_operating_point
from ctmil.infer.model_io import load_model
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.train.distributed import DistributedForwardAll, free_port
from ctmil.train.engines import predict
from ctmil.train.handlers.virtual_bags import virtual_slots
from ctmil.transforms import DENSITY_FEATURES
from tests.bundle._datalist import NET_OVERRIDES, write_bag_datalist
from tests.train._bags import CHANNEL_NET, CHANNELS, TINY_NET

#: train.json's default network: the paper's, fused with the lung-density model (ctmil.networks.fusion)
FUSED = {"n_density": len(DENSITY_FEATURES), "density_use": "fusion", **CHANNEL_NET}

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil"
CONFIGS = BUNDLE / "configs"
TRAIN, INFERENCE, MULTI_GPU, META = (str(CONFIGS / n) for n in ("train.json", "inference.json", "multi_gpu_train.json", "metadata.json"))
#: a non-default preprocessing setting: inference must take it from model.json, not from its own defaults
PREPROCESSING = {"preprocessing_args#min_area_fraction": 0.5}
CPU = "$torch.device('cpu')"


@contextlib.contextmanager
def _quiet_rng_one_thread():
    """One intra-op thread, and the global RNG as it was afterwards (workflows seed it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)


def _bundle_cli(*args: str, timeout: int = 300) -> None:
    """``python -m monai.bundle ARGS`` from the bundle folder, as the model zoo documents it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def _preprocessing() -> dict:
    """train.json's ``preprocessing`` with :data:`PREPROCESSING` applied, as the workflows parse it."""
    parser = ConfigParser(ConfigParser.load_config_files([TRAIN]))
    parser.update(PREPROCESSING)
    return parser.get_parsed_content("preprocessing_args")


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> Path:
    return write_bag_datalist(tmp_path_factory.mktemp("bags"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six NIfTI phantoms (2 severe) and a datalist CSV of CT files (``case_id, image, label``), relative paths."""
    root = tmp_path_factory.mktemp("cohort")
    table = generate_cohort(root, n=6, seed=0, formats=("nifti",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0), progress=False)
    table[["case_id", "nifti_path", "label"]].rename(columns={"nifti_path": "image"}).to_csv(root / "datalist.csv", index=False)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bags):
    """train.json for 2 epochs on the tiny bags (2 of 8 held out, validated every epoch), virtual bags from
    epoch 1 with threshold 0 so that every positive bag feeds the pools."""
    root = tmp_path_factory.mktemp("run")
    with _quiet_rng_one_thread():
        workflow = ConfigWorkflow(
            config_file=TRAIN, meta_file=META, logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
            datalist=str(bags), bundle_root=str(root), device=CPU, max_epochs=2, val_fraction=0.25, val_interval=1,
            threshold=0.0, **{"train#virtual_bags#start_epoch": 1}, **PREPROCESSING,
        )
        workflow.initialize()
        missing = workflow.check_properties()
        workflow.run()
        workflow.finalize()
    return workflow, root, missing


@pytest.fixture(scope="module")
def evaluated(trained, cohort) -> pd.DataFrame:
    """``monai.bundle run`` of inference.json + evaluate.json (the evaluation workflow ``ctmil evaluate`` runs) on the
    phantoms' CT datalist with the trained model: its preprocessing settings come from model.json."""
    _, root, _ = trained
    _bundle_cli("run", "--config_file", "['configs/inference.json','configs/evaluate.json']", "--meta_file", "configs/metadata.json",
                "--bundle_root", str(root), "--inputs", f"['{cohort / 'datalist.csv'}']", "--device", CPU, "--options#save_overlays", "False")
    return pd.read_csv(root / "eval" / "predictions.csv", dtype={"case_id": str})


@pytest.fixture(scope="module")
def inferred(trained, cohort) -> pd.DataFrame:
    """inference.json with the trained model (no other setting) on two phantoms, one of each class."""
    _, root, _ = trained
    with _quiet_rng_one_thread():
        workflow = ConfigWorkflow(config_file=INFERENCE, meta_file=META, workflow_type=None, device=CPU,
                                  ckpt_path=str(root / "models" / "model.pt"), output_dir=str(root / "inference"),
                                  inputs=[str(cohort / "nifti" / f"{c}.nii.gz") for c in ("case_0002", "case_0004")])
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return pd.read_csv(root / "inference" / "predictions.csv", dtype={"case_id": str})


# ------------------------------------------------------------------------------------------------ workflows
def test_train_workflow(trained, bags):
    workflow, root, missing = trained
    assert missing == []  # MONAI's required train properties are all there
    content = workflow.parser.get_parsed_content
    trainer = content("train#trainer")
    assert trainer.state.epoch == 2
    assert all(np.isfinite(trainer.state.metrics[name]) for name in ("loss", "mil", "ssl"))
    assert trainer.state.metrics["ssl"] > 0  # absolute-location SSL is on by default
    # the held-out split: disjoint, complete, both classes in training
    train_ids, val_ids = content("train#dataset").case_ids, content("validate#dataset").case_ids
    assert len(val_ids) == 2 and not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(pd.read_csv(bags, dtype=str)["case_id"])
    # the virtual-bag handler made bags from epoch 1's pools and the epoch data holds them
    data = content("train#dataloader")
    assert isinstance(data, EpochBags) and data.epoch == 2
    expected = virtual_slots(content("train#dataset"))
    assert expected > 0 and data.virtual_slots == expected
    assert trainer.state.metrics["n_virtual_bags"] == data.n_virtual == expected
    # validation ran every epoch through MONAI's ValidationHandler and the evaluator's metrics
    evaluator = content("validate#evaluator")
    assert evaluator.state.epoch == 2
    assert {"val_auc", "accuracy", "sensitivity", "specificity", "f1"} <= set(evaluator.state.metrics)
    # the model: the trained network's weights as a plain state dict, and how to rebuild and preprocess for it
    saved = _state(root / "models" / "model.pt")
    network = content("network_def")
    assert saved.keys() == network.state_dict().keys()
    assert all(torch.equal(saved[k], v.cpu()) for k, v in network.state_dict().items())
    record = json.loads((root / "models" / "model.json").read_text())
    assert record["network"] == dict(MILNet(**FUSED).hparams) and record["trained_on"] == 6 and record["epochs"] == 2
    model = load_model(root / "models" / "model.pt")
    assert model.network == record["network"]
    assert model.preprocessing["min_area_fraction"] == 0.5 and model.preprocessing["spatial_size"] == (180, 240)
    # checkpoints and TensorBoard logs under output_dir
    assert (root / "eval" / "checkpoints" / "checkpoint_2.pt").is_file()
    assert list((root / "eval" / "tensorboard").glob("events.out.tfevents.*"))


def test_evaluate_workflow(evaluated, trained, cohort):
    _, root, _ = trained
    assert evaluated["case_id"].tolist() == pd.read_csv(cohort / "datalist.csv", dtype=str)["case_id"].tolist()
    # the evaluation used the saved weights on bags made as training made them (min_area_fraction 0.5 from model.json):
    # the same probabilities as the one predict function with the model loaded by hand on training's cached bags
    cases = bu.bag_table(cohort / "datalist.csv", root / "cache", _preprocessing())
    network = MILNet(**FUSED)
    network.load_state_dict(_state(root / "models" / "model.pt"))
    with _quiet_rng_one_thread():
        expected = predict(network, bu.bag_dataset(cases))
    assert expected["case_id"] == evaluated["case_id"].tolist()
    np.testing.assert_array_equal(evaluated["label"], expected["label"])
    # scored at the operating point ctmil train recorded in model.json (calibration map + threshold), as ctmil evaluate
    point = json.loads((root / "models" / "model.json").read_text())["operating_point"]
    calibrated, decided = apply_operating_point(point, np.asarray(expected["prob"], dtype=np.float64))
    np.testing.assert_allclose(evaluated["probability"], calibrated, atol=1e-6)  # the table keeps 6 decimals
    np.testing.assert_array_equal(evaluated["prediction"], decided)
    # the held-out report of ctmil evaluate: metrics with CIs, the threshold and where it came from
    table = pd.read_csv(root / "eval" / "metrics.csv")
    assert table.columns.tolist() == ["metric", "estimate", "lower", "upper", "method"]
    metrics = table.set_index("metric")
    reference = binary_metrics(calibrated, evaluated["label"].to_numpy(), point["threshold"])
    for name in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        np.testing.assert_allclose(metrics.loc[name, "estimate"], reference[name], atol=1e-6, equal_nan=True)
    assert metrics.loc["threshold", "estimate"] == pytest.approx(point["threshold"]) and point["rule"] in metrics.loc["threshold", "method"]
    assert {"evaluation.md", "roc.png", "reliability.png", "report.html"} <= {p.name for p in (root / "eval").iterdir()}
    assert (root / "eval" / "inference" / "predictions.csv").is_file()  # the infer workflow's own table


def test_inference_workflow_matches_evaluation(inferred, evaluated, trained, cohort):
    _, root, _ = trained
    assert inferred["status"].tolist() == ["ok", "ok"]
    # the same preprocessing (read from model.json: min_area_fraction 0.5) and weights as the evaluator
    merged = inferred.merge(evaluated[["case_id", "probability"]], on="case_id", suffixes=("", "_evaluator"))
    assert len(merged) == 2
    # inference calibrates with the operating point recorded in model.json, as the evaluator does: one vocabulary
    np.testing.assert_allclose(merged["probability"], merged["probability_evaluator"], atol=1e-5)
    point = json.loads((root / "models" / "model.json").read_text())["operating_point"]
    decision = (merged["probability"].to_numpy() >= point["threshold"]).astype(int)  # calibrated: see test_evaluate_workflow
    ours = inferred.set_index("case_id").loc[merged["case_id"]]
    assert (ours["prediction"].to_numpy() == decision).all() and (ours["threshold"] == point["threshold"]).all()
    bu.bag_table(cohort / "datalist.csv", root / "cache", _preprocessing())  # training's bags (cached: made once)
    manifest = pd.read_csv(root / "cache" / "manifest.csv", dtype={"case_id": str}).set_index("case_id")
    for row in inferred.itertuples():
        assert row.K == _state(manifest.loc[row.case_id, "bag_path"])["patches"].shape[0] < 12 * row.n_slices
        attention = nib.load(root / "inference" / row.attention_path).get_fdata()
        assert attention.shape == nib.load(cohort / "nifti" / f"{row.case_id}.nii.gz").shape and attention.max() > 0
        overlays = str(row.overlay_paths).split(";")
        assert len(overlays) == 3 and all((root / "inference" / p).is_file() for p in overlays)  # the top 3 slices


def test_ckpt_export_torchscript(trained, tmp_path):
    _, root, _ = trained
    exported = tmp_path / "model.ts"
    _bundle_cli("ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", str(root / "models" / "model.pt"),
                "--meta_file", "configs/metadata.json", "--config_file", "configs/train.json")
    extra = {"metadata.json": "", "train.json": ""}
    scripted = torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["spatial_shape"] == [CHANNELS, 60, 60]
    assert "network_def" in json.loads(extra["train.json"])
    eager = MILNet(**FUSED)
    eager.load_state_dict(_state(root / "models" / "model.pt"))
    eager.eval()
    x = torch.rand(2, 30, CHANNELS, 60, 60, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 17:] = False
    density = torch.rand(2, len(DENSITY_FEATURES), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for args in ((x[:1, :12], None, density[:1]), (x, mask, density)):  # verify_net_in_out's layout, then a padded batch
            torch.testing.assert_close(scripted(*args), eager(*args), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scripted.attention(x, mask), eager.attention(x, mask), atol=1e-6, rtol=1e-5)


def test_multi_gpu_train_config_in_one_process(bags, tmp_path, monkeypatch):
    """train.json + multi_gpu_train.json under torch.distributed (gloo, world size 1, CPU): the DDP wrapper trains,
    the data and the virtual-bag handler are the distributed variants, and model.pt holds the bare network's weights."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    try:
        with _quiet_rng_one_thread():
            workflow = ConfigWorkflow(
                config_file=[TRAIN, MULTI_GPU], meta_file=META, workflow_type="train", datalist=str(bags),
                bundle_root=str(tmp_path), device=CPU, dist_backend="gloo", max_epochs=1, val_fraction=0.25, val_interval=1,
                **NET_OVERRIDES,
            )
            workflow.initialize()
            assert workflow.check_properties() == []
            workflow.run()
            workflow.finalize()
        assert not torch.distributed.is_initialized()  # finalize tore the process group down
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        idist.sync()  # Ignite back to its serial model for the tests that follow in this process
    content = workflow.parser.get_parsed_content
    network = content("network")
    assert isinstance(network, DistributedForwardAll) and isinstance(network.ddp, torch.nn.parallel.DistributedDataParallel)
    data = content("train#dataloader")
    assert (data.rank, data.world_size) == (0, 1) and content("train#virtual_bags").gather
    assert content("train#trainer").state.epoch == 1
    assert content("validate#evaluator").state.metrics["val_auc"] >= 0
    saved = _state(tmp_path / "models" / "model.pt")
    assert saved.keys() == MILNet(**{**TINY_NET, **FUSED}).state_dict().keys()  # no "ddp.module." prefixes
