"""CT reading in one place: DICOM headers, series discovery and choice, volume loading, NIfTI, slice images, datalists.

Discovery (:mod:`ctmil.io.discovery`) and the load transform (:class:`ctmil.transforms.LoadCT`) both read through
here, so each DICOM header is parsed once on the command-line path.
"""

from ctmil.io.dicom_series import DicomError, SeriesInfo, choose_ct_series, load_dicom_series, scan_dicom_tree
from ctmil.io.readers import CaseError, detect_input_kind, load_dicom_case, load_nifti, load_slice_folder

__all__ = [
    "CaseError",
    "DicomError",
    "SeriesInfo",
    "choose_ct_series",
    "detect_input_kind",
    "load_dicom_case",
    "load_dicom_series",
    "load_nifti",
    "load_slice_folder",
    "scan_dicom_tree",
]
