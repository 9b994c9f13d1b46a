"""Smoke tests of the MONAI bundle ``bundles/covid19_severity_mil`` on generated phantoms.

Every workflow runs through ``monai.bundle.ConfigWorkflow`` (train, evaluate, inference, multi-GPU in one
process), plus ``verify_metadata`` (offline, against the shipped schema), ``verify_net_in_out`` and
``ckpt_export``. The bundle is copied to a temporary folder and run from there (``%configs/...`` macros are
relative to the working directory); all outputs go to the temporary folder.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import ignite.distributed as idist
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle.config_item import ComponentLocator
from monai.utils import optional_import

from ctmil.synthetic.phantoms import generate_cohort
from ctmil.networks import MILNet
from ctmil.evaluate.metrics import binary_metrics
from ctmil.train.trainer import predict

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil"
SCHEMA = "configs/schema/meta_schema_20240725.json"
TRAIN, EVALUATE, INFERENCE, MULTI_GPU = (f"configs/{n}.json" for n in ("train", "evaluate", "inference", "multi_gpu_train"))
VIRTUAL_HANDLER = next(  # index of the VirtualBagHandler in train#handlers
    i for i, h in enumerate(json.loads((BUNDLE / TRAIN).read_text())["train"]["handlers"]) if h["_target_"].endswith(".VirtualBagHandler")
)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Six NIfTI phantoms (2 severe) and a datalist CSV with relative image paths."""
    root = tmp_path_factory.mktemp("cohort")
    table = generate_cohort(root, n=6, seed=0, formats=("nifti",), shape=(16, 64, 64), spacing=(5.0, 5.4, 5.4), progress=False)
    datalist = table[["case_id", "nifti_path", "label"]].rename(columns={"nifti_path": "image"})
    datalist.to_csv(root / "datalist.csv", index=False)
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A copy of the bundle (configs, docs, LICENSE) without outputs of earlier runs."""
    dst = tmp_path_factory.mktemp("bundle") / "covid19_severity_mil"
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("models", "eval", "cache", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def work(bundle):
    """Run from the bundle copy with the global torch RNG restored afterwards (``initialize`` seeds it)."""
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng(devices=[]):
        mp.chdir(bundle)
        yield bundle


def overrides(bundle: Path, cohort: Path, **more) -> dict:
    out = bundle / "out"
    return {
        "dataset_dir": str(cohort),
        "bundle_root": str(bundle),
        "ckpt_dir": str(out / "models"),
        "output_dir": str(out / "eval"),
        "cache_dir": str(out / "cache"),
        "val_fraction": 0.34,  # one fold of three: 2 validation cases
        **more,
    }


def run_workflow(config_file, workflow_type="train", logging_file=False, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=config_file, meta_file="configs/metadata.json", logging_file=logging_file,
                              workflow_type=workflow_type, **override)
    workflow.initialize()
    if workflow_type is not None:
        assert workflow.check_properties() == [], "bundle misses required MONAI bundle properties"
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def trained(work, cohort) -> ConfigWorkflow:
    """2 epochs; virtual bags from epoch 1 with threshold 0 so that every positive bag feeds the pools."""
    return run_workflow(
        TRAIN, logging_file="configs/logging.conf",  # also checks logging.conf passes MONAI's allow list
        **overrides(work, cohort, **{
            "train#trainer#max_epochs": 2, "val_interval": 1,
            f"train#handlers#{VIRTUAL_HANDLER}#start_epoch": 1, f"train#handlers#{VIRTUAL_HANDLER}#threshold": 0.0,
        }),
    )


@pytest.fixture(scope="module")
def evaluated(trained, work, cohort) -> ConfigWorkflow:
    return run_workflow([TRAIN, EVALUATE], **overrides(work, cohort))


def _inference(work, cohort, case_ids, ckpt_path, out_name) -> pd.DataFrame:
    inputs = [str(cohort / "nifti" / f"{c}.nii.gz") for c in case_ids]
    run_workflow(INFERENCE, workflow_type=None, **{
        **overrides(work, cohort), "inputs": inputs, "ckpt_path": str(ckpt_path),
        "output_dir": str(work / "out" / out_name), "save_overlays": False,
    })
    return pd.read_csv(work / "out" / out_name / "predictions.csv", dtype={"case_id": str})


@pytest.fixture(scope="module")
def inferred(evaluated, work, cohort) -> pd.DataFrame:
    val_ids = pd.read_csv(work / "out" / "eval" / "predictions.csv", dtype={"case_id": str})["case_id"].tolist()
    return _inference(work, cohort, val_ids, work / "out" / "models" / "model.pt", "inference")


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------ workflows
def test_train_workflow(trained, work):
    trainer = trained.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    for name in ("loss", "mil", "ssl"):
        assert np.isfinite(trainer.state.metrics[name])
    assert trainer.state.metrics["ssl"] > 0  # absolute-location SSL is on by default
    # the virtual-bag handler made bags from epoch 1's pools and the epoch data used them
    data = trained.parser.get_parsed_content("train#dataloader")
    assert data.epoch == 2
    assert trainer.state.metrics["n_virtual_bags"] == data.n_virtual == trained.parser.get_parsed_content("train#n_virtual") > 0
    # validation ran through MONAI's ValidationHandler + the evaluator's metrics
    evaluator = trained.parser.get_parsed_content("validate#evaluator")
    assert {"val_auc", "accuracy", "sensitivity", "specificity", "f1"} <= set(evaluator.state.metrics)
    # the final checkpoint is the trained network's weights, a plain state dict
    saved = _state(work / "out" / "models" / "model.pt")
    network = trained.parser.get_parsed_content("network_def")
    assert saved.keys() == network.state_dict().keys()
    for key, value in network.state_dict().items():
        assert torch.equal(saved[key], value.cpu()), key
    assert list((work / "out" / "eval").glob("events.out.tfevents.*"))
    # train and validation splits are disjoint and both preprocessed into the cache
    train_ids = set(pd.read_csv(work / "out" / "cache" / "train" / "manifest.csv", dtype={"case_id": str})["case_id"])
    val_ids = set(pd.read_csv(work / "out" / "cache" / "validate" / "manifest.csv", dtype={"case_id": str})["case_id"])
    assert len(train_ids) == 4 and len(val_ids) == 2 and not train_ids & val_ids


def test_evaluate_workflow(evaluated, work):
    predictions = pd.read_csv(work / "out" / "eval" / "predictions.csv", dtype={"case_id": str})
    dataset = evaluated.parser.get_parsed_content("validate#dataset")
    assert predictions["case_id"].tolist() == dataset.case_ids
    # the evaluator used the saved weights: same probabilities as the eager network loaded by hand
    model = MILNet()
    model.load_state_dict(_state(work / "out" / "models" / "model.pt"))
    expected = predict(model.eval(), dataset)
    np.testing.assert_allclose(predictions["prob"], expected["prob"], atol=1e-6)
    np.testing.assert_array_equal(predictions["label"], expected["label"])
    metrics = pd.read_csv(work / "out" / "eval" / "metrics.csv", header=None, index_col=0)[1]
    reference = binary_metrics(predictions["prob"].to_numpy(), predictions["label"].to_numpy(), 0.5)
    for name in ("accuracy", "sensitivity", "specificity", "f1"):
        np.testing.assert_allclose(metrics[name], reference[name], equal_nan=True)
    np.testing.assert_allclose(metrics["val_auc"], reference["auc"], equal_nan=True)


def test_inference_workflow(inferred, work, cohort):
    evaluation = pd.read_csv(work / "out" / "eval" / "predictions.csv", dtype={"case_id": str})
    assert inferred["status"].tolist() == ["ok"] * len(evaluation)
    # same preprocessing settings and weights as the evaluator: same probabilities
    merged = inferred.merge(evaluation, on="case_id")
    np.testing.assert_allclose(merged["probability"], merged["prob"], atol=1e-5)
    for row in inferred.itertuples():
        attention = nib.load(work / "out" / "inference" / row.attention_path).get_fdata()
        assert attention.size == 16 * 64 * 64 and attention.max() > 0


def test_inference_uses_train_preprocessing(work, cohort):
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    train = ConfigParser()
    train.read_config(TRAIN)
    assert parser.get_parsed_content("preprocessing") == train.get_parsed_content("preprocessing")
    assert parser.get_parsed_content("threshold") == train.get_parsed_content("threshold")
    raw = json.loads(Path(INFERENCE).read_text())
    assert raw["preprocessing"].startswith("%configs/train.json#")  # by reference, never copied


def test_ckpt_export_torchscript(inferred, work, cohort):
    ts_path = work / "out" / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(work / "out" / "models" / "model.pt"),
                meta_file="configs/metadata.json", config_file=INFERENCE)
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["spatial_shape"] == [60, 60]
    eager = MILNet()
    eager.load_state_dict(_state(work / "out" / "models" / "model.pt"))
    eager.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 30, 1, 60, 60, generator=gen)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 17:] = False
    with torch.no_grad():
        for args in ((x[:1, :12, 0],), (x, mask)):  # verify_net_in_out layout, then a padded batch
            torch.testing.assert_close(scripted(*args), eager(*args), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scripted.attention(x, mask), eager.attention(x, mask), atol=1e-6, rtol=1e-5)
    # the bundle's inference runs on the TorchScript file and gives the same answers
    first = inferred["case_id"].iloc[0]
    from_ts = _inference(work, cohort, [first], ts_path, "inference_ts")
    assert from_ts["status"].tolist() == ["ok"]
    np.testing.assert_allclose(from_ts["probability"].iloc[0], inferred["probability"].iloc[0], atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_gpu_train_config_in_one_process(trained, work, cohort, monkeypatch):
    """train.json + multi_gpu_train.json under torch.distributed (gloo, world size 1, CPU): the DDP wrapper
    trains, rank-0 handlers run, and the checkpoint holds the bare network's weights."""
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    ckpt_dir = work / "out" / "models_ddp"
    try:
        workflow = run_workflow([TRAIN, MULTI_GPU], **overrides(work, cohort, **{
            "device": "$torch.device('cpu')", "dist_backend": "gloo", "ckpt_dir": str(ckpt_dir),
            "train#trainer#max_epochs": 1, "val_interval": 1,
        }))
        assert not torch.distributed.is_initialized()  # finalize tore the process group down
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        idist.sync()  # Ignite back to its serial model, for the tests that follow in this process
    network = workflow.parser.get_parsed_content("network")
    assert isinstance(network.ddp, torch.nn.parallel.DistributedDataParallel)
    from ctmil.train.distributed import ShardedEpochBags

    assert isinstance(workflow.parser.get_parsed_content("train#dataloader"), ShardedEpochBags)  # each rank its shard
    assert workflow.parser["train#handlers#2#_target_"].endswith("DistributedVirtualBagHandler")
    assert workflow.parser.get_parsed_content("validate#evaluator").state.metrics["val_auc"] >= 0
    saved = _state(ckpt_dir / "model.pt")
    assert saved.keys() == MILNet().state_dict().keys()  # no "ddp.module." prefixes


