"""Seeded fuzzing of DICOM intake (tests/io/_fuzz.py) in a subprocess under a 1 GiB address-space headroom:
no exception but DicomReadError/DicomError escapes, no file takes over a second, memory stays bounded.
``bench/fuzz_intake.py`` runs the long version."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [0, 1])
def test_mutated_files_never_escape_the_contract(tmp_path, seed):
    cmd = [sys.executable, "-m", "tests.io._fuzz", str(tmp_path / "f"), "--n", "250", "--seed", str(seed), "--limit-gib", "1"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["n_escaped"] == 0, result["escaped"]
    assert not result["too_slow"] and result["peak_rss_mib"] < 1024
    assert result["read"] > 50 and result["rejected"] > 50 and result["slices_decoded"] > 10  # the fuzz reaches every stage
