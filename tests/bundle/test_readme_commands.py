"""The bundle README's commands, run as written (from a temporary working directory) on tiny synthetic data.

Convention in ``bundles/covid19_severity_mil/docs/README.md``: a fenced ``bash`` block directly preceded by
``<!-- test: expect=PATH,PATH -->`` is runnable; ``expect`` lists files the block must leave behind
(``$BUNDLE`` allowed; relative to the working directory otherwise). Unmarked blocks (the GPU recipe, file
formats, the ``export BUNDLE=...`` line) are not run. Each marked block runs, in README order, as one
``bash -euo pipefail`` script in one shared working directory, with ``BUNDLE`` set to a copy of the bundle
and this interpreter's ``bin`` first on ``PATH`` (``python``, ``ctmil``, ``torchrun``). Only two things change
between the README and what runs:

* the placeholder data paths of :data:`DATA` become six small NIfTI phantoms;
* every training-related command gets one epoch and a tiny network appended (:data:`SHRINK`); the README shows
  the real defaults.

An expected CSV must have rows, and a ``predictions.csv`` with a ``status`` column only ``ok`` rows (a labels
file that matches no case gives an empty ``datalist.csv`` and exit status 0, so exit status alone proves little).

Cost: about 15 interpreter starts (``import monai.bundle`` alone is ~9 CPU-seconds on the project's 2-core
machine), about 2 CPU-minutes in all; hence ``slow``. The blocks share one working directory and run in
order, so they stay on one xdist worker (``--dist loadgroup``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.train._bags import TINY_NET

pytestmark = pytest.mark.xdist_group("readme_commands")

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil"
README = BUNDLE / "docs" / "README.md"

#: README placeholder -> path below the phantom folder
DATA = {
    "/data/export": "nifti",
    "/data/new": "nifti",
    "/data/labels.csv": "labels.csv",
    "/data/ct/c001.nii.gz": "nifti/case_0002.nii.gz",
    "/data/test/datalist.csv": None,  # the preprocessed datalist of the first block (work/datalist.csv)
}
_TINY_IDS = " ".join(f"--network_def#{k} {v}" for k, v in TINY_NET.items())
_TINY_SET = " ".join(f"network_def#{k}={v}" for k, v in TINY_NET.items())
#: command prefix -> what is appended to each such command (``--set`` takes the rest of the line, so it goes last)
SHRINK = {
    "ctmil train": f"--epochs 1 -q --set {_TINY_SET}",
    "ctmil cv": f"--epochs 1 -q --set {_TINY_SET}",
    "python -m monai.bundle run": f"--max_epochs 1 {_TINY_IDS}",
    "python -m monai.bundle ckpt_export": _TINY_IDS,
    "torchrun": f"--max_epochs 1 {_TINY_IDS}",
}
_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
_MARK = re.compile(r"<!--\s*test:(?P<args>.*?)-->\s*\n```bash\n(?P<body>.*?)\n```", re.S)


def readme_blocks(text: str) -> list[tuple[str, list[str]]]:
    """``(script, expected paths)`` of every marked bash block, in order."""
    blocks = []
    for m in _MARK.finditer(text):
        args = dict(a.split("=", 1) for a in m.group("args").split() if "=" in a)
        expect = [p for p in args.get("expect", "").split(",") if p]
        blocks.append((m.group("body"), expect))
    return blocks


def shrink(script: str) -> str:
    """Append :data:`SHRINK` to every command (continuation lines joined) that starts with one of its prefixes;
    here-document bodies are left as they are."""
    out, command, heredoc_end = [], [], None
    for line in script.splitlines():
        if heredoc_end is not None:
            out.append(line)
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        command.append(line)
        if line.rstrip().endswith("\\"):
            continue
        joined = " ".join(part.rstrip().rstrip("\\").strip() for part in command)
        extra = next((v for k, v in SHRINK.items() if joined.startswith(k)), None)
        out.append(f"{joined} {extra}" if extra else "\n".join(command))
        command = []
        heredoc = _HEREDOC.search(line)
        heredoc_end = heredoc.group(1) if heredoc else None
    return "\n".join(out + command)


def substitute(script: str, data: Path) -> str:
    for placeholder, target in sorted(DATA.items(), key=lambda kv: -len(kv[0])):
        script = script.replace(placeholder, "work/datalist.csv" if target is None else str(data / target))
    return script


def test_readme_marks_the_commands():
    blocks = readme_blocks(README.read_text())
    scripts = "\n".join(b for b, _ in blocks)
    for command in ("ctmil preprocess", "ctmil train", "ctmil infer", "monai.bundle run", "verify_metadata",
                    "verify_net_in_out", "ckpt_export", "torchrun", "evaluate.json", "@preprocessing"):
        assert command in scripts, f"no runnable README block uses {command}"


def test_shrink_appends_to_whole_commands_only():
    script = "ctmil train a.csv \\\n    --out o\ncat > f.json <<'EOF'\nctmil train is data here\nEOF\nctmil train b.csv"
    assert shrink(script).splitlines() == [
        f"ctmil train a.csv --out o {SHRINK['ctmil train']}", "cat > f.json <<'EOF'", "ctmil train is data here", "EOF",
        f"ctmil train b.csv {SHRINK['ctmil train']}"]
    assert substitute("x /data/new y /data/test/datalist.csv", Path("/d")) == "x /d/nifti y work/datalist.csv"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """The working directory, the environment and a bundle copy; six NIfTI phantoms (2 severe)."""
    from ctmil.synthetic.phantoms import generate_cohort

    root = tmp_path_factory.mktemp("readme")
    data = root / "data"
    generate_cohort(data, n=6, seed=0, formats=("nifti",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0), progress=False)
    bundle = root / "covid19_severity_mil"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("models", "eval", "cache"))
    cwd = root / "cwd"
    cwd.mkdir()
    env = {**os.environ, "BUNDLE": str(bundle), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {"cwd": cwd, "env": env, "data": data, "bundle": bundle, "done": 0, "failed": None}


BLOCKS = readme_blocks(README.read_text())


def _check_output(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"
    if path.suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False, header=None if path.name == "metrics.csv" else "infer")
        assert len(table), f"{path} has no rows"
        if path.name == "predictions.csv" and "status" in table.columns:
            assert set(table["status"]) == {"ok"}, table[["case_id", "status", "error"]]


def _block_id(i: int) -> str:
    words = [w for w in BLOCKS[i][0].split("\n", 1)[0].split() if w[0] not in "-\"'$<>"]
    return f"{i}-" + "-".join(words[:3])


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=_block_id)
def test_readme_block(session, index):
    """Block ``index`` (and, when run alone, the blocks before it) exits 0 and writes what it promises."""
    while session["done"] <= index:
        if session["failed"] is not None:
            pytest.skip(f"README block {session['failed']} failed before this one")
        script, expect = BLOCKS[session["done"]]
        session["failed"] = session["done"]
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", shrink(substitute(script, session["data"]))],
                              cwd=session["cwd"], env=session["env"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README block {session['done']} failed:\n{script}\n{done.stderr[-3000:]}"
        for path in expect:
            _check_output(session["cwd"] / path.replace("$BUNDLE", str(session["bundle"])))
        session["failed"] = None
        session["done"] += 1
