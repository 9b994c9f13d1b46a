"""Writing synthetic CT volumes as DICOM series, the way a scanner would.

Only *writing* lives here (it serves the phantom generator and tests); reading and series discovery belong to
``ctmil.io``. Geometry conventions are those of :mod:`ctmil.synthetic.geometry`: a volume ``(N, rows, cols)``,
for axial volumes ``(S, H, W)`` from feet to head, anterior to posterior, patient right to left; LPS patient
coordinates; ``spacing`` ``(slice, row, column)`` mm. The attribute modules are in
:mod:`ctmil.synthetic.dicom_modules`, the dose report and DICOMDIR in :mod:`ctmil.synthetic.dicom_nonimage`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from ctmil.io.atomic import atomic_path
from ctmil.synthetic.dicom_modules import (
    INSTANCE_ORDERS,
    CTSeries,
    PatientStudy,
    ct_slice_dataset,
    instance_numbers,
    make_uid,
    stored_pixels,
)
from ctmil.synthetic.dicom_nonimage import X_RAY_DOSE_SR_STORAGE, dicomdir_dataset, dose_report_dataset  # noqa: F401
from ctmil.synthetic.geometry import (
    ORIENTATIONS,
    affine_ras,
    check_spacing,
    default_origin,
    orientation_vectors,
    voxel_to_lps,
)
from ctmil.synthetic.seeding import as_generator

__all__ = [
    "ORIENTATIONS",
    "TRANSFER_SYNTAXES",
    "INSTANCE_ORDERS",
    "as_generator",
    "make_uid",
    "default_origin",
    "voxel_to_lps",
    "affine_ras",
    "ct_series_datasets",
    "save_dataset",
    "write_dicom_series",
    "dose_report_dataset",
    "dicomdir_dataset",
]

logger = logging.getLogger(__name__)

#: Accepted ``transfer_syntax`` names.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
}

def check_transfer_syntax(name: str) -> str:
    """``name`` if it is one of :data:`TRANSFER_SYNTAXES`, else ValueError."""
    if name not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {name!r}")
    return name


def _check_volume(volume_hu: np.ndarray) -> np.ndarray:
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume_hu must be a non-empty (N, rows, cols) array, got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.number) or not np.all(np.isfinite(vol)):
        raise ValueError("volume_hu must hold finite numbers")
    return vol


def _check_options(
    rescale_slope: float, rescale_intercept: float, slice_thickness: float | None, image_type: Sequence[str]
) -> None:
    if not (np.isfinite(rescale_slope) and rescale_slope > 0):
        raise ValueError(f"rescale_slope must be positive, got {rescale_slope}")
    if not np.isfinite(rescale_intercept):
        raise ValueError(f"rescale_intercept must be finite, got {rescale_intercept}")
    if slice_thickness is not None and not slice_thickness > 0:
        raise ValueError(f"slice_thickness must be positive, got {slice_thickness}")
    if len(image_type) < 2:
        raise ValueError(f"image_type needs at least two values, got {image_type!r}")


def _check_origin(origin: Sequence[float]) -> np.ndarray:
    origin_arr = np.asarray(origin, dtype=float)
    if origin_arr.shape != (3,) or not np.all(np.isfinite(origin_arr)):
        raise ValueError(f"origin must be 3 finite numbers (LPS mm), got {origin!r}")
    return origin_arr


def ct_series_datasets(
    volume_hu: np.ndarray,
    spacing: Sequence[float],
    *,
    rng: np.random.Generator | int = 0,
    patient_id: str = "PHANTOM0000",
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "THORAX 5.0 B70f LUNG",
    series_number: int = 2,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: str | Sequence[float] = "axial",
    origin: Sequence[float] | None = None,
    slice_thickness: float | None = None,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    instance_order: str = "head_first",
    study_date: str = "20200415",
    study_time: str = "101500",
    accession: str = "",
) -> list[Dataset]:
    """Build one DICOM dataset per slice of ``volume_hu`` (no files are written).

    Args:
        volume_hu: ``(N, rows, cols)`` Hounsfield units (any real dtype); for axial volumes ``(S, H, W)``
            with axis 0 feet -> head (see module docstring).
        spacing: ``(slice, row, column)`` spacing in mm.
        rng: generator (or seed) for UIDs not given and the ``random`` instance order.
        orientation: ``"axial"``, ``"coronal"``, ``"sagittal"`` or 6 ImageOrientationPatient numbers.
        origin: LPS mm position of voxel ``(0, 0, 0)``; default :func:`default_origin`.
        rescale_intercept, rescale_slope: stored = round((HU - intercept) / slope); pixels are stored as uint16
            (PixelRepresentation 0) when every stored value is non-negative, int16 otherwise.
        instance_order: one of :data:`INSTANCE_ORDERS`.

    Returns:
        ``N`` datasets in array order (element ``k`` holds ``volume_hu[k]``), each with its ``file_meta``
        (explicit VR little endian; :func:`save_dataset` may change it).
    """
    vol = _check_volume(volume_hu)
    dk, dr, dc = check_spacing(spacing)
    _check_options(rescale_slope, rescale_intercept, slice_thickness, image_type)
    rng = as_generator(rng)
    vectors = orientation_vectors(orientation)
    origin_arr = _check_origin(default_origin(vol.shape, (dk, dr, dc), orientation) if origin is None else origin)
    # the order of draws from rng (study, series, frame, SOP UIDs, instance numbers) is part of the output
    study_uid = study_uid or make_uid(rng)
    series_uid = series_uid or make_uid(rng)
    frame_of_reference_uid = frame_of_reference_uid or make_uid(rng)
    sop_uids = [make_uid(rng) for _ in range(vol.shape[0])]
    numbers = instance_numbers(vol.shape[0], instance_order, rng)
    series = CTSeries(
        study=PatientStudy(patient_id, patient_name, study_uid, study_date, study_time, accession),
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_description=series_description,
        series_number=series_number,
        modality=modality,
        image_type=tuple(image_type),
        slice_thickness=slice_thickness if slice_thickness is not None else dk,
        spacing=(dk, dr, dc),
        orientation=vectors,
        origin=origin_arr,
    )
    pixels = stored_pixels(vol, rescale_slope, rescale_intercept)
    return [ct_slice_dataset(series, pixels, k, sop_uids[k], numbers[k]) for k in range(vol.shape[0])]


def save_dataset(ds: Dataset, path: str | os.PathLike, transfer_syntax: str = "explicit") -> Path:
    """Write ``ds`` as a DICOM Part-10 file atomically (temporary name, then rename).

    ``transfer_syntax`` is ``"explicit"`` / ``"implicit"`` (little endian) or ``"rle"`` (RLE Lossless, only for
    datasets with pixel data). The dataset is modified in place (file meta, compressed pixel data).
    """
    check_transfer_syntax(transfer_syntax)
    if not hasattr(ds, "file_meta") or "MediaStorageSOPInstanceUID" not in ds.file_meta:
        raise ValueError("dataset needs file_meta with a MediaStorageSOPInstanceUID")
    path = Path(path)
    if transfer_syntax == "rle":
        if "PixelData" not in ds:
            raise ValueError("RLE Lossless needs pixel data")
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[transfer_syntax]
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def write_dicom_series(
    volume_hu: np.ndarray,
    spacing: Sequence[float],
    out_dir: str | os.PathLike,
    *,
    rng: np.random.Generator | int = 0,
    patient_id: str = "PHANTOM0000",
    patient_name: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "THORAX 5.0 B70f LUNG",
    series_number: int = 2,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: str | Sequence[float] = "axial",
    origin: Sequence[float] | None = None,
    slice_thickness: float | None = None,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    instance_order: str = "head_first",
    shuffle_file_names: bool = True,
    transfer_syntax: str = "explicit",
    study_date: str = "20200415",
) -> list[Path]:
    """Write ``volume_hu`` ``(N, rows, cols)`` as a CT Image Storage series, one file per slice, into ``out_dir``.

    Files are named ``IM000001``... (no extension). With ``shuffle_file_names`` the numbers are a random
    permutation, so name order differs from anatomical order (as in many exports); otherwise name ``k + 1`` holds
    slice ``k``. ``out_dir`` is created; it should contain only this series if it is to be read as a folder by
    MONAI's ``PydicomReader`` (which reads every file of the folder and stacks them by InstanceNumber -- use the
    default ``instance_order`` for that). Other arguments: see :func:`ct_series_datasets` and
    :func:`save_dataset`.

    Returns:
        the ``N`` file paths in array order (path ``k`` holds ``volume_hu[k]``).
    """
    rng = as_generator(rng)
    datasets = ct_series_datasets(
        volume_hu,
        spacing,
        rng=rng,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        series_description=series_description,
        series_number=series_number,
        modality=modality,
        image_type=image_type,
        orientation=orientation,
        origin=origin,
        slice_thickness=slice_thickness,
        rescale_intercept=rescale_intercept,
        rescale_slope=rescale_slope,
        instance_order=instance_order,
        study_date=study_date,
    )
    check_transfer_syntax(transfer_syntax)
    n = len(datasets)
    numbers = rng.permutation(n) + 1 if shuffle_file_names else np.arange(1, n + 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_dataset(ds, out / f"IM{int(num):06d}", transfer_syntax) for ds, num in zip(datasets, numbers)]
    logger.debug("wrote %d slices to %s", n, out)
    return paths
