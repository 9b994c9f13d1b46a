"""Loading a CT case (DICOM series, NIfTI volume or a folder of slice images) as a channel-first slice stack.

Every loader returns a :class:`monai.data.MetaTensor` of shape ``(1, S, H, W)`` — one channel, ``S`` axial
slices, image rows, image columns — with ``affine`` mapping ``(s, r, c, 1)`` to RAS mm, and metadata:
``input_kind`` (``dicom`` | ``nifti`` | ``slices``), ``intensity`` (``hu`` or ``windowed`` in [0, 1]),
``spacing`` ``(dz, dy, dx)`` in mm (``None`` for slice images), ``spatial_shape`` and ``source``.
No patient name or ID is ever copied into the metadata.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage, Orientation

from ctmil.io.dicom_series import MIN_SLICES, DicomError, choose_ct_series, load_dicom_series, scan_dicom_tree
from ctmil.io.grouping import case_studies, nothing_usable

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class CaseError(ValueError):
    """A data problem with one case; its message is the one-line reason written to the manifest."""


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def detect_input_kind(path: str | os.PathLike) -> str:
    """``nifti`` for a .nii/.nii.gz file, ``slices`` for a folder of 2D images, ``dicom`` otherwise."""
    p = Path(path)
    if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
        if files and all(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
            return "slices"
    return "dicom"


def load_slice_folder(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a folder of 2D slice images (already windowed) as float32 ``(S, H, W)`` in [0, 1].

    Slices are ordered by natural sort of the file names (``slice_2`` before ``slice_10``): for such
    folders the name is the only ordering there is. Colour images are converted to grey.
    """
    from PIL import Image, UnidentifiedImageError

    files = sorted((f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: _natural_key(f.name))
    if not files:
        raise CaseError(f"no slice images in {Path(folder).name}")
    slices = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("I;16") if im.mode in ("I;16", "I") else im.convert("L"), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as err:
            raise CaseError(f"unreadable image {f.name}: {err}") from None
        except Exception as err:  # noqa: BLE001 - PIL's DecompressionBombError and decoder errors: this case fails
            raise CaseError(f"unreadable image {f.name} ({type(err).__name__}: {' '.join(str(err).split())[:100]})") from None
        slices.append(arr / (65535.0 if arr.max() > 255 else 255.0))
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise CaseError(f"slice images differ in size: {sorted(shapes)}")
    return np.stack(slices), np.eye(4)


_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def load_nifti(path: str | os.PathLike, reader: LoadImage | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI CT (HU) into the slice-stack layout ``(S, H, W)`` with MONAI's reader.

    The volume is reoriented to RAS and laid out as DICOM displays axial slices: slices inferior → superior,
    rows anterior → posterior, columns patient right → left.
    """
    try:
        reader = reader or LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32)
        img = reader(str(path))
    except Exception as err:  # nibabel raises many types for corrupt files
        raise CaseError(f"unreadable NIfTI: {err}".splitlines()[0]) from None
    if img.ndim != 4 or img.shape[0] != 1:
        raise CaseError(f"unsupported NIfTI shape {tuple(img.shape[1:])}: expected one 3D volume")
    img = Orientation(axcodes="RAS", labels=_RAS_LABELS)(img)
    nx, ny, nz = img.shape[1:]
    data = img.array[0][::-1, ::-1, :].transpose(2, 1, 0)  # (x, y, z) RAS → (s, r, c)
    index_map = np.array([[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    affine = np.asarray(img.affine, float) @ index_map
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    return np.ascontiguousarray(data, dtype=np.float32), affine, spacing


def load_dicom_case(source: str | os.PathLike | list[str], min_slices: int = MIN_SLICES) -> tuple[np.ndarray, np.ndarray, dict]:
    """Discover and load the axial CT series of a DICOM folder (one study) or an explicit file list.

    ``meta["warnings"]`` lists what the manifest should say (inferred grouping, dropped slices, gaps).
    """
    if isinstance(source, (list, tuple)):
        files = [f if hasattr(f, "path") else str(f) for f in source]  # paths, or headers scanned by discovery
        series_info = {"series_uid": "", "reason": "file list given", "warnings": []}
    else:
        studies, skipped = scan_dicom_tree(source, keep_headers=True)  # one parse per file
        studies = case_studies(studies)
        if not studies:
            raise CaseError(nothing_usable(skipped) if skipped else "no DICOM images found")
        if len(studies) > 1:
            raise CaseError(f"{len(studies)} studies in one case folder: give one study per case (or run discovery on the export root)")
        chosen, reason = choose_ct_series(next(iter(studies.values())), min_slices=min_slices)
        if chosen is None:
            raise CaseError(reason)
        files = chosen.slices
        series_info = {"series_uid": chosen.series_uid, "series_number": chosen.number, "reason": reason, "warnings": chosen.warnings}
    try:
        volume, affine, meta = load_dicom_series(files)
    except DicomError as err:
        raise CaseError(str(err)) from None
    warnings = list(dict.fromkeys(series_info.pop("warnings") + meta["warnings"]))  # in order, without repeats
    meta.update(series_info, warnings=warnings)
    return volume, affine, meta
