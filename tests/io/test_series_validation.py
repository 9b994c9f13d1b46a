"""Geometry, rescaling, damaged slices, gaps and anonymised series: every case either loads with a truthful
warning or fails with a reason that names the problem (never "ok" with a NaN affine)."""

import numpy as np
import pydicom
import pytest

from ctmil.io.dicom_series import DicomError, choose_ct_series, load_dicom_series, scan_dicom_tree
from ctmil.io.discovery import discover_cases
from ctmil.io.readers import CaseError, load_dicom_case
from tests.io._hostile import edit, write_series

BAD_VALUES = {
    "nan_position": {"ImagePositionPatient": [float("nan"), 0.0, 0.0]},
    "inf_position": {"ImagePositionPatient": [0.0, 0.0, float("inf")]},
    "negative_spacing": {"PixelSpacing": [-1.5, 1.5]},
    "absurd_spacing": {"PixelSpacing": [500.0, 500.0]},
    "nan_spacing": {"PixelSpacing": [float("nan"), 1.5]},
    "zero_slope": {"RescaleSlope": 0.0},
    "nan_intercept": {"RescaleIntercept": float("nan")},
    "degenerate_orientation": {"ImageOrientationPatient": [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]},
    "zero_orientation": {"ImageOrientationPatient": [0.0] * 6},
}
REASON = {
    "nan_position": "ImagePositionPatient", "inf_position": "ImagePositionPatient", "negative_spacing": "PixelSpacing",
    "absurd_spacing": "PixelSpacing", "nan_spacing": "PixelSpacing", "zero_slope": "RescaleSlope",
    "nan_intercept": "RescaleIntercept", "degenerate_orientation": "degenerate", "zero_orientation": "degenerate",
}


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_bad_geometry_on_every_slice_fails_the_case_with_the_reason(tmp_path, kind):
    paths = write_series(tmp_path / "s")
    edit(paths, range(len(paths)), **BAD_VALUES[kind])
    (case,) = discover_cases([tmp_path])
    assert case["image"] is None and REASON[kind] in case["error"] and "12 of 12 slices unusable" in case["error"]
    with pytest.raises(DicomError, match=REASON[kind]):
        load_dicom_series(paths)  # the same files given as a list


@pytest.mark.parametrize("kind", ["nan_position", "zero_slope", "negative_spacing"])
def test_one_bad_slice_is_dropped_with_a_warning_naming_it(tmp_path, kind):
    paths = write_series(tmp_path / "s")
    edit(paths, [5], **BAD_VALUES[kind])
    (case,) = discover_cases([tmp_path])
    assert not case["error"] and len(case["image"]) == 11 and paths[5].name in case["warning"]
    volume, affine, meta = load_dicom_series(paths)
    assert volume.shape[0] == 11 and np.all(np.isfinite(affine)) and np.all(np.isfinite(volume))
    assert any(paths[5].name in w for w in meta["warnings"]) and any("1 of 12 slices missing" in w for w in meta["warnings"])


@pytest.mark.parametrize("n_cut, ok", [(1, True), (3, False)])
def test_truncated_slices(tmp_path, n_cut, ok):
    paths = write_series(tmp_path / "s")
    for p in paths[4 : 4 + n_cut]:
        p.write_bytes(p.read_bytes()[:-500])  # cut inside the pixel data
    if ok:
        volume, _, meta = load_dicom_case(str(tmp_path / "s"))
        assert volume.shape[0] == 12 - n_cut and paths[4].name in " ".join(meta["warnings"])
    else:
        with pytest.raises(CaseError, match=f"{n_cut} of 12 slices unusable, first {paths[4].name}: truncated"):
            load_dicom_case(str(tmp_path / "s"))


