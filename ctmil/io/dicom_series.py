"""DICOM discovery and series loading for hospital export trees.

A hospital export mixes studies, series, localizers, dose reports, DICOMDIR files and non-DICOM junk.
:func:`scan_dicom_tree` reads headers only, :func:`choose_ct_series` picks per study the axial CT image
series and says why, and :func:`load_dicom_series` decodes it into a Hounsfield-unit slice stack ordered
by position along the slice normal (never by file name or InstanceNumber).

The slice stack is ``(S, H, W)``: axis 0 runs along the slice normal (inferior → superior for a standard
axial series), axis 1 down the image rows, axis 2 along the image columns, exactly as the scanner stores it.
The returned affine maps ``(s, r, c, 1)`` to RAS millimetres.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from ctmil.io.dicom_header import READ_ERRORS, SliceHeader, header_values, read_header

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


class DicomError(ValueError):
    """A data problem with a DICOM series, reported as a one-line reason (never a traceback)."""


@dataclass
class SeriesInfo:
    """Header summary of one DICOM series (no pixel data read)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    image_type: tuple[str, ...] = ()
    sop_class: str = ""
    files: list[str] = field(default_factory=list)
    orientations: set[tuple[float, ...]] = field(default_factory=set)
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)
    pixel_spacings: set[tuple[float, float]] = field(default_factory=set)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    frames: int = 1
    slices: list[SliceHeader] = field(default_factory=list, repr=False)  # headers, when scanned with keep_headers

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"series {self.number if self.number is not None else '?'}{desc} ({self.modality or 'no modality'}, {self.n_files} files)"


