"""MONAI transforms of the preprocessing chain (array + dictionary pairs): load, lung mask, slice filter, crop, tiling."""

from ctmil.transforms.compose import StoreCaseMetad, preprocessing_transforms
from ctmil.transforms.crop import LungBoxCrop, LungBoxCropd, SelectLungSlices, SelectLungSlicesd
from ctmil.transforms.load import LoadCT, LoadCTd
from ctmil.transforms.lung import LungMask, LungMaskd, lung_mask_hu, lung_mask_windowed
from ctmil.transforms.tiling import NormalizePatches, TilePatches, ToBagd

__all__ = [
    "LoadCT",
    "LoadCTd",
    "LungBoxCrop",
    "LungBoxCropd",
    "LungMask",
    "LungMaskd",
    "NormalizePatches",
    "SelectLungSlices",
    "SelectLungSlicesd",
    "StoreCaseMetad",
    "TilePatches",
    "ToBagd",
    "lung_mask_hu",
    "lung_mask_windowed",
    "preprocessing_transforms",
]
