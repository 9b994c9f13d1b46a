"""Writing synthetic CT volumes as DICOM series, the way a scanner would.

Only *writing* lives here (it serves the phantom generator and tests); reading and series discovery belong to
``ctmil.transforms``.

Geometry conventions (shared with :mod:`ctmil.synthetic.phantoms`):

* A volume is an array ``(N, rows, cols)``; for the default axial orientation that is ``(S, H, W)`` with
  axis 0 from feet (index 0, inferior) to head, rows from anterior (row 0) to posterior, columns from the
  patient's right (column 0) to the patient's left -- the usual radiological display of an axial slice.
* Patient coordinates are DICOM LPS (+x patient left, +y posterior, +z head). ``spacing`` is
  ``(slice, row, column)`` in mm, i.e. ``(z, y, x)`` for axial volumes.
* Voxel ``(k, r, c)`` sits at ``origin + c * dc * row_dir + r * dr * col_dir + k * dk * normal`` where
  ``row_dir, col_dir = ImageOrientationPatient`` and ``normal = row_dir x col_dir``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    UID,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

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

#: ImageOrientationPatient (row direction, column direction) for named orientations, LPS.
ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # rows anterior->posterior, columns right->left, normal +z (head)
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # rows head->feet, columns right->left, normal +y (posterior)
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # rows head->feet, columns anterior->posterior, normal -x
}

#: Accepted ``transfer_syntax`` names.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
}

#: Accepted ``instance_order`` names. ``head_first`` numbers the last array slice 1 (what helical scanners that
#: scan cranio-caudally do); ``feet_first`` numbers slice 0 as 1; ``random`` is deliberately inconsistent with
#: ImagePositionPatient.
INSTANCE_ORDERS = ("head_first", "feet_first", "random")

X_RAY_DOSE_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.67")


def as_generator(rng_or_seed: np.random.Generator | np.random.SeedSequence | int) -> np.random.Generator:
    """Return a numpy Generator from a Generator (returned as is), a SeedSequence or a non-negative int seed."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return np.random.default_rng(rng_or_seed)
    if isinstance(rng_or_seed, (int, np.integer)) and not isinstance(rng_or_seed, bool) and rng_or_seed >= 0:
        return np.random.default_rng(int(rng_or_seed))
    raise ValueError(f"expected a numpy Generator, a SeedSequence or a non-negative int seed, got {rng_or_seed!r}")


def make_uid(rng: np.random.Generator) -> UID:
    """A DICOM UID that is a deterministic function of the generator state (pydicom's hashed ``generate_uid``)."""
    return generate_uid(entropy_srcs=[rng.bytes(16).hex()])


def _orientation_vectors(orientation: str | Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_dir, col_dir, normal), each a unit 3-vector in LPS, for a named or explicit orientation."""
    if isinstance(orientation, str):
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)} or 6 numbers, got {orientation!r}")
        iop = np.asarray(ORIENTATIONS[orientation], dtype=float)
    else:
        iop = np.asarray(orientation, dtype=float)
        if iop.shape != (6,) or not np.all(np.isfinite(iop)):
            raise ValueError(f"orientation must be 6 finite numbers, got {orientation!r}")
    row_dir, col_dir = iop[:3], iop[3:]
    if not (np.isclose(np.linalg.norm(row_dir), 1) and np.isclose(np.linalg.norm(col_dir), 1)):
        raise ValueError(f"orientation vectors must be unit length, got {iop.tolist()}")
    if not np.isclose(row_dir @ col_dir, 0):
        raise ValueError(f"orientation vectors must be orthogonal, got {iop.tolist()}")
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats ``(slice, row, column)`` mm, i.e. ``(z, y, x)``, or ValueError."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive finite numbers (slice, row, column) in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def default_origin(
    shape: Sequence[int], spacing: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> tuple[float, float, float]:
    """LPS position (mm) of voxel ``(0, 0, 0)`` that centres each slice on the scanner axis.

    For axial volumes the last slice (the most superior) lies at z = 0 and the stack extends towards the feet,
    like a table position read-out. ``shape`` is ``(N, rows, cols)``, ``spacing`` ``(slice, row, column)`` mm.
    """
    n, rows, cols = (int(v) for v in shape)
    dk, dr, dc = check_spacing(spacing)
    row_dir, col_dir, normal = _orientation_vectors(orientation)
    origin = -(cols - 1) / 2 * dc * row_dir - (rows - 1) / 2 * dr * col_dir - (n - 1) * dk * normal
    return tuple(float(v) for v in origin)  # type: ignore[return-value]


def voxel_to_lps(
    spacing: Sequence[float], origin: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> np.ndarray:
    """4x4 matrix mapping voxel indices ``(k, r, c, 1)`` of an ``(N, rows, cols)`` volume to LPS mm."""
    dk, dr, dc = check_spacing(spacing)
    row_dir, col_dir, normal = _orientation_vectors(orientation)
    m = np.eye(4)
    m[:3, 0] = normal * dk
    m[:3, 1] = col_dir * dr
    m[:3, 2] = row_dir * dc
    m[:3, 3] = np.asarray(origin, dtype=float)
    return m


def affine_ras(
    spacing: Sequence[float], origin: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> np.ndarray:
    """4x4 matrix mapping voxel indices ``(k, r, c, 1)`` of an ``(N, rows, cols)`` volume to RAS mm (NIfTI world)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ voxel_to_lps(spacing, origin, orientation)


