"""Cohorts on disk: layout, labels.csv, masks, byte-for-byte determinism and the pinned DICOM UIDs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from ctmil.synthetic.phantoms import generate_cohort
from tests.synthetic._helpers import TINY, read_series_hu, tree_bytes


def test_cohort_label_balance(tmp_path):
    table = generate_cohort(tmp_path, n=40, seed=3, formats=("nifti",), progress=False, **TINY)
    assert len(table) == 40 and table["label"].sum() == 10
    assert table.loc[table.label == 1, "involvement"].min() > table.loc[table.label == 0, "involvement"].max()


def test_generate_cohort_layout_and_determinism(tmp_path):
    table = generate_cohort(tmp_path / "a", n=3, seed=5, progress=False, write_masks=True, **TINY)
    assert list(table.columns[:5]) == ["case_id", "label", "involvement", "dicom_dir", "nifti_path"]
    assert set(table.label) == {0, 1}
    csv = pd.read_csv(tmp_path / "a" / "labels.csv")
    assert csv.case_id.tolist() == table.case_id.tolist() and csv.label.tolist() == table.label.tolist()
    for row in csv.itertuples():
        files = sorted((tmp_path / "a" / row.dicom_dir).iterdir())
        assert len(files) == TINY["shape"][0] and not any(f.name.startswith(".") for f in files)
        vol = np.asarray(nib.as_closest_canonical(nib.load(tmp_path / "a" / row.nifti_path)).dataobj)
        assert vol.shape == (32, 32, 12)
        hu, _ = read_series_hu(files)
        np.testing.assert_array_equal(hu, vol[::-1, ::-1, :].transpose(2, 1, 0))
        lesion = np.asarray(nib.load(tmp_path / "a" / row.lesion_mask_path).dataobj)
        assert (lesion > 0).sum() / max(1, np.asarray(nib.load(tmp_path / "a" / row.lung_mask_path).dataobj).sum()) \
            == pytest.approx(row.involvement, abs=1e-5)
    generate_cohort(tmp_path / "b", n=3, seed=5, progress=False, write_masks=True, **TINY)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    generate_cohort(tmp_path / "c", n=3, seed=6, formats=("dicom",), progress=False, **TINY)
    uid_b = pydicom.dcmread(next((tmp_path / "b" / "dicom" / "case_0000").iterdir())).StudyInstanceUID
    uid_c = pydicom.dcmread(next((tmp_path / "c" / "dicom" / "case_0000").iterdir())).StudyInstanceUID
    assert uid_b != uid_c
    assert (pd.read_csv(tmp_path / "c" / "labels.csv").nifti_path.isna()).all()


def test_cohort_uids_are_pinned(tmp_path):
    """UIDs are drawn from each case's generator after its phantom: they pin the whole draw order of a case."""
    table = generate_cohort(tmp_path, n=2, seed=0, formats=("dicom",), progress=False, **TINY)
    assert table.label.tolist() == [0, 1]
    uids = [pydicom.dcmread(next((tmp_path / d).iterdir())).StudyInstanceUID for d in table.dicom_dir]
    assert uids == [
        "1.2.826.0.1.3680043.8.498.46888141252623777187431271131731762669",
        "1.2.826.0.1.3680043.8.498.53105003774925635743356752563873170775",
    ]
