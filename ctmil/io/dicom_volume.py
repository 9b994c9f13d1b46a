"""One DICOM series → a Hounsfield-unit slice stack with its affine, losing only the slices that are damaged.

The slice stack is ``(S, H, W)``: axis 0 runs along the slice normal (inferior → superior for a standard axial
series), axis 1 down the image rows, axis 2 along the image columns, exactly as the scanner stores it.
The returned affine maps ``(s, r, c, 1)`` to RAS millimetres. What is dropped, with a warning, and what fails
the series is decided by :mod:`ctmil.io.dicom_validate`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom

from ctmil.io.dicom_header import SliceHeader, header_values, read_header
from ctmil.io.dicom_pixels import DicomError, common_shift, int16_shift_fits, raw_to_hu, read_raw, rescale_of, slice_pixels, stored_to_hu, syntax_name
from ctmil.io.dicom_validate import SPACING_RANGE, bad_files_text, geometry_problem, image_problem, max_bad, spacing_problem
from ctmil.io.dicom_walker import DicomReadError


def _as_header(f) -> SliceHeader:
    if isinstance(f, SliceHeader):
        return f
    if isinstance(f, pydicom.Dataset):
        meta = getattr(f, "file_meta", None)
        return SliceHeader(
            str(getattr(f, "filename", "") or ""), header_values(f), str(getattr(meta, "TransferSyntaxUID", "")),
            str(getattr(meta, "MediaStorageSOPClassUID", "")), parsed_by="pydicom", dataset=f,
        )
    return read_header(f)


def _usable(files: list) -> tuple[list[SliceHeader], list[tuple[str, str]]]:
    """Headers of the slices whose header is readable and valid; ``(path, reason)`` of the others."""
    good, bad = [], []
    for f in files:
        name = str(getattr(f, "path", None) or getattr(f, "filename", None) or f)
        try:
            item = _as_header(f)
        except DicomReadError as err:
            bad.append((name, f"unreadable file ({err})"))
            continue
        try:
            problem = None if item.checked else image_problem(item) or geometry_problem(item)
        except Exception as err:  # noqa: BLE001 - values of an odd type: this slice only is dropped
            problem = f"unusable header values ({type(err).__name__})"
        if not problem and any(item.get(k) is None for k in ("ImagePositionPatient", "Rows", "Columns")):
            problem = "missing ImagePositionPatient or Rows/Columns"
        if problem:
            bad.append((name, problem))
        else:
            good.append(item)
    return good, bad


def _check_bad(bad: list[tuple[str, str]], n_total: int) -> None:
    if len(bad) > max_bad(n_total):
        if len(bad) == 1:
            raise DicomError(f"{Path(bad[0][0]).name}: {bad[0][1]}")
        raise DicomError(bad_files_text(bad, n_total))


def _geometry(items: list[SliceHeader]) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(row_dir, col_dir, dy, dx)`` shared by all ``items``."""
    try:
        iops = {tuple(round(float(v), 4) for v in it.get("ImageOrientationPatient")) for it in items}
        spacings = {tuple(round(float(v), 4) for v in it.get("PixelSpacing")) for it in items}
    except TypeError:
        raise DicomError("missing image geometry (orientation or pixel spacing)") from None
    if len(iops) != 1 or len(spacings) != 1:
        raise DicomError("inconsistent orientation or pixel spacing within the series")
    iop, (dy, dx) = np.asarray(next(iter(iops)), float), next(iter(spacings))
    return iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:]), float(dy), float(dx)


def _reason(err: BaseException) -> str:
    if isinstance(err, DicomError):
        return str(err)
    return f"cannot read pixel data ({type(err).__name__}: {' '.join(str(err).split())[:80]})"


