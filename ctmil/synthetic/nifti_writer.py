"""Writing phantom volumes as NIfTI-1, in the canonical RAS layout or as the ``(S, H, W)`` array."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ctmil.io.atomic import atomic_path
from ctmil.synthetic.geometry import affine_ras, check_spacing, default_origin

__all__ = ["write_nifti"]


def _ras_array(vol: np.ndarray, aff_shw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canonical array ``A[i, j, k] = vol[k, H-1-j, W-1-i]`` and its affine, from the ``(s, r, c)`` affine."""
    data = np.ascontiguousarray(vol.transpose(2, 1, 0)[::-1, ::-1, :])
    _, n_h, n_w = vol.shape
    # (i, j, k) = (W-1-c, H-1-r, s)  ->  RAS
    index_map = np.array(
        [[0, 0, 1, 0], [0, -1, 0, n_h - 1], [-1, 0, 0, n_w - 1], [0, 0, 0, 1]], dtype=float
    )  # (i, j, k, 1) -> (s, r, c, 1)
    return data, aff_shw @ index_map


def _nifti_bytes(data: np.ndarray, affine: np.ndarray, zooms: tuple[float, ...], gz: bool) -> bytes:
    """NIfTI-1 bytes with qform = sform = ``affine`` (code 1), mm units; gzip with mtime 0 when ``gz``."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def write_nifti(
    volume: np.ndarray,
    spacing: Sequence[float],
    path: str | os.PathLike,
    *,
    origin: Sequence[float] | None = None,
    layout: str = "ras",
) -> Path:
    """Write an ``(S, H, W)`` volume (phantom convention) as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    ``layout="ras"`` (default) stores the canonical array ``A[i, j, k] = volume[k, H-1-j, W-1-i]`` with a
    positive diagonal affine: ``i`` patient right-wards, ``j`` anterior-wards, ``k`` head-wards, so nibabel,
    ``nib.as_closest_canonical`` and MONAI ``LoadImage`` + ``Orientation("RAS")`` all return ``A`` unchanged.
    ``layout="shw"`` stores ``volume`` as is with the permuted affine ``info["affine_ras"]``; readers must then
    reorient. Either way ``LoadImage`` + ``Orientation("LPS")`` + ``permute(2, 1, 0)`` gives back ``volume``.
    The integer dtype is kept (int16 HU, slope 1, intercept 0); ``.nii.gz`` bytes are deterministic (mtime 0).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (S, H, W), got shape {vol.shape}")
    dz, dy, dx = check_spacing(spacing)
    if layout not in ("ras", "shw"):
        raise ValueError(f"layout must be 'ras' or 'shw', got {layout!r}")
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"path must end with .nii or .nii.gz, got {path.name}")
    if origin is None:
        origin = default_origin(vol.shape, (dz, dy, dx))
    aff_shw = affine_ras((dz, dy, dx), origin)  # (s, r, c) -> RAS
    if layout == "ras":
        (data, affine), zooms = _ras_array(vol, aff_shw), (dx, dy, dz)
    else:
        data, affine, zooms = np.ascontiguousarray(vol), aff_shw, (dz, dy, dx)
    payload = _nifti_bytes(data, affine, zooms, gz=path.name.endswith(".gz"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path
