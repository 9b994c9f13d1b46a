"""Output paths from case ids never leave --out and never collide; CSVs keep ids as written; sources are
relative to the input; directory symlinks are followed once; a hostile export batch completes truthfully."""

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctmil.data.preprocess import bag_path_for, check_writable, preprocess_cases
from ctmil.io.discovery import discover_cases, read_datalist, read_table
from ctmil.io.paths import safe_case_name, walk_files
from tests.io._hostile import HOSTILE_FILES, edit, write_series

HOSTILE_IDS = ["../../../x/model", "/abs/olute", "x", "./x", "a/b", "a_b", "..", ".", "", "NA", "nan", "0012", "12", "C:\\evil", "é ü"]


def test_safe_names_are_unique_and_stay_inside(tmp_path):
    names = [safe_case_name(i) for i in HOSTILE_IDS]
    assert len(set(names)) == len(HOSTILE_IDS)
    assert safe_case_name("0012") == "0012" and safe_case_name("case-3_b.v2") == "case-3_b.v2"
    for case_id in HOSTILE_IDS:
        path = bag_path_for(tmp_path / "bags", case_id)
        assert path.parent == tmp_path / "bags" and not path.name.startswith(".")


def test_datalist_with_hostile_ids_writes_nothing_outside_out(tmp_path):
    src = tmp_path / "in" / "ct"
    write_series(src)
    ids = ["../../../x/model", str(tmp_path / "abs"), "x", "./x"]
    pd.DataFrame({"case_id": ids, "image": ["ct"] * 4, "label": ["1", "0", "", "NA"]}).to_csv(tmp_path / "in" / "list.csv", index=False)
    before = {p for p in tmp_path.rglob("*")}
    manifest = preprocess_cases(discover_cases([tmp_path / "in" / "list.csv"]), tmp_path / "out", progress=False)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(tmp_path / "out" in p.parents or p == tmp_path / "out" for p in created)
    assert list(manifest["status"]) == ["ok"] * 4 and manifest["bag_path"].nunique() == 4
    assert list(manifest["case_id"]) == ids and manifest["source"].eq("ct").all()


def test_tables_are_read_as_strings(tmp_path):
    (tmp_path / "l.csv").write_text("case_id,image,label\n0012,a,1\nNA,b,\nnan,c,0\n")
    table = read_table(tmp_path / "l.csv")
    assert list(table["case_id"]) == ["0012", "NA", "nan"] and list(table["label"]) == ["1", "", "0"]
    cases = read_datalist(tmp_path / "l.csv")
    assert [c["case_id"] for c in cases] == ["0012", "NA", "nan"]


@pytest.mark.parametrize("content, match", [
    ("subject,score\n1,2\n", "not a datalist"), ("", "not a readable CSV"), ('case_id,image\n"a,b\n', "not a readable CSV"),
    ("case_id,image\nx,a\nx,b\n", "duplicate case ids"),
])
def test_bad_csvs_are_one_line_value_errors(tmp_path, content, match):
    (tmp_path / "l.csv").write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        discover_cases([tmp_path / "l.csv"])
    assert "\n" not in str(info.value)


def test_bad_label_is_a_case_error(tmp_path):
    write_series(tmp_path / "ct")
    (tmp_path / "l.csv").write_text("case_id,image,label\na,ct,yes\n")
    (case,) = read_datalist(tmp_path / "l.csv")
    assert case["image"] is None and "not 0 or 1" in case["error"]


def test_sources_are_relative_unless_kept(tmp_path):
    root = tmp_path / "Doe_Jane"
    write_series(root / "study" / "ct")
    (case,) = discover_cases([root])
    assert case["source"] == "study/ct"
    (kept,) = discover_cases([root], keep_paths=True)
    assert kept["source"] == str(root / "study" / "ct")
    manifest = preprocess_cases([case], tmp_path / "out", progress=False)
    bag = torch.load(manifest["bag_path"][0], weights_only=True)
    assert "Doe_Jane" not in (tmp_path / "out" / "manifest.csv").read_text() and "Doe_Jane" not in repr(bag["meta"])


def test_directory_symlinks_are_followed_once(tmp_path):
    write_series(tmp_path / "store" / "ct")
    export = tmp_path / "export"
    export.mkdir()
    os.symlink(tmp_path / "store", export / "linked_study")
    os.symlink(export, export / "linked_study" / "loop")  # a loop back up
    files = list(walk_files(export))
    assert len(files) == 12
    (case,) = discover_cases([export])
    assert not case["error"] and len(case["image"]) == 12


def test_unwritable_out_fails_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot write to"):
        check_writable(tmp_path / "file" / "bags")
    with pytest.raises(ValueError, match="duplicate case ids"):
        preprocess_cases([{"case_id": "a", "image": None}, {"case_id": "a", "image": None}], tmp_path / "out", progress=False)


def test_hostile_export_batch_gives_one_truthful_row_per_case(tmp_path):
    export = tmp_path / "EXPORT"
    write_series(export / "good")
    nan = write_series(export / "nan_all", seed=2)
    edit(nan, range(12), ImagePositionPatient=[float("nan"), 0.0, 0.0])
    slope = write_series(export / "slope", seed=3)
    edit(slope, range(12), RescaleSlope=0.0)
    damaged = write_series(export / "damaged", seed=4)
    damaged[3].write_bytes(damaged[3].read_bytes()[:-300])
    anon = write_series(export / "anon", seed=5)
    edit(anon, range(12), StudyInstanceUID="", SeriesInstanceUID="")
    for name, write in HOSTILE_FILES.items():
        write(export / "good" / f"junk_{name}")
    manifest = preprocess_cases(discover_cases([export]), tmp_path / "out", progress=False)
    records = manifest.fillna("").to_dict("records")
    hostile = [r for r in records if "too few slices (1 < 8)" in r["error"]]  # the readable hostile slice, its own study
    rows = {r["source"]: r for r in records if r not in hostile}
    assert len(records) == 6 and len(hostile) == 1 and len(rows) == 5 and hostile[0]["status"] == "failed"
    assert rows["good"]["status"] == "ok" and rows["anon"]["status"] == "ok" and "grouped by folder" in rows["anon"]["warning"]
    assert rows["damaged"]["status"] == "ok" and damaged[3].name in rows["damaged"]["warning"] and rows["damaged"]["n_slices"] == 11
    assert rows["nan_all"]["status"] == "failed" and "ImagePositionPatient" in rows["nan_all"]["error"]
    assert rows["slope"]["status"] == "failed" and "RescaleSlope" in rows["slope"]["error"]
    assert (tmp_path / "out" / "manifest.csv").exists()


@pytest.mark.parametrize("ids", [("Case1", "case1"), ("AB", "ab", "Ab"), ("PerCOVID_001", "percovid_001")])
def test_ids_differing_only_in_case_get_names_that_differ_on_case_insensitive_file_systems(ids):
    from ctmil.io.paths import safe_case_name

    names = [safe_case_name(i).lower() for i in ids]
    assert len(set(names)) == len(ids)


@pytest.mark.parametrize("label, written", [(1.0, "1"), (0.0, "0"), (None, ""), (float("nan"), "")])
def test_labels_are_written_as_users_write_them(label, written):
    from ctmil.data.preprocess import label_text

    assert str(label_text(label)) == written
