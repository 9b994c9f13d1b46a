"""The deterministic preprocessing chain of the paper, files → bag, as one MONAI ``Compose``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from ctmil.transforms.crop import LungBoxCropd, SelectLungSlicesd
from ctmil.transforms.load import LoadCTd
from ctmil.transforms.lung import LungMaskd
from ctmil.transforms.tiling import ToBagd


def _plain(value):
    """Metadata as weights_only-loadable plain Python (lists, floats, str, dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


class StoreCaseMetad(MapTransform):
    """Copy the loader's metadata (affine, spacing, shape, source, series) of ``d[key]`` to ``d[meta_key]``."""

    def __init__(self, keys="image", meta_key: str = "image_meta", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        img = d[self.first_key(d)]
        if not isinstance(img, MetaTensor):
            raise TypeError("StoreCaseMetad needs the MetaTensor written by LoadCTd")
        fields = ("input_kind", "intensity", "spacing", "spatial_shape", "source", "series")
        meta = {k: img.meta.get(k) for k in fields}
        meta["affine"] = img.affine
        d[self.meta_key] = _plain(meta)
        return d


def preprocessing_transforms(
    image_key: str = "image",
    min_slices: int = 8,
    threshold_hu: float = -400.0,
    closing_mm: float = 10.0,
    dilate_mm: float = 8.0,
    min_area_fraction: float = 0.2,
    spatial_size: tuple[int, int] = (180, 240),
    patch_size: tuple[int, int] = (60, 60),
    margin_fraction: float = 0.02,
) -> Compose:
    """``{"image": path, "case_id": str, "label": float}`` → bag dictionary (docs/design.md).

    Args mirror the transforms': ``min_slices`` (DICOM series), ``threshold_hu`` / ``closing_mm`` / ``dilate_mm`` (lung mask),
    ``min_area_fraction`` (slice selection), ``spatial_size`` (H, W), ``patch_size``, ``margin_fraction``.
    """
    return Compose(
        [
            LoadCTd(image_key, min_slices=min_slices),
            StoreCaseMetad(image_key),
            LungMaskd(image_key, mask_key="lung", full_resolution=False, threshold_hu=threshold_hu, closing_mm=closing_mm, dilate_mm=dilate_mm),
            SelectLungSlicesd([image_key, "lung"], source_key="lung", min_area_fraction=min_area_fraction),
            LungBoxCropd(image_key, source_key="lung", spatial_size=spatial_size, margin_fraction=margin_fraction),
            ToBagd(image_key, patch_size=patch_size),
        ],
        map_items=False,
    )