@pytest.mark.parametrize("missing, ok", [([6], True), ([3, 4, 5, 6, 7], False)])
def test_missing_block_of_slices(tmp_path, missing, ok):
    paths = write_series(tmp_path / "s", n=20)
    for i in missing:
        paths[i].unlink()
    studies, _ = scan_dicom_tree(tmp_path)
    chosen, reason = choose_ct_series(next(iter(studies.values())))
    if ok:
        assert chosen is not None and "1 of 20 slices missing" in " ".join(chosen.warnings)
        volume, affine, meta = load_dicom_series(chosen.files)
        assert volume.shape[0] == 19 and meta["spacing"][0] == pytest.approx(5.0)
        assert np.linalg.norm(affine[:3, 0]) == pytest.approx(5.0)  # the per-index step, not averaged over the gap
    else:
        assert chosen is None and "5 of 20 slices missing" in reason and "broken series" in reason


def _anonymise(paths, study="", series=""):
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(p)


def test_blank_uids_are_grouped_by_folder_and_geometry_with_a_warning(tmp_path):
    thin = write_series(tmp_path / "study" / "thin", n=12, seed=1, frame_of_reference_uid="1.2.3.4")
    thick = write_dicom_series_thick(tmp_path / "study" / "thick")
    _anonymise(thin + thick)
    cases = discover_cases([tmp_path])
    assert len(cases) == 1, cases  # one frame of reference: one study, two series
    (case,) = cases
    assert not case["error"] and len(case["image"]) == 12 and "grouped by folder" in case["warning"]


def write_dicom_series_thick(folder):
    from ctmil.synthetic.dicom_writer import write_dicom_series
    from tests.conftest import simple_chest

    return write_dicom_series(simple_chest(n_slices=6), (10.0, 1.5, 1.5), folder, rng=2, frame_of_reference_uid="1.2.3.4", series_number=3)


def test_two_anonymised_series_mixed_in_one_folder_are_not_merged(tmp_path):
    a = write_series(tmp_path / "s", n=12, seed=1)
    b = [p.rename(p.with_name(p.name + "b")) for p in write_series(tmp_path / "tmp", n=12, seed=2, series_number=5)]
    moved = [p.rename(tmp_path / "s" / p.name) for p in b]
    _anonymise(a + moved)
    studies, _ = scan_dicom_tree(tmp_path)
    series = [s for group in studies.values() for s in group]
    assert sorted(s.n_files for s in series) == [12, 12] and all(s.inferred for s in series)


def test_rejected_files_are_summarised_truthfully(tmp_path):
    paths = write_series(tmp_path / "s")
    for p in paths:
        p.write_bytes(p.read_bytes()[:400])  # every file cut inside its header
    (case,) = discover_cases([tmp_path])
    assert case["error"].startswith("12 DICOM files found but none usable; 12 files rejected: 12 × ")
    assert "no DICOM images, NIfTI" not in case["error"]


def test_a_folder_named_as_one_case_with_blank_uids_is_one_study(tmp_path):
    """Series sub-folders without UIDs or a frame of reference are inferred as separate studies; a folder the
    user names as one case (datalist, LoadCT) is still read as one study and its best series chosen."""
    thin = write_series(tmp_path / "case" / "a", n=12, seed=1)
    thick = write_series(tmp_path / "case" / "b", n=9, seed=2)
    _anonymise(thin + thick)
    for p in thin + thick:
        ds = pydicom.dcmread(p)
        del ds.FrameOfReferenceUID
        ds.save_as(p)
    assert len(scan_dicom_tree(tmp_path / "case")[0]) == 2
    volume, _, meta = load_dicom_case(str(tmp_path / "case"))
    assert volume.shape[0] == 12 and any("grouped by folder" in w for w in meta["warnings"])


@pytest.mark.parametrize("thickness", ["nan", "inf", "-2", "1e999"])
def test_a_single_slice_with_a_bad_thickness_gets_a_finite_affine(tmp_path, thickness):
    (path,) = write_series(tmp_path / "s", n=1)
    data = path.read_bytes()
    at = data.index(b"\x18\x00\x50\x00DS")  # SliceThickness
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    path.write_bytes(data[: at + 8] + thickness.encode().ljust(length)[:length] + data[at + 8 + length :])
    _, affine, meta = load_dicom_series([path])
    assert np.all(np.isfinite(affine)) and meta["spacing"][0] == 1.0
