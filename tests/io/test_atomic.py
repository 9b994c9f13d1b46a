"""The one atomic writer (issue 25): whole files or none, with the mode the user's umask gives (never mkstemp's 0600)."""

import os
import stat

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
