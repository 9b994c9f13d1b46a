"""MONAI transforms of the preprocessing chain (array + dictionary pairs): load, lung mask, slice filter, slice
sampling, crop, HU window, tiling.

They work behind ctmil's own loader (``LoadCT``, slice-first ``(1, S, H, W)``, ``slice_axis=1``) and behind MONAI's
(``LoadImaged`` + ``EnsureChannelFirstd`` + ``Orientationd``, spatial-last, ``slice_axis=-1``): see
:mod:`ctmil.transforms.layout` and docs/preprocessing.md.
"""

from ctmil.transforms.compose import StoreCaseMetad, bag_channels, preprocessing_settings, preprocessing_transforms
from ctmil.transforms.crop import LungBoxCrop, LungBoxCropd, SelectLungSlices, SelectLungSlicesd
from ctmil.transforms.density import DENSITY_FEATURES, LungDensity, LungDensityd, density_input, density_vector
from ctmil.transforms.intensity import LUNG_WINDOW_HU, WindowHU, WindowHUd
from ctmil.transforms.layout import DEFAULT_SLICE_AXIS
from ctmil.transforms.load import LOADCT_SLICE_AXIS, LoadCT, LoadCTd
from ctmil.transforms.lung import LungMask, LungMaskd
from ctmil.transforms.lung_masks import lung_mask_hu, lung_mask_windowed
from ctmil.transforms.plausibility import CheckLungs, CheckLungsd, ImplausibleLungs
from ctmil.transforms.sampling import SampleSlices, SampleSlicesd
from ctmil.transforms.tiling import BAG_KEYS, PATCH_DTYPES, NormalizePatches, TilePatches, ToBagd

__all__ = [
    "BAG_KEYS",
    "CheckLungs",
    "CheckLungsd",
    "DEFAULT_SLICE_AXIS",
    "DENSITY_FEATURES",
    "ImplausibleLungs",
    "LOADCT_SLICE_AXIS",
    "LUNG_WINDOW_HU",
    "LoadCT",
    "LoadCTd",
    "LungBoxCrop",
    "LungBoxCropd",
    "LungDensity",
    "LungDensityd",
    "LungMask",
    "LungMaskd",
    "NormalizePatches",
    "PATCH_DTYPES",
    "SampleSlices",
    "SampleSlicesd",
    "SelectLungSlices",
    "SelectLungSlicesd",
    "StoreCaseMetad",
    "TilePatches",
    "ToBagd",
    "WindowHU",
    "WindowHUd",
    "bag_channels",
    "density_input",
    "density_vector",
    "lung_mask_hu",
    "lung_mask_windowed",
    "preprocessing_settings",
    "preprocessing_transforms",
]
