"""The wheel: built from the checkout, installed into a fresh folder, it runs ``ctmil`` with its packaged configs.

The wheel is built from a copy of the checkout's sources (so a stale ``build/`` folder cannot leak old modules
into it, and parallel runs do not share one), installed with ``pip install --target`` outside the checkout,
and run from an empty working directory with only the install folder on ``PYTHONPATH``: nothing can come
from the checkout (the test checks where ``ctmil`` was imported from). Torch, MONAI and the other
dependencies come from the running environment. No network: ``--no-index`` everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctmil.synthetic.phantoms import generate_cohort

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "covid19_severity_mil" / "configs"
#: git-ignored or irrelevant to the build (the wheel's contents come from setup.cfg)
NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "out", "runs", ".whl", ".gl")
TINY = ["network_def#feature_dim=16", "network_def#attention_dim=8", "network_def#ssl_hidden=8"]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 240) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[:4]} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _build_and_install(tmp_path: Path) -> tuple[Path, Path]:
    """``(wheel, install folder)``: ``pip wheel`` of a copy of the sources, ``pip install --target`` of the wheel."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "wheel"), "."], cwd=src)
    (wheel,) = (tmp_path / "wheel").glob("ctmil-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp_path)
    return wheel, site


@pytest.mark.slow
def test_wheel_runs_demo_train_and_cv_with_packaged_configs(tmp_path):
    wheel, site = _build_and_install(tmp_path)
    # every file of the bundle's configs is in the wheel as package data, and nothing of the checkout around it
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n[len("ctmil/configs/"):] for n in names if n.startswith("ctmil/configs/")}
    expected = {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*") if p.is_file()}
    assert shipped == expected
    assert not [n for n in names if n.split("/")[0] in ("tests", "bundles", "bench", "docs")]

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert str(ROOT) not in env["PYTHONPATH"] and ROOT not in work.parents
    where = _run([sys.executable, "-c", "import ctmil, ctmil.bundle; print(ctmil.__file__); print(ctmil.bundle.config_dir())"],
                 work, env).split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]).is_relative_to(site), where  # not the checkout's
    assert not Path(where[1]).is_symlink() and (Path(where[1]) / "train.json").is_file()

    ctmil = [sys.executable, "-m", "ctmil.cli"]
    assert "usage: ctmil demo" in _run([*ctmil, "demo", "--help"], work, env)
    assert "usage: ctmil demo" in _run([str(site / "bin" / "ctmil"), "demo", "--help"], work, env)  # the console script

    generate_cohort(work / "phantoms", n=6, seed=0, formats=("dicom",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0),
                    progress=False)
    common = ["--epochs", "1", "--device", "cpu", "-q"]
    _run([*ctmil, "train", "phantoms/labels.csv", "--out", "train", *common, "--set", *TINY], work, env)
    state = torch.load(work / "train" / "model.pt", map_location="cpu", weights_only=True)
    assert state["classifier.weight"].shape == (1, 16)
    assert len(pd.read_csv(work / "train" / "bags" / "manifest.csv")) == 6  # preprocessed with the packaged defaults

    report = _run([*ctmil, "cv", "--datalist", "phantoms/labels.csv", "--out", "cv", *common, "--set", *TINY,
                   "cv#n_folds=2", "cv#n_repeats=1", 'cv#settings=["A"]', "cv#final_model=all_data"], work, env)
    assert "| (A) MIL only, fused with the lung-density model |" in report  # the default fuses
    predictions = pd.read_csv(work / "cv" / "predictions.csv", dtype={"case_id": str})
    assert sorted(predictions["case_id"]) == [f"case_{i:04d}" for i in range(6)]
    assert (work / "cv" / "model.pt").is_file() and (work / "cv" / "report.md").is_file()
