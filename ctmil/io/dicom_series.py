"""DICOM discovery and series loading for hospital export trees.

A hospital export mixes studies, series, localizers, dose reports, DICOMDIR files and non-DICOM junk.
:func:`scan_dicom_tree` reads headers only, :func:`choose_ct_series` picks per study the axial CT image
series and says why, and :func:`load_dicom_series` decodes it into a Hounsfield-unit slice stack ordered
by position along the slice normal (never by file name or InstanceNumber; see :mod:`ctmil.io.dicom_volume`).

Every file is read in isolation: a file that cannot be read, is too large or is not an image is skipped with
its reason; a slice with unusable geometry is set aside in ``SeriesInfo.bad`` (a few are dropped with a
warning, more fail the series: :mod:`ctmil.io.dicom_validate`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctmil.io.dicom_header import SliceHeader, read_header
from ctmil.io.dicom_pixels import DicomError
from ctmil.io.dicom_validate import bad_files_text, geometry_problem, image_problem, max_bad, spacing_problem

#: Fewest slices of a usable CT series: the one home of this default (preprocessing's ``min_slices``).
MIN_SLICES = 8
from ctmil.io.dicom_volume import load_dicom_series
from ctmil.io.dicom_walker import DicomReadError
from ctmil.io.grouping import INFERRED_WARNING, series_key
from ctmil.io.paths import walk_files

__all__ = ["DicomError", "SeriesInfo", "choose_ct_series", "load_dicom_series", "scan_dicom_tree", "series_problem"]

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


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
    inferred: bool = False  # grouped without UIDs (see ctmil.io.grouping)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of slices with unusable geometry
    warnings: list[str] = field(default_factory=list)  # set by choose_ct_series on the chosen series

    @property
    def n_files(self) -> int:
        return len(self.files)

    def label(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"series {self.number if self.number is not None else '?'}{desc} ({self.modality or 'no modality'}, {self.n_files} files)"


def _read_one(path: str) -> tuple[SliceHeader | None, str]:
    """The header of one file, or why the file is skipped. Never raises: one file cannot stop a scan."""
    try:
        header = read_header(path)
    except DicomReadError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - read_header raises only DicomReadError; this is the last guard
        logger.debug("reading %s failed", path, exc_info=err)
        return None, f"not readable DICOM (unexpected {type(err).__name__})"
    if header.media_sop_class == MEDIA_STORAGE_DIRECTORY or Path(path).name.upper() == "DICOMDIR":
        return None, "DICOMDIR index file"
    if problem := image_problem(header):
        return None, problem
    return header, ""


def _new_series(ds: SliceHeader, study: str, uid: str, inferred: bool) -> SeriesInfo:
    number = ds.get("SeriesNumber")
    return SeriesInfo(
        study_uid=study, series_uid=uid, modality=str(ds.get("Modality", "")).upper(),
        description=str(ds.get("SeriesDescription", "")), number=int(number) if number not in (None, "") else None,
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())), sop_class=str(ds.get("SOPClassUID", "")),
        inferred=inferred,
    )


def _add(info: SeriesInfo, ds: SliceHeader, keep_headers: bool) -> None:
    if problem := geometry_problem(ds):
        info.bad.append((ds.path, problem))
        return
    ds.checked = True  # _read_one checked the image size
    info.files.append(ds.path)
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


def scan_dicom_tree(
    root: str | os.PathLike, progress: bool = False, keep_headers: bool = False
) -> tuple[dict[str, list[SeriesInfo]], list[tuple[str, str]]]:
    """Walk ``root`` (directory symlinks followed once) and group DICOM image files by study and series,
    reading headers only. Files without study/series UIDs are grouped as :mod:`ctmil.io.grouping` describes.

    With ``keep_headers`` each file's header and raw-pixel offset are kept in ``SeriesInfo.slices`` so that
    :func:`load_dicom_series` need not parse it again (the fast path for a folder holding one study).

    Returns:
        ``(studies, skipped)`` where ``studies`` maps a study key (the StudyInstanceUID, or an inferred key) to
        its series and ``skipped`` lists ``(path, reason)`` for files that are not usable DICOM images (junk,
        DICOMDIR, damaged or oversized files). No file, whatever its bytes, makes this raise.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"input not found: {root}")
    paths = [str(p) for p in walk_files(root)]
    base = root if root.is_dir() else root.parent
    series: dict[tuple[str, str], SeriesInfo] = {}
    skipped: list[tuple[str, str]] = []
    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc="scanning DICOM headers", unit="file", leave=False)
    for path in iterator:
        ds, reason = _read_one(path)
        if ds is None:
            skipped.append((path, reason))
            continue
        try:
            study, uid, inferred = series_key(ds, base)
            if inferred and (ds.get("Rows") is None or ds.get("Columns") is None):
                skipped.append((path, "DICOM without study/series UID and without an image"))
                continue
            info = series.get((study, uid)) or _new_series(ds, study, uid, inferred)
            _add(info, ds, keep_headers)
            series[(study, uid)] = info
        except Exception as err:  # noqa: BLE001 - values of an odd type: this file only is skipped
            skipped.append((path, f"unusable header values ({type(err).__name__})"))
    studies: dict[str, list[SeriesInfo]] = defaultdict(list)
    for info in series.values():
        studies[info.study_uid].append(info)
    return dict(studies), skipped


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def _along(info: SeriesInfo) -> np.ndarray:
    return np.sort(np.asarray(info.positions, float) @ _normal(next(iter(info.orientations))))


