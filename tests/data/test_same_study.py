"""preprocess reports a study given twice (e.g. as DICOM and as NIfTI): the same image after preprocessing."""

from __future__ import annotations

import pandas as pd
import pytest

from ctmil.data.preprocess import preprocess_cases, report_same_studies
from ctmil.io.discovery import discover_cases
from ctmil.synthetic.phantoms import generate_cohort


def _manifest(ids, kinds):
    return pd.DataFrame({"case_id": ids, "input_kind": kinds, "warning": ["", "thin slices", "", ""][: len(ids)]})


@pytest.mark.parametrize("fingerprints, expected", [
    ({"a": (1,), "b": (2,), "c": (3,)}, ["", "thin slices", ""]),
    ({"a": (1,), "b": (1,), "c": (3,)}, ["the same study as b", "thin slices; the same study as a", ""]),
    ({"a": (1,), "b": (1,), "c": (1,)}, ["the same study as b, c", "thin slices; the same study as a, c", "the same study as a, b"]),
    ({"a": None, "b": None, "c": (3,)}, ["", "thin slices", ""]),  # no density recorded: nothing to compare
])
def test_same_fingerprints_are_named_in_each_others_warning(fingerprints, expected, caplog):
    out = report_same_studies(_manifest(["a", "b", "c"], ["nifti", "dicom", "nifti"]), fingerprints)
    assert out["warning"].tolist() == expected
    assert ("look like one study" in caplog.text) == (expected[0].startswith("the same"))


def test_phantoms_given_as_dicom_and_nifti_are_reported(tmp_path):
    generate_cohort(tmp_path / "in", n=2, seed=0, formats=("nifti", "dicom"), shape=(12, 64, 64), spacing=(8.0, 5.0, 5.0),
                    progress=False)
    manifest = preprocess_cases(discover_cases([tmp_path / "in"]), tmp_path / "out", {"min_slices": 4}, progress=False,
                                montages=False)
    ok = manifest[manifest["status"] != "failed"].set_index("case_id")
    assert len(ok) == 4
    pairs = {c: w.removeprefix("the same study as ") for c, w in ok["warning"].items()}
    assert all(pairs[pairs[c]] == c for c in pairs)  # each copy names the other
    assert {ok.loc[c, "input_kind"] for c in pairs} == {"nifti", "dicom"}
    assert all(ok.loc[c, "input_kind"] != ok.loc[pairs[c], "input_kind"] for c in pairs)
