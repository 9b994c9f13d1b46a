"""The direct raw-pixel reader for uncompressed DICOM must give exactly what pydicom decodes, and fall back to
pydicom whenever a file is laid out differently."""

import numpy as np
import pydicom
import pytest

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.io.dicom_series import DicomError, load_dicom_series, scan_dicom_tree
from ctmil.io.dicom_header import read_header
from tests.conftest import simple_chest


def _reference(paths):
    """HU by pydicom's own decoder, slices sorted along z."""
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])


@pytest.mark.parametrize(
    "syntax, intercept, slope, hu_offset, dtype",
    [
        ("explicit", -1024.0, 1.0, 0.0, np.int16),  # the usual CT: unsigned stored values, int16 HU in place
        ("implicit", -1024.0, 1.0, 0.0, np.int16),
        ("explicit", 0.0, 1.0, 0.0, np.int16),  # signed stored values
        ("implicit", -3000.0, 1.0, 0.0, np.int16),
        ("explicit", -1000.5, 0.5, 0.0, np.float32),  # fractional rescale → float32
        ("explicit", 32000.0, 1.0, 32600.0, np.float32),  # HU beyond int16 → float32, not wrapped
    ],
)
def test_raw_reader_matches_pydicom(tmp_path, syntax, intercept, slope, hu_offset, dtype):
    vol = simple_chest(n_slices=7, size=48) + hu_offset
    paths = write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=1, transfer_syntax=syntax, rescale_intercept=intercept, rescale_slope=slope)
    items = [read_header(p) for p in paths]
    assert all(it.pixel_offset is not None for it in items)  # the direct path is taken
    loaded, _, meta = load_dicom_series(items)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded, _reference(paths))
    np.testing.assert_allclose(loaded, vol, atol=max(slope, 1.0))
    assert meta["n_slices"] == 7


@pytest.mark.parametrize("beyond", [0, 3, 6])
def test_one_slice_beyond_int16_makes_the_whole_volume_float(tmp_path, beyond):
    """Slices are shifted to HU as they are read; when a later slice leaves int16, the earlier ones are put back
    and the whole volume goes to float32, equal to pydicom's."""
    vol = simple_chest(n_slices=7, size=48)
    vol[beyond] += 32600.0
    paths = write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=4, rescale_intercept=32000.0, shuffle_file_names=False)
    loaded, _, _ = load_dicom_series([read_header(p) for p in paths])
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, _reference(paths))


def test_per_slice_intercepts(tmp_path):
    vol = simple_chest(n_slices=6, size=48)
    paths = write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=2, shuffle_file_names=False)
    for k, p in enumerate(paths):  # a different whole-number intercept on each slice
        ds = pydicom.dcmread(p)
        ds.PixelData = (ds.pixel_array.astype(np.int32) - k).astype(ds.pixel_array.dtype).tobytes()
        ds.RescaleIntercept = -1024 + k
        ds.save_as(p)
    loaded, _, _ = load_dicom_series([str(p) for p in paths])
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded, _reference(paths))


def test_files_with_data_after_the_pixels_fall_back_to_pydicom(tmp_path):
    vol = simple_chest(n_slices=6, size=48)
    paths = write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=3)
    ds = pydicom.dcmread(paths[2])
    ds.DataSetTrailingPadding = b"\0" * 16  # (FFFC,FFFC) after the pixel data
    ds.save_as(paths[2])
    items = [read_header(p) for p in paths]
    assert items[2].pixel_offset is None and all(it.pixel_offset is not None for k, it in enumerate(items) if k != 2)
    loaded, _, _ = load_dicom_series(items)
    np.testing.assert_array_equal(loaded, _reference(paths))


def test_truncated_file_is_a_one_line_error(tmp_path):
    vol = simple_chest(n_slices=6, size=48)
    paths = write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=4)
    items = [read_header(p) for p in paths]
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-100])  # cut after discovery
    with pytest.raises(DicomError, match="truncated pixel data"):
        load_dicom_series(items)


def test_header_read_stops_before_the_pixels_and_keeps_what_discovery_needs(tmp_path):
    vol = simple_chest(n_slices=8, size=48)
    write_dicom_series(vol, (2.0, 1.0, 1.0), tmp_path, rng=5)
    studies, skipped = scan_dicom_tree(tmp_path, keep_headers=True)
    (series,) = next(iter(studies.values()))
    assert not skipped and len(series.slices) == 8
    header = series.slices[0]
    assert header.parsed_by == "ctmil" and header.dataset is None
    assert {"ImagePositionPatient", "RescaleIntercept", "Rows"} <= set(header.values) and "PatientID" not in header.values
