"""Geometries and readers shared by the phantom-generator tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom

SMALL = dict(shape=(16, 48, 48), spacing=(15.0, 7.2, 7.2))  # same field of view as the default, coarse
TINY = dict(shape=(12, 32, 32), spacing=(20.0, 10.8, 10.8))


def load_monai(path: Path, **kwargs) -> np.ndarray:
    """MONAI LoadImage + Orientation("LPS"), permuted to the phantom's (S, H, W) layout."""
    from monai.transforms import LoadImage, Orientation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = LoadImage(ensure_channel_first=True, **kwargs)(str(path))
        img = Orientation(axcodes="LPS")(img)
    return img[0].numpy().transpose(2, 1, 0)


def read_series_hu(paths) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """Read files with pydicom, sort by position along the slice normal, return HU (N, rows, cols) and datasets."""
    dss = [pydicom.dcmread(p) for p in paths]
    normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float), dss[0].ImageOrientationPatient[3:])
    dss.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), normal)))
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return hu, dss


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
