"""Batch inference resumes (issue 21 point 1): a run killed with SIGKILL in the middle and run again gives the
predictions.csv of an uninterrupted run (timings aside), with no duplicate rows and no half-written file left."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from ctmil.infer.batch import run_inference

from ctmil.infer.writer import InferenceOptions
from ctmil.infer.run_checks import CASE_RECORD
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET

N_CASES = 8


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    for i in range(N_CASES):
        vol, _, info = make_phantom(i, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
        write_nifti(vol, info["spacing"], root / "in" / f"c{i}.nii.gz")
    torch.manual_seed(0)
    model = save_model(MILNet(**TINY_NET), root / "model")
    return root, model


def comparable(path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    return frame.drop(columns=[c for c in frame.columns if c.startswith("t_")])


def infer_argv(root, model, out):
    return [sys.executable, "-m", "ctmil.cli", "infer", str(root / "in"), "--model", str(model), "--out", str(out), "-q",
            "--device", "cpu"]


def test_a_killed_run_resumes_to_the_uninterrupted_result(batch, tmp_path):
    root, model = batch
    whole = subprocess.run(infer_argv(root, model, tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    killed = subprocess.Popen(infer_argv(root, model, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    table, deadline = tmp_path / "killed" / "predictions.csv", time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        if table.is_file() and len(table.read_text().splitlines()) >= 3:  # header + two finished cases
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run finished before it could be killed"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done_before = len(list((tmp_path / "killed").glob(f"cases/*/{CASE_RECORD}")))
    assert 2 <= done_before < N_CASES
    again = subprocess.run(infer_argv(root, model, tmp_path / "killed"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed = comparable(table)
    assert resumed["case_id"].is_unique and len(resumed) == N_CASES
    pd.testing.assert_frame_equal(resumed, comparable(tmp_path / "whole" / "predictions.csv"))
    assert not list((tmp_path / "killed").rglob("*.tmp"))


def test_a_finished_run_is_not_run_again_and_another_model_is(batch, tmp_path, caplog):
    root, model = batch
    first, _ = run_inference([root / "in"], model, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False), progress=False)
    with caplog.at_level("INFO", logger="ctmil.infer.batch"):
        second, _ = run_inference([root / "in"], model, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False), progress=False)
    assert any("all finished before" in r.getMessage() for r in caplog.records)
    keep = [c for c in first.columns if not c.startswith("t_")]
    pd.testing.assert_frame_equal(first[keep], second[keep])
    torch.manual_seed(1)
    other = save_model(MILNet(**TINY_NET), tmp_path / "other")  # another model: every case runs again
    caplog.clear()
    with caplog.at_level("INFO", logger="ctmil.infer.batch"):
        third, _ = run_inference([root / "in"], other, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False), progress=False)
    assert not any("finished before" in r.getMessage() or "resuming" in r.getMessage() for r in caplog.records)
    assert not third["probability"].equals(first["probability"])


def test_new_labels_are_not_resumed_from_the_old_rows(batch, tmp_path):
    root, model = batch
    first, _ = run_inference([root / "in"], model, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False), progress=False)
    assert (first["label"].isna()).all()
    labels = {f"c{i}": i % 2 for i in range(N_CASES)}
    second, _ = run_inference([root / "in"], model, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False), progress=False,
                              labels=labels)
    assert second.set_index("case_id")["label"].to_dict() == labels  # another run key: every case ran again
