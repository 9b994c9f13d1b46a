"""DICOM attribute modules of the synthetic writers: file meta, patient/study, CT series and one CT slice.

Each ``*_module`` function fills one group of attributes of a :class:`pydicom.dataset.Dataset` in place; the
writers in :mod:`ctmil.synthetic.dicom_writer` and :mod:`ctmil.synthetic.dicom_nonimage` compose them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "INSTANCE_ORDERS",
    "PatientStudy",
    "CTSeries",
    "StoredPixels",
    "make_uid",
    "ds_string",
    "instance_numbers",
    "stored_pixels",
    "file_meta",
    "patient_study_module",
    "ct_slice_dataset",
]

logger = logging.getLogger(__name__)

#: Accepted ``instance_order`` names. ``head_first`` numbers the last array slice 1 (what helical scanners that
#: scan cranio-caudally do); ``feet_first`` numbers slice 0 as 1; ``random`` is deliberately inconsistent with
#: ImagePositionPatient.
INSTANCE_ORDERS = ("head_first", "feet_first", "random")


def make_uid(rng: np.random.Generator) -> UID:
    """A DICOM UID that is a deterministic function of the generator state (pydicom's hashed ``generate_uid``)."""
    return generate_uid(entropy_srcs=[rng.bytes(16).hex()])


def ds_string(value: float) -> str:
    """A DICOM DS string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def instance_numbers(n: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """InstanceNumber ``(n,)`` of each array slice for one of :data:`INSTANCE_ORDERS` (``random`` draws from rng)."""
    if order == "head_first":
        return np.arange(n, 0, -1)
    if order == "feet_first":
        return np.arange(1, n + 1)
    if order == "random":
        return rng.permutation(n) + 1
    raise ValueError(f"instance_order must be one of {INSTANCE_ORDERS}, got {order!r}")


@dataclass(frozen=True)
class StoredPixels:
    """Stored values ``(N, rows, cols)`` for ``HU = stored * slope + intercept`` and how they are encoded."""

    array: np.ndarray
    representation: int  # PixelRepresentation: 0 uint16, 1 int16
    bits: int  # BitsStored
    intercept: float
    slope: float


def stored_pixels(volume_hu: np.ndarray, slope: float, intercept: float) -> StoredPixels:
    """Round ``(HU - intercept) / slope`` into uint16 when every value is non-negative, int16 otherwise."""
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
    array = np.clip(stored, info.min, info.max).astype(dtype)
    return StoredPixels(array, representation, bits, intercept, slope)


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: UID) -> FileMetaDataset:
    """Part-10 file meta information of one object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "CTMIL_PHANTOM"
    return meta


@dataclass(frozen=True)
class PatientStudy:
    """Patient and study attributes shared by every object of a (synthetic, never real) study."""

    patient_id: str
    patient_name: str | None  # None: PHANTOM^<patient_id>
    study_uid: str
    study_date: str
    study_time: str
    accession: str


def patient_study_module(ds: Dataset, study: PatientStudy) -> None:
    """Fill patient and study attributes."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study.patient_name if study.patient_name is not None else f"PHANTOM^{study.patient_id}"
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT THORAX (synthetic phantom)"


@dataclass(frozen=True)
class CTSeries:
    """What the slices of one CT series share: study, series identity, acquisition and the slice grid."""

    study: PatientStudy
    series_uid: str
    frame_of_reference_uid: str
    series_description: str
    series_number: int
    modality: str
    image_type: tuple[str, ...]
    slice_thickness: float
    spacing: tuple[float, float, float]  # (slice, row, column) mm
    orientation: tuple[np.ndarray, np.ndarray, np.ndarray]  # row_dir, col_dir, normal (LPS)
    origin: np.ndarray  # (3,) LPS mm of voxel (0, 0, 0)


def _ct_series_module(ds: Dataset, series: CTSeries) -> None:
    """General series, equipment and acquisition attributes of a CT image."""
    date, time = series.study.study_date, series.study.study_time
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = time
    ds.Modality = series.modality
    ds.Manufacturer = "ctmil"
    ds.ManufacturerModelName = "SyntheticPhantom"
    ds.SeriesDescription = series.series_description
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = ds_string(series.slice_thickness)
    ds.SpacingBetweenSlices = ds_string(series.spacing[0])
    ds.KVP = "120"
    ds.ConvolutionKernel = "B70f"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = int(series.series_number)
    ds.AcquisitionNumber = 1


def _image_plane_module(ds: Dataset, series: CTSeries, k: int) -> None:
    """Position and orientation of array slice ``k``, and the frame of reference."""
    row_dir, col_dir, normal = series.orientation
    position = series.origin + k * series.spacing[0] * normal
    ds.ImagePositionPatient = [ds_string(v) for v in position]
    ds.ImageOrientationPatient = [ds_string(v) for v in (*row_dir, *col_dir)]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = ds_string(position @ normal)


def _image_pixel_module(ds: Dataset, pixels: StoredPixels, k: int) -> None:
    """Pixel description, rescale, display window and pixel data of array slice ``k``."""
    _, rows, cols = pixels.array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = pixels.bits
    ds.HighBit = pixels.bits - 1
    ds.PixelRepresentation = pixels.representation
    ds.RescaleIntercept = ds_string(pixels.intercept)
    ds.RescaleSlope = ds_string(pixels.slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    stored = pixels.array
    ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()


def ct_slice_dataset(series: CTSeries, pixels: StoredPixels, k: int, sop_uid: str, instance_number: int) -> Dataset:
    """The CT Image Storage dataset of array slice ``k`` (explicit VR little endian file meta)."""
    ds = Dataset()
    ds.file_meta = file_meta(CTImageStorage, sop_uid, ExplicitVRLittleEndian)
    patient_study_module(ds, series.study)
    _ct_series_module(ds, series)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = int(instance_number)
    _image_plane_module(ds, series, k)
    ds.PixelSpacing = [ds_string(series.spacing[1]), ds_string(series.spacing[2])]
    _image_pixel_module(ds, pixels, k)
    return ds
