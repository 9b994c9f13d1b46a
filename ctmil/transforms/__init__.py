"""MONAI transforms: CT intake (DICOM discovery, NIfTI, slice images), lung mask, slice selection,
lung bounding-box crop + resize, 12-patch tiling and per-patch normalisation."""

from ctmil.transforms.compose import StoreCaseMetad, preprocessing_transforms
from ctmil.transforms.crop import LungBoxCrop, LungBoxCropd, SelectLungSlices, SelectLungSlicesd
from ctmil.transforms.dicom import DicomError, SeriesInfo, choose_ct_series, load_dicom_series, scan_dicom_tree
from ctmil.transforms.io import CaseError, LoadCT, LoadCTd, detect_input_kind
from ctmil.transforms.lung import LungMask, LungMaskd, lung_mask_hu, lung_mask_windowed
from ctmil.transforms.tiling import NormalizePatches, TilePatches, ToBagd

__all__ = [
    "CaseError", "DicomError", "LoadCT", "LoadCTd", "LungBoxCrop", "LungBoxCropd", "LungMask", "LungMaskd",
    "NormalizePatches", "SelectLungSlices", "SelectLungSlicesd", "SeriesInfo", "StoreCaseMetad", "TilePatches",
    "ToBagd", "choose_ct_series", "detect_input_kind", "load_dicom_series", "lung_mask_hu", "lung_mask_windowed",
    "preprocessing_transforms", "scan_dicom_tree",
]