def _ds(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _stored_pixels(volume_hu: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int, int]:
    """Stored values for ``HU = stored * slope + intercept``: (array uint16/int16, PixelRepresentation, BitsStored)."""
    stored = np.rint((np.asarray(volume_hu, dtype=np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if lo >= 0:
        bits = 12 if hi < 4096 else 16
        info = np.iinfo(np.uint16)
        dtype, representation = np.uint16, 0
    else:
        bits = 12 if lo >= -2048 and hi < 2048 else 16
        info = np.iinfo(np.int16)
        dtype, representation = np.int16, 1
    if lo < info.min or hi > info.max:
        logger.warning("stored values [%g, %g] clipped to %s", lo, hi, np.dtype(dtype).name)
    return np.clip(stored, info.min, info.max).astype(dtype), representation, bits


def _instance_numbers(n: int, order: str, rng: np.random.Generator) -> np.ndarray:
    if order == "head_first":
        return np.arange(n, 0, -1)
    if order == "feet_first":
        return np.arange(1, n + 1)
    if order == "random":
        return rng.permutation(n) + 1
    raise ValueError(f"instance_order must be one of {INSTANCE_ORDERS}, got {order!r}")


def _patient_study_module(
    ds: Dataset,
    *,
    patient_id: str,
    patient_name: str | None,
    study_uid: str,
    study_date: str,
    study_time: str,
    accession: str,
) -> None:
    """Fill patient and study attributes (synthetic, never real people)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name if patient_name is not None else f"PHANTOM^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.StudyID = "1"
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT THORAX (synthetic phantom)"


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CTMIL_PHANTOM"
    return meta


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
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume_hu must be a non-empty (N, rows, cols) array, got shape {vol.shape}")
    if not np.issubdtype(vol.dtype, np.number) or not np.all(np.isfinite(vol)):
        raise ValueError("volume_hu must hold finite numbers")
    dk, dr, dc = check_spacing(spacing)
    if not (np.isfinite(rescale_slope) and rescale_slope > 0):
        raise ValueError(f"rescale_slope must be positive, got {rescale_slope}")
    if not np.isfinite(rescale_intercept):
        raise ValueError(f"rescale_intercept must be finite, got {rescale_intercept}")
    if slice_thickness is not None and not slice_thickness > 0:
        raise ValueError(f"slice_thickness must be positive, got {slice_thickness}")
    if len(image_type) < 2:
        raise ValueError(f"image_type needs at least two values, got {image_type!r}")
    rng = as_generator(rng)
    row_dir, col_dir, normal = _orientation_vectors(orientation)
    n, rows, cols = vol.shape
    if origin is None:
        origin = default_origin(vol.shape, (dk, dr, dc), orientation)
    origin_arr = np.asarray(origin, dtype=float)
    if origin_arr.shape != (3,) or not np.all(np.isfinite(origin_arr)):
        raise ValueError(f"origin must be 3 finite numbers (LPS mm), got {origin!r}")

    study_uid = study_uid or make_uid(rng)
    series_uid = series_uid or make_uid(rng)
    frame_of_reference_uid = frame_of_reference_uid or make_uid(rng)
    sop_uids = [make_uid(rng) for _ in range(n)]
    numbers = _instance_numbers(n, instance_order, rng)
    stored, representation, bits = _stored_pixels(vol, rescale_slope, rescale_intercept)
    iop = [_ds(v) for v in (*row_dir, *col_dir)]

    datasets = []
    for k in range(n):
        position = origin_arr + k * dk * normal
        ds = Dataset()
        ds.file_meta = _file_meta(CTImageStorage, sop_uids[k], ExplicitVRLittleEndian)
        _patient_study_module(
            ds,
            patient_id=patient_id,
            patient_name=patient_name,
            study_uid=study_uid,
            study_date=study_date,
            study_time=study_time,
            accession=accession,
        )
        ds.ImageType = list(image_type)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uids[k]
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
        ds.Modality = modality
        ds.Manufacturer = "ctmil"
        ds.ManufacturerModelName = "SyntheticPhantom"
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(slice_thickness if slice_thickness is not None else dk)
        ds.SpacingBetweenSlices = _ds(dk)
        ds.KVP = "120"
        ds.ConvolutionKernel = "B70f"
        ds.PatientPosition = "HFS"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(position @ normal)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = representation
        ds.RescaleIntercept = _ds(rescale_intercept)
        ds.RescaleSlope = _ds(rescale_slope)
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        datasets.append(ds)
    return datasets


def save_dataset(ds: Dataset, path: str | os.PathLike, transfer_syntax: str = "explicit") -> Path:
    """Write ``ds`` as a DICOM Part-10 file atomically (temporary name, then rename).

    ``transfer_syntax`` is ``"explicit"`` / ``"implicit"`` (little endian) or ``"rle"`` (RLE Lossless, only for
    datasets with pixel data). The dataset is modified in place (file meta, compressed pixel data).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    if not hasattr(ds, "file_meta") or "MediaStorageSOPInstanceUID" not in ds.file_meta:
        raise ValueError("dataset needs file_meta with a MediaStorageSOPInstanceUID")
    path = Path(path)
    if transfer_syntax == "rle":
        if "PixelData" not in ds:
            raise ValueError("RLE Lossless needs pixel data")
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES[transfer_syntax]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    n = len(datasets)
    numbers = rng.permutation(n) + 1 if shuffle_file_names else np.arange(1, n + 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_dataset(ds, out / f"IM{int(num):06d}", transfer_syntax) for ds, num in zip(datasets, numbers)]
    logger.debug("wrote %d slices to %s", n, out)
    return paths


def dose_report_dataset(
    *,
    rng: np.random.Generator | int,
    patient_id: str,
    patient_name: str | None,
    study_uid: str,
    study_date: str = "20200415",
    ctdi_vol: float = 8.5,
) -> Dataset:
    """A minimal X-Ray Radiation Dose SR object (Modality SR, no pixel data) belonging to ``study_uid``."""
    rng = as_generator(rng)
    ds = Dataset()
    sop = make_uid(rng)
    ds.file_meta = _file_meta(X_RAY_DOSE_SR_STORAGE, sop, ExplicitVRLittleEndian)
    _patient_study_module(
        ds,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        study_date=study_date,
        study_time="101500",
        accession="",
    )
    ds.SOPClassUID = X_RAY_DOSE_SR_STORAGE
    ds.SOPInstanceUID = sop
    ds.Modality = "SR"
    ds.Manufacturer = "ctmil"
    ds.SeriesInstanceUID = make_uid(rng)
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    ds.InstanceNumber = 1
    ds.ContentDate = study_date
    ds.ContentTime = "102000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    title = Dataset()
    title.CodeValue = "113701"
    title.CodingSchemeDesignator = "DCM"
    title.CodeMeaning = "X-Ray Radiation Dose Report"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue = "113830"
    name.CodingSchemeDesignator = "DCM"
    name.CodeMeaning = "Mean CTDIvol"
    item.ConceptNameCodeSequence = DicomSequence([name])
    item.TextValue = f"{ctdi_vol:.1f} mGy (synthetic)"
    ds.ContentSequence = DicomSequence([item])
    return ds


def dicomdir_dataset(*, rng: np.random.Generator | int) -> Dataset:
    """A minimal, empty DICOMDIR (Media Storage Directory Storage, no directory records, no pixel data)."""
    rng = as_generator(rng)
    ds = Dataset()
    ds.file_meta = _file_meta("1.2.840.10008.1.3.10", make_uid(rng), ExplicitVRLittleEndian)
    ds.FileSetID = "CTMIL"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    return ds
