"""The one atomic writer (issue 25): whole files or none, with the mode the user's umask gives (never mkstemp's 0600)."""

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctmil.io.atomic import atomic_open, atomic_torch_save, atomic_write_bytes, atomic_write_csv, atomic_write_text


@pytest.fixture
def umask():
    """Set a umask for the test and restore the old one."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


WRITERS = {
    "bytes": lambda p: atomic_write_bytes(b"x", p),
    "text": lambda p: atomic_write_text("x", p),
    "csv": lambda p: atomic_write_csv(pd.DataFrame({"a": [1]}), p),
    "torch": lambda p: atomic_torch_save({"a": torch.zeros(1)}, p),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_umasks_mode(tmp_path, umask, writer, mask, mode):
    umask(mask)
    path = WRITERS[writer](tmp_path / "sub" / "out.bin")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]  # no temporary file left


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = atomic_write_text("old", tmp_path / "f.txt")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_preprocess_outputs_are_readable_by_the_group_and_others(tmp_path, umask):
    """What a colleague on a shared server reads: manifest, datalist, bags, QC record and page, under umask 022."""
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.synthetic.phantoms import make_phantom, write_nifti

    umask(0o022)
    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    nifti = write_nifti(vol, info["spacing"], tmp_path / "in" / "c.nii.gz")
    preprocess_cases([{"case_id": "c", "image": str(nifti), "label": 1.0}], tmp_path / "out", progress=False)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".csv", ".pt", ".html", ".json", ".png"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(0o644)}


def test_atomic_path_keeps_the_suffix_sets_the_mode_and_cleans_up(tmp_path):
    from ctmil.io.atomic import atomic_path, file_mode

    target = tmp_path / "sub" / "map.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x" and (target.stat().st_mode & 0o777) == file_mode()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"x" and sorted(p.name for p in target.parent.iterdir()) == ["map.nii.gz"]


#: Places that rename on purpose, each with its reason: the one atomic writer itself, and the phantom cohort, which
#: publishes a whole study folder (files written in a temporary folder, then the folder renamed).
RENAMES_ALLOWED = {"ctmil/io/atomic.py": "the one atomic writer", "ctmil/synthetic/cohort.py": "a whole folder at once"}


def test_there_is_one_atomic_writer():
    """No module writes a temporary file and renames it on its own: they all go through ctmil.io.atomic."""
    import re

    root = Path(__file__).resolve().parents[2]
    found = [f"{p.relative_to(root)}:{n}" for p in sorted((root / "ctmil").rglob("*.py")) if not p.is_symlink()
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bos\.(replace|rename)\(|\.rename\((?!columns=|index=|$)|shutil\.move\(", line)
             and str(p.relative_to(root)) not in RENAMES_ALLOWED]
    assert not found, found


def test_there_is_one_roc_plot():
    """Every ROC picture goes through ctmil.report.plots.plot_roc: no other module computes a curve and draws it."""
    import re

    root = Path(__file__).resolve().parents[2]
    drawing = [str(p.relative_to(root)) for p in sorted((root / "ctmil").rglob("*.py"))
               if "fpr" in p.read_text() and re.search(r"\b(ax|plt|axes)\.(step|plot)\(", p.read_text())]
    assert drawing == ["ctmil/report/plots.py"], drawing
