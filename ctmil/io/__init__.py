"""CT reading in one place: DICOM headers, series discovery and choice, volume loading, NIfTI, slice images, datalists.

Discovery (:mod:`ctmil.io.discovery`) and the load transform (:class:`ctmil.transforms.LoadCT`) both read through
here, so each DICOM header is parsed once on the command-line path. Names are imported on first use, so that
``import ctmil.io.dicom_header`` (the header walker alone) does not pull in MONAI and torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CaseError": "readers", "detect_input_kind": "readers", "load_dicom_case": "readers", "load_nifti": "readers",
    "load_slice_folder": "readers",
    "DicomError": "dicom_series", "SeriesInfo": "dicom_series", "choose_ct_series": "dicom_series",
    "load_dicom_series": "dicom_series", "scan_dicom_tree": "dicom_series",
    "DicomReadError": "dicom_header", "read_header": "dicom_header",
    "discover_cases": "discovery", "read_datalist": "discovery", "read_table": "discovery", "study_key": "discovery",
    "safe_case_name": "paths",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ctmil.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ctmil.io.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
