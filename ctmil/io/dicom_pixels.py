"""Pixels of DICOM slices into a Hounsfield-unit volume: raw 16-bit reads straight into the array, pydicom's
decoders for everything else, with the image size checked before any decoder allocates.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom

from ctmil.io.dicom_header import SliceHeader
from ctmil.io.dicom_validate import image_problem
from ctmil.io.dicom_walker import DicomReadError, FileSource, inflate

DEFLATED = "1.2.840.10008.1.2.1.99"


class DicomError(ValueError):
    """A data problem with a DICOM series, reported as a one-line reason (never a traceback)."""


#: never swallowed; everything else a decoder raises is a damaged slice (Rust decoders raise pyo3's
#: ``PanicException``, a ``BaseException``, on corrupt RLE streams)
NOT_DATA_ERRORS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _decode(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values of one fully read slice as an integer/float array ``(H, W)``."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed and int(ds.get("BitsAllocated", 16)) == 16:
        dtype = np.int16 if int(ds.get("PixelRepresentation", 0)) == 1 else np.uint16
        order = "<" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">"
        arr = np.frombuffer(ds.PixelData, dtype=np.dtype(dtype).newbyteorder(order))
        n = int(ds.Rows) * int(ds.Columns)
        if arr.size < n:
            raise DicomError("truncated pixel data")
        return arr[:n].reshape(int(ds.Rows), int(ds.Columns))
    return ds.pixel_array


def syntax_name(uid: str) -> str:
    try:
        return pydicom.uid.UID(uid).name if uid else ""
    except Exception:  # noqa: BLE001 - a damaged UID string is shown as it is
        return uid[:64]


def rescale_of(ds: SliceHeader) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def int16_shift_fits(stored: np.ndarray, signed: bool, intercept: int) -> bool:
    """Whether stored + intercept stays in int16 for raw 16-bit values ``stored`` (int16 bits)."""
    if not -32768 <= intercept <= 32767:
        return False
    if signed:
        return (intercept <= 0 or int(stored.max()) + intercept <= 32767) and (intercept >= 0 or int(stored.min()) + intercept >= -32768)
    return int(stored.view(np.uint16).max()) + intercept <= 32767  # unsigned values are >= 0


def common_shift(rescale: list[tuple[float, float]]) -> int | None:
    """The intercept when every slope is 1 and every intercept is the same whole number (HU = stored + it), else
    ``None``."""
    if rescale and all(slope == 1.0 and intercept == int(intercept) for slope, intercept in rescale):
        shifts = {int(i) for _, i in rescale}
        if len(shifts) == 1:
            return shifts.pop()
    return None


def raw_to_hu(stored: np.ndarray, signed: bool, rescale: list[tuple[float, float]]) -> np.ndarray:
    """Raw 16-bit slices ``(S, H, W)`` (int16 bits, signed or not) → HU, in place as int16 when the slopes
    are 1 and the intercepts whole numbers that keep the values in int16, float32 otherwise."""
    if all(slope == 1.0 and intercept == int(intercept) for slope, intercept in rescale):
        intercepts = [int(i) for _, i in rescale]
        if len(set(intercepts)) == 1:
            if int16_shift_fits(stored, signed, intercepts[0]):
                stored += np.int16(intercepts[0])  # wraps exactly: the true result is in int16 range
                return stored
        elif all(int16_shift_fits(stored[i], signed, c) for i, c in enumerate(intercepts)):
            for i, c in enumerate(intercepts):
                stored[i] += np.int16(c)
            return stored
    values = stored if signed else stored.view(np.uint16)
    slopes = np.asarray([s for s, _ in rescale], np.float32)[:, None, None]
    intercepts = np.asarray([i for _, i in rescale], np.float32)[:, None, None]
    return values * slopes + intercepts


def stored_to_hu(slices: list[np.ndarray], rescale: list[tuple[float, float]]) -> np.ndarray:
    """Stored values → HU ``(S, H, W)``: int16 in one pass when every slope is 1 and intercepts are whole
    numbers that keep the values in int16 (the usual CT case), float32 otherwise."""
    volume = np.empty((len(slices), *slices[0].shape), dtype=np.int16)
    if all(slope == 1.0 and intercept == int(intercept) for slope, intercept in rescale):
        for i, (stored, (_, intercept)) in enumerate(zip(slices, rescale)):
            lo, hi = int(stored.min()) + int(intercept), int(stored.max()) + int(intercept)
            if lo < -32768 or hi > 32767:
                break
            np.add(stored, np.int32(intercept), out=volume[i], casting="unsafe")
        else:
            return volume
    volume = np.empty((len(slices), *slices[0].shape), dtype=np.float32)
    for i, (stored, (slope, intercept)) in enumerate(zip(slices, rescale)):
        np.multiply(stored, slope, out=volume[i], casting="unsafe")
        volume[i] += intercept
    return volume


def read_raw(item: SliceHeader, out: np.ndarray) -> None:
    """Read the raw pixels of ``item`` straight into the C-contiguous int16 array ``out``."""
    with open(item.path, "rb", buffering=0) as fp:
        fp.seek(item.pixel_offset)
        n = fp.readinto(memoryview(out).cast("B"))
    if n != out.nbytes:
        raise DicomError("truncated pixel data")


def _check_before_decoding(item: SliceHeader, shape: tuple[int, int]) -> None:
    """Refuse files whose decoding could allocate far more than their image (huge sizes, deflate bombs)."""
    if problem := image_problem(item):
        raise DicomError(problem)
    if item.dataset is not None:
        return
    image_bytes = shape[0] * shape[1] * 8  # up to 64-bit samples
    limit = 2 * image_bytes + (16 << 20)
    if os.path.getsize(item.path) > limit:
        raise DicomError(f"file of {os.path.getsize(item.path) >> 20} MiB far larger than its {shape[0]}×{shape[1]} image")
    if item.transfer_syntax == DEFLATED and item.data_start is not None:
        with open(item.path, "rb") as fp:
            try:
                inflated = inflate(FileSource(fp.fileno()), item.data_start, limit=limit).size
            except DicomReadError as err:
                raise DicomError(str(err)) from None
        if inflated >= limit:
            raise DicomError("deflated data far larger than its image")


def slice_pixels(item: SliceHeader, shape: tuple[int, int]) -> np.ndarray:
    """Stored values ``(H, W)`` of one slice by pydicom (compressed, 8/32-bit or unusually laid out files).

    Raises:
        DicomError: a one-line reason (no file name: the caller names the file).
    """
    _check_before_decoding(item, shape)
    try:
        ds = item.dataset if item.dataset is not None and "PixelData" in item.dataset else pydicom.dcmread(item.path)
    except BaseException as err:  # noqa: BLE001 - pydicom raises many types on damaged files
        if isinstance(err, NOT_DATA_ERRORS):
            raise
        raise DicomError(f"unreadable file ({type(err).__name__}: {' '.join(str(err).split())[:100]})") from None
    try:
        arr = _decode(ds)
    except DicomError:
        raise
    except BaseException as err:  # pixel handlers raise many types (missing codec, corrupt stream, Rust panics)
        if isinstance(err, NOT_DATA_ERRORS):
            raise
        text = " ".join(str(err).split())[:120]
        raise DicomError(f"cannot decode pixel data ({syntax_name(item.transfer_syntax) or 'unknown syntax'}): {text}") from None
    if arr.shape != shape:
        raise DicomError(f"decoded image of shape {arr.shape}, header says {shape}")
    return arr