def scan_dicom_tree(
    root: str | os.PathLike, progress: bool = False, keep_headers: bool = False
) -> tuple[dict[str, list[SeriesInfo]], list[tuple[str, str]]]:
    """Walk ``root`` and group DICOM image files by study and series, reading headers only.

    With ``keep_headers`` each file's header and raw-pixel offset are kept in ``SeriesInfo.slices`` so that
    :func:`load_dicom_series` need not parse it again (the fast path for a folder holding one study).

    Returns:
        ``(studies, skipped)`` where ``studies`` maps StudyInstanceUID to its series and ``skipped`` lists
        ``(path, reason)`` for files that are not DICOM images (junk, DICOMDIR, unreadable files).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    paths = [str(root)] if root.is_file() else sorted(str(p) for p in root.rglob("*") if p.is_file())
    series: dict[tuple[str, str], SeriesInfo] = {}
    skipped: list[tuple[str, str]] = []
    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="scanning DICOM headers", unit="file", leave=False)
    for path in iterator:
        try:
            ds = read_header(path)
        except READ_ERRORS:
            skipped.append((path, "not a readable DICOM file"))
            continue
        media_class = ds.media_sop_class
        if media_class == MEDIA_STORAGE_DIRECTORY or Path(path).name.upper() == "DICOMDIR":
            skipped.append((path, "DICOMDIR index file"))
            continue
        study, uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not study or not uid:
            skipped.append((path, "DICOM without study/series UID"))
            continue
        info = series.get((study, uid))
        if info is None:
            image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
            number = ds.get("SeriesNumber")
            info = SeriesInfo(
                study_uid=study, series_uid=uid, modality=str(ds.get("Modality", "")).upper(),
                description=str(ds.get("SeriesDescription", "")), number=int(number) if number not in (None, "") else None,
                image_type=image_type, sop_class=str(ds.get("SOPClassUID", "")),
            )
            series[(study, uid)] = info
        info.files.append(path)
        if keep_headers:
            info.slices.append(ds)
        iop, ipp, ps = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"), ds.get("PixelSpacing")
        if iop is not None and len(iop) == 6:
            info.orientations.add(tuple(round(float(v), 3) for v in iop))
        info.positions.append(tuple(float(v) for v in ipp) if ipp is not None and len(ipp) == 3 else None)
        if ps is not None and len(ps) == 2:
            info.pixel_spacings.add((round(float(ps[0]), 4), round(float(ps[1]), 4)))
        if ds.get("Rows") is not None and ds.get("Columns") is not None:
            info.sizes.add((int(ds.get("Rows")), int(ds.get("Columns"))))
        info.frames = max(info.frames, int(ds.get("NumberOfFrames") or 1))
    studies: dict[str, list[SeriesInfo]] = defaultdict(list)
    for info in series.values():
        studies[info.study_uid].append(info)
    return dict(studies), skipped


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def series_problem(info: SeriesInfo, min_slices: int = 8, spacing_tolerance: float = 0.1) -> str | None:
    """Why ``info`` cannot be the CT image series of its study, or ``None`` when it can."""
    if info.modality != "CT":
        return f"modality {info.modality or 'missing'}, not CT"
    if info.sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) and info.sop_class:
        return f"not a CT image (SOP class {info.sop_class})"
    if "LOCALIZER" in info.image_type or "SCOUT" in info.image_type:
        return "localizer/scout"
    if info.frames > 1 or info.sop_class == ENHANCED_CT_IMAGE_STORAGE:
        return "unsupported image type (multi-frame enhanced CT)"
    if not info.sizes:
        return "no pixel data"
    if len(info.orientations) != 1:
        return "inconsistent orientation" if info.orientations else "no orientation"
    if len(info.sizes) != 1 or len(info.pixel_spacings) != 1:
        return "inconsistent image size or pixel spacing"
    normal = _normal(next(iter(info.orientations)))
    if abs(normal[2]) < 0.8:
        return "not axial"
    if any(p is None for p in info.positions):
        return "missing slice positions"
    if info.n_files < min_slices:
        return f"too few slices ({info.n_files} < {min_slices})"
    pos = np.sort(np.asarray(info.positions) @ normal)
    gaps = np.diff(pos)
    if np.any(gaps < 1e-3):
        return "duplicate slice positions"
    if np.max(np.abs(gaps - np.median(gaps))) > spacing_tolerance * np.median(gaps) + 1e-3:
        return f"inconsistent slice spacing ({gaps.min():.2f}–{gaps.max():.2f} mm)"
    return None


def choose_ct_series(series: list[SeriesInfo], min_slices: int = 8, spacing_tolerance: float = 0.1) -> tuple[SeriesInfo | None, str]:
    """Pick the axial CT image series of one study: a valid series with the most slices.

    Returns ``(chosen, reason)``; ``chosen`` is ``None`` when no series qualifies, and ``reason`` then says
    what was wrong with each candidate.
    """
    problems = {id(s): series_problem(s, min_slices, spacing_tolerance) for s in series}
    valid = [s for s in series if problems[id(s)] is None]
    if not valid:
        detail = "; ".join(f"{s.label()}: {problems[id(s)]}" for s in series)
        only_non_ct = all(s.modality != "CT" or "LOCALIZER" in s.image_type for s in series)
        head = "no CT series" if only_non_ct else "no usable axial CT series"
        return None, f"{head} ({detail})"
    valid.sort(key=lambda s: (-s.n_files, s.number if s.number is not None else 1 << 30))
    chosen = valid[0]
    others = [f"{s.label()}: {problems[id(s)] or 'fewer slices'}" for s in series if s is not chosen]
    reason = f"axial CT with the most slices ({chosen.n_files})"
    if others:
        reason += "; not chosen: " + "; ".join(others)
    return chosen, reason


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


def _syntax_name(uid: str) -> str:
    return pydicom.uid.UID(uid).name if uid else ""


def _rescale(ds: SliceHeader) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _int16_shift_fits(stored: np.ndarray, signed: bool, intercept: int) -> bool:
    """Whether stored + intercept stays in int16 for raw 16-bit values ``stored`` (int16 bits)."""
    if not -32768 <= intercept <= 32767:
        return False
    if signed:
        return (intercept <= 0 or int(stored.max()) + intercept <= 32767) and (intercept >= 0 or int(stored.min()) + intercept >= -32768)
    return int(stored.view(np.uint16).max()) + intercept <= 32767  # unsigned values are >= 0


def _raw_to_hu(stored: np.ndarray, signed: bool, rescale: list[tuple[float, float]]) -> np.ndarray:
    """Raw 16-bit slices ``(S, H, W)`` (int16 bits, signed or not) → HU, in place as int16 when the slopes
    are 1 and the intercepts whole numbers that keep the values in int16, float32 otherwise."""
    if all(slope == 1.0 and intercept == int(intercept) for slope, intercept in rescale):
        intercepts = [int(i) for _, i in rescale]
        if len(set(intercepts)) == 1:
            if _int16_shift_fits(stored, signed, intercepts[0]):
                stored += np.int16(intercepts[0])  # wraps exactly: the true result is in int16 range
                return stored
        elif all(_int16_shift_fits(stored[i], signed, c) for i, c in enumerate(intercepts)):
            for i, c in enumerate(intercepts):
                stored[i] += np.int16(c)
            return stored
    values = stored if signed else stored.view(np.uint16)
    slopes = np.asarray([s for s, _ in rescale], np.float32)[:, None, None]
    intercepts = np.asarray([i for _, i in rescale], np.float32)[:, None, None]
    return values * slopes + intercepts


def _to_hu(slices: list[np.ndarray], rescale: list[tuple[float, float]]) -> np.ndarray:
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


def _read_raw(item: SliceHeader, out: np.ndarray) -> None:
    """Read the raw pixels of ``item`` straight into the C-contiguous int16 array ``out``."""
    with open(item.path, "rb", buffering=0) as fp:
        fp.seek(item.pixel_offset)
        n = fp.readinto(memoryview(out).cast("B"))
    if n != out.nbytes:
        raise DicomError(f"truncated pixel data in {Path(item.path).name}")


def _slice_pixels(item: SliceHeader) -> np.ndarray:
    """Stored values of one slice by pydicom (compressed, 8/32-bit or unusually laid out files)."""
    try:
        ds = item.dataset if item.dataset is not None and "PixelData" in item.dataset else pydicom.dcmread(item.path)
    except READ_ERRORS as err:
        raise DicomError(f"unreadable file {Path(item.path).name}: {err}") from None
    try:
        return _decode(ds)
    except DicomError:
        raise
    except Exception as err:  # pixel handlers raise many types (missing codec, corrupt stream)
        raise DicomError(f"cannot decode pixel data ({ds.file_meta.TransferSyntaxUID.name}): {err}") from None


def _as_header(f) -> SliceHeader:
    if isinstance(f, SliceHeader):
        return f
    if isinstance(f, pydicom.Dataset):
        meta = getattr(f, "file_meta", None)
        return SliceHeader(
            str(getattr(f, "filename", "") or ""), header_values(f), str(getattr(meta, "TransferSyntaxUID", "")),
            str(getattr(meta, "MediaStorageSOPClassUID", "")), parsed_by="pydicom", dataset=f,
        )
    try:
        return read_header(f)
    except READ_ERRORS as err:
        raise DicomError(f"unreadable file {Path(f).name}: {err}") from None


def load_dicom_series(
    files: list[str | os.PathLike | pydicom.Dataset | SliceHeader], spacing_tolerance: float = 0.1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode one CT series into Hounsfield units.

    Uncompressed 16-bit files (the usual CT export) are read straight from disk into the volume; anything
    else (JPEG, JPEG 2000, RLE, odd layouts) goes through pydicom's decoders.

    Args:
        files: the series' files, their already-read datasets or the :class:`SliceHeader` headers from
            :func:`scan_dicom_tree`, in any order.

    Returns:
        ``(volume, affine, meta)``: ``volume`` ``(S, H, W)`` in HU (int16, or float32 for fractional
        rescaling), slices ordered by position along
        the slice normal; ``affine`` 4×4 mapping ``(s, r, c, 1)`` to RAS mm; ``meta`` with ``spacing``
        ``(dz, dy, dx)`` mm, ``n_slices`` and the series description (no patient identifiers).

    Raises:
        DicomError: unreadable files, missing geometry, duplicate or inconsistent slice positions.
    """
    if not files:
        raise DicomError("empty series")
    items = [_as_header(f) for f in files]
    first = items[0]
    try:
        iop = np.asarray(first.get("ImageOrientationPatient"), float)
        row_dir, col_dir = iop[:3], iop[3:]
        normal = np.cross(row_dir, col_dir)
        positions = np.asarray([[float(v) for v in it.get("ImagePositionPatient")] for it in items], float).reshape(len(items), 3)
        dy, dx = (float(v) for v in first.get("PixelSpacing"))
    except (AttributeError, TypeError, ValueError, IndexError):
        raise DicomError("missing image geometry (orientation, position or pixel spacing)") from None
    order = np.argsort(positions @ normal, kind="stable")
    items, positions = [items[i] for i in order], positions[order]
    along = positions @ normal
    gaps = np.diff(along)
    if gaps.size and np.any(gaps < 1e-3):
        raise DicomError("duplicate slice positions")
    dz = float(np.median(gaps)) if gaps.size else float(first.get("SliceThickness") or 1.0)
    if gaps.size and np.max(np.abs(gaps - dz)) > spacing_tolerance * dz + 1e-3:
        raise DicomError(f"inconsistent slice spacing ({gaps.min():.2f}–{gaps.max():.2f} mm)")
    try:
        shapes = {(int(it.get("Rows")), int(it.get("Columns"))) for it in items}
    except (AttributeError, TypeError, ValueError):
        raise DicomError("no pixel data (missing Rows/Columns)") from None
    if len(shapes) != 1:
        raise DicomError("inconsistent image size within the series")
    shape = shapes.pop()
    rescale = [_rescale(it) for it in items]
    signs = {int(it.get("PixelRepresentation") or 0) for it in items}
    if all(it.pixel_offset is not None for it in items) and len(signs) == 1:
        stored = np.empty((len(items), *shape), dtype=np.int16)
        for i, it in enumerate(items):
            _read_raw(it, stored[i])
        volume = _raw_to_hu(stored, signs.pop() == 1, rescale)
    else:
        volume = _to_hu([_slice_pixels(it) for it in items], rescale)
    slice_vec = (positions[-1] - positions[0]) / (len(positions) - 1) if len(positions) > 1 else normal * dz
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = slice_vec, col_dir * dy, row_dir * dx, positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS → RAS
    meta = {
        "spacing": (abs(dz), dy, dx),
        "n_slices": len(items),
        "series_description": str(first.get("SeriesDescription", "")),
        "transfer_syntax": _syntax_name(first.transfer_syntax),
    }
    return volume, affine, meta