def _pixels(items: list[SliceHeader], shape: tuple[int, int]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """HU volume of the slices that decode; their indices into ``items``; ``(path, reason)`` of the others."""
    signs = {int(it.get("PixelRepresentation") or 0) for it in items}
    failed: list[tuple[int, str]] = []
    if all(it.pixel_offset is not None for it in items) and len(signs) == 1:
        signed, rescale = signs.pop() == 1, [rescale_of(it) for it in items]
        shift = common_shift(rescale)  # the usual CT: HU = stored + intercept, done per slice while it is in the cache
        stored, shifted = np.empty((len(items), *shape), dtype=np.int16), []
        for i, it in enumerate(items):
            try:
                read_raw(it, stored[i])
            except Exception as err:  # noqa: BLE001 - one damaged slice must not fail the series
                failed.append((i, _reason(err)))
                continue
            if shift is not None:
                if int16_shift_fits(stored[i], signed, shift):
                    stored[i] += np.int16(shift)  # wraps exactly: the true result is in int16 range
                    shifted.append(i)
                else:  # HU leave int16: undo (int16 arithmetic wraps back exactly); raw_to_hu gives float32
                    for j in shifted:
                        stored[j] -= np.int16(shift)
                    shift = None
        keep = [i for i in range(len(items)) if i not in {j for j, _ in failed}]
        if failed:
            stored = stored[keep]
        if not keep:
            volume = None
        else:
            volume = stored if shift is not None else raw_to_hu(stored, signed, [rescale[i] for i in keep])
    else:
        slices, keep = [], []
        for i, it in enumerate(items):
            try:
                slices.append(slice_pixels(it, shape))
                keep.append(i)
            except Exception as err:  # noqa: BLE001 - one damaged slice must not fail the series
                failed.append((i, _reason(err)))
        volume = stored_to_hu(slices, [rescale_of(items[i]) for i in keep]) if keep else None
    return volume, keep, [(items[i].path, reason) for i, reason in failed]


def load_dicom_series(
    files: list[str | os.PathLike | pydicom.Dataset | SliceHeader], spacing_tolerance: float = 0.1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode one CT series into Hounsfield units.

    Uncompressed 16-bit files (the usual CT export) are read straight from disk into the volume; anything
    else (JPEG, JPEG 2000, RLE, odd layouts) goes through pydicom's decoders. A few damaged slices
    (unreadable, truncated, invalid geometry; at most 10 %) are dropped with a warning naming them.

    Args:
        files: the series' files, their already-read datasets or the :class:`SliceHeader` headers from
            :func:`~ctmil.io.dicom_series.scan_dicom_tree`, in any order.

    Returns:
        ``(volume, affine, meta)``: ``volume`` ``(S, H, W)`` in HU (int16, or float32 for fractional
        rescaling), slices ordered by position along the slice normal; ``affine`` 4×4 mapping ``(s, r, c, 1)``
        to RAS mm; ``meta`` with ``spacing`` ``(dz, dy, dx)`` mm, ``n_slices``, the series description,
        ``transfer_syntax``, ``warnings`` (dropped slices, gaps; no patient identifiers) and ``slice_files`` (each
        slice's file, in slice order).

    Raises:
        DicomError: too many damaged slices (naming the first), missing or invalid geometry, duplicate or
            inconsistent slice positions, a large block of missing slices.
    """
    if not files:
        raise DicomError("empty series")
    n_total = len(files)
    items, bad = _usable(files)
    _check_bad(bad, n_total)
    row_dir, col_dir, dy, dx = _geometry(items)
    normal = np.cross(row_dir, col_dir)
    items.sort(key=lambda it: float(np.asarray(it.get("ImagePositionPatient"), float) @ normal))
    shapes = {(int(it.get("Rows")), int(it.get("Columns"))) for it in items}
    if len(shapes) != 1:
        raise DicomError("inconsistent image size within the series")
    shape = shapes.pop()
    problem, _, _ = spacing_problem(_positions(items) @ normal, spacing_tolerance)
    if problem:
        raise DicomError(problem)
    volume, keep, failed = _pixels(items, shape)
    bad += failed
    _check_bad(bad, n_total)
    items = [items[i] for i in keep]
    positions = _positions(items)
    problem, gap, dz = spacing_problem(positions @ normal, spacing_tolerance)
    if problem:
        raise DicomError(f"{problem} after dropping {len(bad)} damaged slices")
    if len(items) > 1:
        steps = int(round(float((positions[-1] - positions[0]) @ normal) / dz))
        slice_vec = (positions[-1] - positions[0]) / steps
    else:
        thickness = items[0].get("SliceThickness")
        lo, hi = SPACING_RANGE
        dz = float(thickness) if thickness is not None and lo <= thickness <= hi else 1.0  # NaN fails the range
        slice_vec = normal * dz
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = slice_vec, col_dir * dy, row_dir * dx, positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS → RAS
    warnings = []
    if bad:
        names = ", ".join(Path(p).name for p, _ in bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.append(f"{len(bad)} slices dropped ({bad[0][1]}): {names}")
    meta = {
        "spacing": (abs(dz), dy, dx),
        "n_slices": len(items),
        "series_description": str(items[0].get("SeriesDescription", "")),
        "transfer_syntax": syntax_name(items[0].transfer_syntax),
        "warnings": warnings + ([gap] if gap else []),
        "slice_files": [str(it.path) for it in items],  # slice order: what DICOM results reference (ctmil.infer.dicom_results)
    }
    return volume, affine, meta


def _positions(items: list[SliceHeader]) -> np.ndarray:
    return np.asarray([[float(v) for v in it.get("ImagePositionPatient")] for it in items], float).reshape(len(items), 3)