# ------------------------------------------------------------------------------------------------ bundle tooling
def test_verify_metadata_offline(work, monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("verify_metadata tried to download the schema")

    monkeypatch.setattr("monai.apps.utils._download_with_progress", no_network)
    monkeypatch.setattr("monai.apps.utils.urlopen", no_network)
    verify_metadata(meta_file="configs/metadata.json", filepath=SCHEMA)
    # the check can fail: a metadata without network_data_format is rejected
    meta = json.loads(Path("configs/metadata.json").read_text())
    del meta["network_data_format"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=SCHEMA)


def test_metadata_versions_match_environment(work):
    meta = json.loads(Path("configs/metadata.json").read_text())
    import monai

    import ctmil

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    assert meta["required_packages_version"]["ctmil"] == ctmil.__version__
    assert meta["version"] in meta["changelog"]
    assert meta["schema"].endswith(Path(SCHEMA).name)  # the shipped schema is the one the metadata names


def test_verify_net_in_out(work):
    verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file=TRAIN, device="cpu")
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="network_def", meta_file="configs/metadata.json", config_file=TRAIN, device="cpu",
                          **{"_meta_#network_data_format#outputs#pred#num_channels": 2})


# ------------------------------------------------------------------------------------------------ config hygiene
def _get(config, path: str):
    node = config
    for part in path.split("#"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _has(config, path: str) -> bool:
    try:
        _get(config, path)
        return True
    except (KeyError, IndexError, ValueError, TypeError):
        return False


@pytest.mark.parametrize("variant", [MULTI_GPU, EVALUATE])
def test_variant_holds_only_differences(variant):
    base = json.loads((BUNDLE / TRAIN).read_text())
    diff = json.loads((BUNDLE / variant).read_text())
    assert diff, f"{variant} is empty"
    same = [k for k, v in diff.items() if _has(base, k.replace("::", "#")) and _get(base, k.replace("::", "#")) == v]
    assert not same, f"{variant} repeats values of train.json: {same}"
    assert "imports" not in diff  # the variant reuses train.json's imports


def _targets(node, found: list) -> list:
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for value in node.values():
            _targets(value, found)
    elif isinstance(node, list):
        for value in node:
            _targets(value, found)
    return found


def _expressions(node, found: list) -> list:
    if isinstance(node, str) and node.startswith("$"):
        found.append(node)
    elif isinstance(node, dict):
        for value in node.values():
            _expressions(value, found)
    elif isinstance(node, list):
        for value in node:
            _expressions(value, found)
    return found


CONFIGS = ["train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"]


def test_multi_gpu_keeps_rank0_only_handlers_off_other_ranks():
    handlers = [h["_target_"] for h in json.loads((BUNDLE / TRAIN).read_text())["train"]["handlers"]]
    sliced = json.loads((BUNDLE / MULTI_GPU).read_text())["train#trainer#train_handlers"]
    n = int(re.search(r"\[: -(\d+) if dist.get_rank\(\) > 0 else None\]", sliced).group(1))
    rank0_only = {"StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver"}
    assert set(handlers[-n:]) == rank0_only  # dropped on ranks > 0
    assert not rank0_only & set(handlers[:-n])  # every rank keeps the rest (epoch data, metrics, virtual bags, validation)


@pytest.mark.parametrize("name", CONFIGS)
def test_targets_and_package_references_resolve(name):
    config = json.loads((BUNDLE / "configs" / name).read_text())
    locator = ComponentLocator()
    targets = _targets(config, [])
    for target in targets:
        if "." in target:
            module, _, attr = target.rpartition(".")
            _, ok = optional_import(module, name=attr)
            assert ok, f"{name}: _target_ {target} does not resolve"
        else:
            assert locator.get_component_module_name(target), f"{name}: _target_ {target} is not a MONAI component"
    for expr in _expressions(config, []):
        for dotted in re.findall(r"\bctmil(?:\.\w+)+", expr):
            module, _, attr = dotted.rpartition(".")
            _, ok = optional_import(module, name=attr)
            if not ok:  # a module path such as ctmil.bundle
                _, ok = optional_import(dotted)
            assert ok, f"{name}: {dotted} in {expr!r} does not resolve"
    if name in ("train.json", "multi_gpu_train.json"):
        assert targets, f"{name} names no _target_"