def series_problem(info: SeriesInfo, min_slices: int = MIN_SLICES, spacing_tolerance: float = 0.1) -> str | None:
    """Why ``info`` cannot be the CT image series of its study, or ``None`` when it can."""
    if info.modality != "CT":
        return f"modality {info.modality or 'missing'}, not CT"
    if info.sop_class not in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE) and info.sop_class:
        return f"not a CT image (SOP class {info.sop_class})"
    if "LOCALIZER" in info.image_type or "SCOUT" in info.image_type:
        return "localizer/scout"
    if info.frames > 1 or info.sop_class == ENHANCED_CT_IMAGE_STORAGE:
        return "unsupported image type (multi-frame enhanced CT)"
    total = info.n_files + len(info.bad)
    if info.bad and len(info.bad) > max_bad(total):
        return bad_files_text(info.bad, total)
    if not info.sizes:
        return "no pixel data"
    if len(info.orientations) != 1:
        return "inconsistent orientation" if info.orientations else "no orientation"
    if len(info.sizes) != 1 or len(info.pixel_spacings) != 1:
        return "inconsistent image size or pixel spacing"
    if abs(_normal(next(iter(info.orientations)))[2]) < 0.8:
        return "not axial"
    if any(p is None for p in info.positions):
        return "missing slice positions"
    if info.n_files < min_slices:
        return f"too few slices ({info.n_files} < {min_slices})"
    problem, _, _ = spacing_problem(_along(info), spacing_tolerance)
    if problem and info.inferred and problem.startswith("duplicate"):
        problem += " (blank UIDs: two series in one folder could not be told apart)"
    return problem


def _warnings(info: SeriesInfo, spacing_tolerance: float) -> list[str]:
    """What a user should know about a usable series: inferred grouping, dropped slices, gaps."""
    warnings = [INFERRED_WARNING] if info.inferred else []
    if info.bad:
        names = ", ".join(Path(p).name for p, _ in info.bad[:5]) + (" ..." if len(info.bad) > 5 else "")
        warnings.append(f"{len(info.bad)} slices dropped ({info.bad[0][1]}): {names}")
    _, gap, _ = spacing_problem(_along(info), spacing_tolerance)
    return warnings + ([gap] if gap else [])


def choose_ct_series(series: list[SeriesInfo], min_slices: int = MIN_SLICES, spacing_tolerance: float = 0.1) -> tuple[SeriesInfo | None, str]:
    """Pick the axial CT image series of one study: a valid series with the most slices.

    Returns ``(chosen, reason)``; ``chosen`` is ``None`` when no series qualifies, and ``reason`` then says
    what was wrong with each candidate. ``chosen.warnings`` lists what the manifest should say about it.
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
    chosen.warnings = _warnings(chosen, spacing_tolerance)
    others = [f"{s.label()}: {problems[id(s)] or 'fewer slices'}" for s in series if s is not chosen]
    reason = f"axial CT with the most slices ({chosen.n_files})"
    if others:
        reason += "; not chosen: " + "; ".join(others)
    return chosen, reason
