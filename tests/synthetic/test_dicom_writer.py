"""DICOM series writer: round trips with pydicom and MONAI, file names, instance numbers, transfer syntaxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctmil.synthetic.dicom_writer import write_dicom_series
from tests.synthetic._helpers import load_monai, read_series_hu


@pytest.mark.parametrize(
    "transfer_syntax, intercept", [("explicit", -1024.0), ("implicit", -1024.0), ("rle", -1024.0), ("explicit", 0.0)]
)
def test_dicom_round_trip(tmp_path, mild, transfer_syntax, intercept):
    vol = mild[0][::3]  # 16 slices keep the test fast
    paths = write_dicom_series(
        vol, (15.0, 2.7, 2.7), tmp_path, rng=5, patient_id="PH0007", patient_name="PHANTOM^0007",
        transfer_syntax=transfer_syntax, rescale_intercept=intercept,
    )
    assert len(paths) == vol.shape[0] and len(set(paths)) == len(paths)
    hu, dss = read_series_hu(sorted(paths))  # name order
    np.testing.assert_array_equal(hu, vol)
    by_name = [Path(p).name for p in sorted(paths)]
    by_position = [Path(d.filename).name for d in dss]
    assert by_name != by_position  # shuffled names
    d0 = dss[0]
    assert d0.SOPClassUID == pydicom.uid.CTImageStorage and d0.Modality == "CT"
    assert list(d0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert str(d0.PatientName) == "PHANTOM^0007" and d0.PatientID == "PH0007"
    assert [float(v) for v in d0.PixelSpacing] == [2.7, 2.7]
    assert float(d0.SliceThickness) == float(d0.SpacingBetweenSlices) == 15.0
    assert float(d0.RescaleIntercept) == intercept and d0.PixelRepresentation == int(intercept == 0)
    assert d0.file_meta.TransferSyntaxUID == {"explicit": pydicom.uid.ExplicitVRLittleEndian,
                                              "implicit": pydicom.uid.ImplicitVRLittleEndian,
                                              "rle": pydicom.uid.RLELossless}[transfer_syntax]
    z = [float(d.ImagePositionPatient[2]) for d in dss]
    np.testing.assert_allclose(np.diff(z), 15.0)
    assert [d.InstanceNumber for d in dss] == list(range(len(dss), 0, -1))  # head first, like the scanner
    assert len({d.SeriesInstanceUID for d in dss}) == 1 and len({d.StudyInstanceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    assert all(d.SOPInstanceUID == d.file_meta.MediaStorageSOPInstanceUID for d in dss)


def test_dicom_random_instance_numbers(tmp_path, mild):
    vol = mild[0][::4]
    paths = write_dicom_series(vol, (20.0, 2.7, 2.7), tmp_path, rng=1, instance_order="random")
    hu, dss = read_series_hu(paths)
    np.testing.assert_array_equal(hu, vol)
    numbers = [d.InstanceNumber for d in dss]
    assert sorted(numbers) == list(range(1, len(dss) + 1))
    assert numbers not in (sorted(numbers), sorted(numbers, reverse=True))


def test_dicom_paths_in_array_order(tmp_path, mild):
    vol = mild[0][::6]
    paths = write_dicom_series(vol, (30.0, 2.7, 2.7), tmp_path, rng=2, shuffle_file_names=False)
    assert [p.name for p in paths] == [f"IM{k + 1:06d}" for k in range(len(paths))]
    for k in (0, len(paths) - 1):
        d = pydicom.dcmread(paths[k])
        np.testing.assert_array_equal(d.pixel_array.astype(np.int32) - 1024, vol[k])


def test_monai_reads_dicom_folder(tmp_path, mild):
    vol, _, info = mild
    write_dicom_series(vol, info["spacing"], tmp_path / "series", rng=0, origin=info["origin_lps"])
    np.testing.assert_array_equal(load_monai(tmp_path / "series", reader="PydicomReader"), vol)
