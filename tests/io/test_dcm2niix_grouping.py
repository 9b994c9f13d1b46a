"""Series grouping compared with dcm2niix (Debian's ``dcm2niix``, the converter hospitals trust), where it is
installed: the same groups of files, with and without UIDs. Skipped when dcm2niix is absent."""

import re
import shutil
import subprocess

import pydicom
import pytest

from ctmil.io.dicom_series import scan_dicom_tree
from ctmil.synthetic.dicom_writer import write_dicom_series
from tests.conftest import simple_chest
from tests.io._hostile import write_series

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix not installed (apt-get install dcm2niix)")


def _dcm2niix_groups(folder, out) -> list[int]:
    out.mkdir()
    run = subprocess.run([DCM2NIIX, "-b", "n", "-z", "n", "-o", str(out), "-f", "%s_%j", str(folder)], capture_output=True, text=True, timeout=60)
    return sorted(int(n) for n in re.findall(r"Convert (\d+) DICOM", run.stdout))


def _blank_uids(paths):
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(p)


def _two_series(root, same_folder: bool):
    """A 12-slice thin and a 6-slice thick series of one scan (one frame of reference), in one or two folders."""
    thin = write_series(root / "study" / "thin", n=12, seed=1, frame_of_reference_uid="1.2.3.4")
    thick = write_dicom_series(simple_chest(n_slices=6), (10.0, 1.5, 1.5), root / "tmp", rng=2, frame_of_reference_uid="1.2.3.4",
                               series_number=3, slice_thickness=10.0)
    folder = root / "study" / ("thin" if same_folder else "thick")
    folder.mkdir(exist_ok=True)
    moved = [p.rename(folder / f"T{p.name}") for p in thick]
    (root / "tmp").rmdir()
    return thin + moved


@pytest.mark.parametrize("same_folder", [False, True], ids=["two_folders", "one_folder"])
@pytest.mark.parametrize("anonymised", [False, True], ids=["uids", "blank_uids"])
def test_same_groups_as_dcm2niix(tmp_path, same_folder, anonymised):
    paths = _two_series(tmp_path / "in", same_folder)
    if anonymised:
        _blank_uids(paths)
    studies, skipped = scan_dicom_tree(tmp_path / "in")
    ours = sorted(s.n_files for group in studies.values() for s in group)
    assert not skipped and ours == [6, 12]
    assert _dcm2niix_groups(tmp_path / "in", tmp_path / "out") == ours
    assert all(s.inferred == anonymised for group in studies.values() for s in group)
