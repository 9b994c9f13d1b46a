"""The load transform of the preprocessing chain: one CT case (DICOM series, NIfTI, slice images) as a MetaTensor.

Reading itself lives in :mod:`ctmil.io` (headers, series choice, NIfTI, slice images); this module only turns
what :mod:`ctmil.io.readers` returns into a ``(1, S, H, W)`` MetaTensor with ctmil's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from ctmil.io.dicom_series import MIN_SLICES
from ctmil.io.readers import CaseError, detect_input_kind, load_dicom_case, load_nifti, load_slice_folder

__all__ = ["LOADCT_SLICE_AXIS", "LoadCT", "LoadCTd", "LoadCTD", "LoadCTDict"]

#: The slice axis of LoadCT's ``(1, S, H, W)`` stacks: the ``slice_axis`` the other transforms need behind it.
LOADCT_SLICE_AXIS = 1


class LoadCT(Transform):
    """Load one CT case as a ``(1, S, H, W)`` MetaTensor (see the module docstring for the layout).

    Slice-first, unlike MONAI's spatial-last ``(C, H, W, D)``: the transforms after it take
    ``slice_axis=LOADCT_SLICE_AXIS`` (1), as :func:`~ctmil.transforms.preprocessing_transforms` passes them.

    Args:
        min_slices: fewest slices a DICOM series needs to be considered.
    """

    backend = [MetaTensor.__name__]

    def __init__(self, min_slices: int = MIN_SLICES) -> None:
        if min_slices < 1:
            raise ValueError(f"min_slices must be >= 1, got {min_slices}")
        self.min_slices = min_slices
        self.nifti_reader = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, source: str | os.PathLike | list[str]) -> MetaTensor:
        if not isinstance(source, (list, tuple)) and not Path(source).exists():
            raise CaseError(f"input not found: {source}")
        kind = "dicom" if isinstance(source, (list, tuple)) else detect_input_kind(source)
        extra: dict = {}
        if kind == "nifti":
            volume, affine, spacing = load_nifti(source, self.nifti_reader)
            intensity = "hu"
        elif kind == "slices":
            volume, affine = load_slice_folder(source)
            spacing, intensity = None, "windowed"
        else:
            volume, affine, extra = load_dicom_case(source, self.min_slices)
            spacing, intensity = extra.pop("spacing"), "hu"
        if volume.shape[0] < 1 or min(volume.shape[1:]) < 16:
            raise CaseError(f"volume too small: {volume.shape}")
        meta = {
            "input_kind": kind,
            "intensity": intensity,
            "spacing": spacing,
            "spatial_shape": tuple(int(v) for v in volume.shape),
            "source": str(getattr(source[0], "path", source[0]) if isinstance(source, (list, tuple)) else source),
            "series": extra,
        }
        return MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


class LoadCTd(MapTransform):
    """Dictionary wrapper of :class:`LoadCT`: replaces ``d[key]`` (a path or file list) by the loaded stack."""

    backend = LoadCT.backend

    def __init__(self, keys: KeysCollection = "image", min_slices: int = MIN_SLICES, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCT(min_slices=min_slices)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


LoadCTD = LoadCTDict = LoadCTd
