"""Issue 11's hostile files, one at a time and as a tree: read_header raises only DicomReadError (fast, in
bounded memory), discovery skips each with its reason and still finds the good series beside them."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from ctmil.io.dicom_header import DicomReadError, read_header
from ctmil.io.dicom_series import DicomError, load_dicom_series, scan_dicom_tree
from ctmil.io.discovery import discover_cases
from tests.io._hostile import HOSTILE_FILES, base_dataset, write_base, write_huge_rle, write_series

REPO = Path(__file__).resolve().parents[2]
EXPECTED_REASON = {  # what the skip reason must say (the file is never read as an image)
    "is_inf": "not a 32-bit integer", "is_1e999": "not a 32-bit integer", "is_nan_instance": "not a 32-bit integer",
    "nested_300": "nested deeper", "nested_300_implicit": "nested deeper", "deflated_garbage": "not a valid deflate stream",
    "huge_length_explicit": "past the end of the file", "huge_length_implicit": "past the end of the file",
    "huge_rle": "larger than 4096×4096", "deflate_bomb": "past the end of the file",
    "swallowing_description": None,  # read: the description is cut at the control bytes of the next element
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_each_hostile_file_is_skipped_with_its_reason(tmp_path, name):
    path = HOSTILE_FILES[name](tmp_path / name)
    start = time.perf_counter()
    try:
        header = read_header(path)
    except DicomReadError as err:
        assert "\n" not in str(err)
    else:
        assert all("DOE" not in str(v) and "SECRET" not in str(v) for v in header.values.values())
    studies, skipped = scan_dicom_tree(tmp_path)
    assert time.perf_counter() - start < 2.0
    if EXPECTED_REASON[name] is None:
        (series,) = next(iter(studies.values()))
        assert not skipped and series.description == "THORAX 5.0 B70f LUNG"
    else:
        assert not studies and len(skipped) == 1 and EXPECTED_REASON[name] in skipped[0][1], skipped


def test_description_with_a_wrong_length_never_carries_the_patient_name(tmp_path):
    path = HOSTILE_FILES["swallowing_description"](tmp_path / "a.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).get("SeriesDescription", "").endswith("DOE^JANE")  # as declared
    try:
        values = read_header(path).values
    except DicomReadError:
        return
    assert "DOE" not in repr(values)


@pytest.mark.parametrize("text, expected", [("THORAX\x01DOE^JANE", "THORAX"), ("A" * 200, "A" * 64), ("\x1bLUNG", None)])
def test_free_text_is_cut_at_control_characters_and_limited(tmp_path, text, expected):
    ds = base_dataset()
    ds.SeriesDescription = text
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)
    assert read_header(tmp_path / "a.dcm").get("SeriesDescription") == expected


def test_a_long_header_is_read_through_a_small_window(tmp_path):
    """A 32 MiB private element before the image tags: skipped by seeking, not read or buffer-grown."""
    import tracemalloc

    from tests.io._hostile import MARK_TAG, element, splice

    path = splice(tmp_path / "a.dcm", element(MARK_TAG, "OB", bytes(32 << 20)))
    tracemalloc.start()
    start = time.perf_counter()
    header = read_header(path)
    elapsed, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert header.parsed_by == "ctmil" and header.get("Rows") == 32 and header.pixel_offset is not None
    assert peak < 1 << 20 and elapsed < 0.5


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = write_huge_rle(tmp_path / "a.dcm")
    with pytest.raises(DicomError, match="larger than 4096"):
        load_dicom_series([read_header(path)])


def test_hostile_files_beside_a_good_series_leave_one_good_case(tmp_path):
    good = write_series(tmp_path / "study" / "ct", n=10)
    for name, write in HOSTILE_FILES.items():
        write(tmp_path / "study" / "ct" / f"zz_{name}")  # in the series' own folder
    cases = discover_cases([tmp_path])
    (case,) = [c for c in cases if not c["error"]]  # the readable 1-slice hostile study fails: too few slices
    assert len(case["image"]) == len(good)


_UNDER_LIMIT = """
import json, resource, sys, warnings
warnings.simplefilter("ignore")
from ctmil.io.dicom_series import scan_dicom_tree
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))  # 1 GiB above what the imports took
studies, skipped = scan_dicom_tree(sys.argv[1])
with open("/proc/self/status") as fh:  # VmHWM starts afresh at exec; ru_maxrss would carry the forking worker's size
    peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
print(json.dumps({"studies": len(studies), "skipped": len(skipped), "peak_kb": peak}))
"""


def test_discovery_over_a_hostile_tree_under_a_1_gib_address_space_limit(tmp_path):
    write_series(tmp_path / "good", n=10)
    (tmp_path / "junk").mkdir()
    for name, write in HOSTILE_FILES.items():
        for k in range(2):
            write(tmp_path / "junk" / f"{name}_{k}")
    run = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["studies"] == 2 and result["skipped"] == 2 * (len(HOSTILE_FILES) - 1)  # the description one is read
    assert result["peak_kb"] < 1 << 20
