"""The header walker against pydicom on every file pydicom ships for its own tests (those pydicom itself reads):
the same values, and raw pixels (where the walker locates them) equal to pydicom's ``pixel_array``."""

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from ctmil.io.dicom_header import DicomReadError, header_values, read_header

FILES = sorted(get_testdata_files())


def _pydicom(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            return ds, header_values(ds)
        except Exception as err:  # noqa: BLE001 - pydicom cannot read it either: nothing to compare
            pytest.skip(f"pydicom cannot read {Path(path).name}: {type(err).__name__}")


def test_there_are_files_to_compare():
    assert len(FILES) > 100


@pytest.mark.parametrize("path", FILES, ids=[Path(f).name for f in FILES])
def test_walker_agrees_with_pydicom(path):
    ds, expected = _pydicom(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = read_header(path)
        except DicomReadError as err:
            pytest.fail(f"pydicom reads it, read_header rejects it: {err}")
    assert header.values == expected
    if header.pixel_offset is not None:
        rows, cols = header.values["Rows"], header.values["Columns"]
        dtype = "<i2" if header.values.get("PixelRepresentation") == 1 else "<u2"
        raw = np.fromfile(path, dtype=dtype, count=rows * cols, offset=header.pixel_offset).reshape(rows, cols)
        np.testing.assert_array_equal(raw, ds.pixel_array)
