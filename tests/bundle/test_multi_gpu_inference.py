"""inference.json + multi_gpu_inference.json under torchrun (2 gloo processes on CPU): each rank predicts its shard
of the cases (the split of ``ctmil infer --shard``), a study that fails is a row with its reason and stops no rank,
and rank 0 merges the tables into the same predictions.csv as one process writes (issue 21 point 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil" / "configs"
pytestmark = pytest.mark.slow


def _bundle(prefix: list[str], configs: list[str], model: Path, inputs: list[Path], out: Path, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    cmd = [*prefix, "-m", "monai.bundle", "run", "--config_file", files, "--meta_file", str(CONFIGS / "metadata.json"),
           "--ckpt_path", str(model), "--output_dir", str(out), "--inputs", repr([str(p) for p in inputs]),
           "--options#save_overlays", "False"]  # fmt: skip
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_torchrun_ranks_give_the_one_process_predictions(tmp_path):
    generate_cohort(tmp_path / "c", n=6, seed=1, formats=("nifti",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0), progress=False)
    inputs = sorted((tmp_path / "c" / "nifti").glob("*.nii.gz"))
    broken = tmp_path / "c" / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a volume")
    torch.manual_seed(0)
    model = save_model(MILNet(**TINY_NET), tmp_path / "m")
    _bundle([sys.executable], ["inference.json"], model, [*inputs, broken], tmp_path / "one", tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _bundle(torchrun, ["inference.json", "multi_gpu_inference.json"], model, [*inputs, broken], tmp_path / "two", tmp_path)

    one = pd.read_csv(tmp_path / "one" / "predictions.csv", dtype={"case_id": str}).set_index("case_id").sort_index()
    two = pd.read_csv(tmp_path / "two" / "predictions.csv", dtype={"case_id": str}).set_index("case_id")
    assert list(two.index) == sorted(two.index) and sorted(one.index) == list(two.index)  # every case once, in id order
    np.testing.assert_allclose(two["probability"], one["probability"], atol=1e-6)
    assert (two["status"] == one["status"]).all() and (two["prediction"].fillna(-1) == one["prediction"].fillna(-1)).all()
    failed = two[two["status"] == "failed"]
    assert list(failed.index) == ["broken"] and failed["error"].str.len().gt(0).all()  # a row with its reason
    shards = [pd.read_csv(tmp_path / "two" / f"predictions.shard-{r}-of-2.csv", dtype={"case_id": str}) for r in (0, 1)]
    assert all(len(s) for s in shards) and sum(len(s) for s in shards) == len(one)  # both ranks worked, no case twice
    assert (tmp_path / "two" / "report.html").is_file()  # rank 0's merge wrote the page
