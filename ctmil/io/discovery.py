"""Turning what a user has (a datalist CSV, an export tree, NIfTI files, slice-image folders) into cases.

A case is a dict ``{"case_id", "image", "label", "patient", "source", "series", "error"}`` where ``image`` is
what :class:`ctmil.transforms.LoadCT` reads (a path or, for DICOM, the chosen series' file list).
Cases that cannot be used carry a one-line ``error`` instead of an image, so that they still reach the
manifest. Case ids of DICOM studies are a hash of the StudyInstanceUID: never a patient name or ID.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pandas as pd

from ctmil.io.dicom_series import MIN_SLICES, choose_ct_series, scan_dicom_tree
from ctmil.io.grouping import case_studies, nothing_usable
from ctmil.io.paths import shown_path, walk_dirs, walk_files
from ctmil.io.readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES, detect_input_kind
from ctmil.keys import Columns

logger = logging.getLogger(__name__)
IMAGE_COLUMNS = ("image", "path", "dicom_dir", "nifti_path")
_NO_LABEL = {"", "na", "nan", "none", "null"}


def study_key(study_uid: str) -> str:
    """A stable, non-identifying case key for a DICOM study."""
    return "st-" + hashlib.sha256(study_uid.encode()).hexdigest()[:12]


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (datalist, labels) with every cell a string, as written: ``0012`` stays ``0012``, ``NA`` and ``nan``
    stay text, empty cells are ``""``; surrounding spaces are stripped from names and cells.

    Raises:
        ValueError: one line, when the file is missing or not a readable CSV table.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as err:
        raise ValueError(f"{path}: not a readable CSV table ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table.apply(lambda column: column.str.strip())


def parse_label(text) -> float | None:
    """``0``/``1`` (also ``0.0``/``1.0``) as a float; empty, ``NA``, ``nan`` as ``None`` (unlabelled).

    Raises:
        ValueError: any other text.
    """
    if text is None or str(text).strip().lower() in _NO_LABEL:
        return None
    try:
        value = float(str(text))
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise ValueError(f"label {str(text)[:20]!r} is not 0 or 1")
    return value


def _case(case_id: str, image, source: str, label=None, patient=None, series: str = "", error: str = "", warning: str = "") -> dict:
    return {
        Columns.CASE_ID: str(case_id), "image": image, Columns.LABEL: label, "patient": str(patient or case_id),
        "source": str(source), "series": series, "error": error, "warning": warning,
    }


def read_datalist(csv_path: str | os.PathLike, min_slices: int = MIN_SLICES, keep_paths: bool = False) -> list[dict]:
    """Cases from a CSV with ``case_id``, an image column (``image``/``path``/``dicom_dir``/``nifti_path``),
    and optional ``label`` and ``patient``; relative paths are taken from the CSV's folder. Sources are shown
    relative to that folder unless ``keep_paths``.

    Raises:
        ValueError: one line, for a CSV that is not a datalist or has duplicate case ids.
    """
    csv_path = Path(csv_path)
    table = read_table(csv_path)
    columns = [c for c in IMAGE_COLUMNS if c in table.columns]
    if Columns.CASE_ID not in table.columns or not columns:
        raise ValueError(f"{csv_path}: not a datalist: needs a 'case_id' column and one of {', '.join(IMAGE_COLUMNS)}; found {', '.join(map(str, table.columns[:8]))}")
    if table[Columns.CASE_ID].duplicated().any():
        raise ValueError(f"{csv_path}: duplicate case ids: {', '.join(sorted(table.loc[table[Columns.CASE_ID].duplicated(), Columns.CASE_ID])[:5])}")
    cases = []
    for row in table.to_dict("records"):
        case_id, patient = row[Columns.CASE_ID], row.get("patient") or None
        value = next((row[c] for c in columns if row[c]), None)
        if value is None:
            cases.append(_case(case_id, None, csv_path.name, patient=patient, error=f"no input path in columns {columns}"))
            continue
        try:
            label = parse_label(row.get(Columns.LABEL))
        except ValueError as err:
            cases.append(_case(case_id, None, value, patient=patient, error=str(err)))
            continue
        path = Path(value)
        path = path if path.is_absolute() else csv_path.parent / path
        source = shown_path(path, csv_path.parent, keep_paths)
        cases.extend(_cases_for_path(path, source, case_id, label, patient, min_slices))
    return cases


def _cases_for_path(path: Path, source: str, case_id: str, label, patient, min_slices: int) -> list[dict]:
    """One case for a path named in a datalist (a DICOM folder of one study, a NIfTI file, a slice folder)."""
    if not path.exists():
        return [_case(case_id, None, source, label, patient, error=f"input not found: {source}")]
    kind = detect_input_kind(path)
    if kind != "dicom":
        return [_case(case_id, str(path), source, label, patient)]
    studies, skipped = scan_dicom_tree(path)
    studies = case_studies(studies)
    if not studies:
        return [_case(case_id, None, source, label, patient, error=nothing_usable(skipped) if skipped else "no DICOM images found")]
    if len(studies) > 1:
        return [_case(case_id, None, source, label, patient, error=f"{len(studies)} studies in one case folder")]
    chosen, reason = choose_ct_series(next(iter(studies.values())), min_slices=min_slices)
    if chosen is None:
        return [_case(case_id, None, source, label, patient, error=reason)]
    return [_case(case_id, chosen.files, source, label, patient, series=f"{chosen.label()}: {reason}", warning="; ".join(chosen.warnings))]


def discover_cases(
    inputs: list[str | os.PathLike], labels: dict[str, float] | None = None, min_slices: int = MIN_SLICES, progress: bool = False,
    keep_paths: bool = False, with_study_uid: bool = False,
) -> list[dict]:
    """Cases from CSV datalists, NIfTI files, slice-image folders and DICOM export trees.

    A directory is read as: one slice-image case if it holds only images; one case per NIfTI file and per
    sub-folder of slice images inside it; and one case per DICOM study found anywhere below it (the axial
    CT series chosen per study, the reason recorded; directory symlinks followed once). ``labels`` maps case
    ids (or, for DICOM, the StudyInstanceUID) to 0/1. ``source`` is relative to the input named (``.`` for the
    input itself) unless ``keep_paths``; no file makes this raise.

    Raises:
        ValueError: one line, for a CSV that is not a datalist, or duplicate case ids among the inputs.
    """
    labels = labels or {}
    cases: list[dict] = []
    for item in inputs:
        path = Path(item)
        shown = str(path) if keep_paths else path.name
        if not path.exists():
            cases.append(_case(path.name, None, shown, error=f"input not found: {shown}"))
        elif path.is_file() and path.suffix.lower() == ".csv":
            cases.extend(read_datalist(path, min_slices, keep_paths))
        elif path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
            cases.append(_case(_stem(path), str(path), shown))
        elif path.is_dir() and detect_input_kind(path) == "slices":
            cases.append(_case(path.name, str(path), shown))
        elif path.is_dir():
            cases.extend(_cases_in_directory(path, min_slices, progress, keep_paths))
        else:
            cases.append(_case(path.name, None, shown, error="unsupported input (expected a folder, .nii/.nii.gz or .csv)"))
    for case in cases:
        key = case.pop("_study_uid", None)
        if case[Columns.LABEL] is None:
            label = labels.get(case[Columns.CASE_ID], labels.get(key) if key else None)
            case[Columns.LABEL] = None if label is None else float(label)
        if with_study_uid:  # an identifier: only on request, to join predictions with clinical data
            case["study_uid"] = key or ""
    ids = [c[Columns.CASE_ID] for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate case ids among the inputs: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})[:5]))
    return cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _cases_in_directory(root: Path, min_slices: int, progress: bool, keep_paths: bool = False) -> list[dict]:
    cases = []
    shown = lambda p: shown_path(p, root, keep_paths)  # noqa: E731
    for nifti in (p for p in walk_files(root) if p.name.lower().endswith(NIFTI_SUFFIXES)):
        cases.append(_case(_stem(nifti), str(nifti), shown(nifti)))
    for folder in walk_dirs(root):
        if folder != root and detect_input_kind(folder) == "slices":
            cases.append(_case(folder.name, str(folder), shown(folder)))
    studies, skipped = scan_dicom_tree(root, progress=progress, keep_headers=True)  # each header parsed once
    read_otherwise = NIFTI_SUFFIXES + IMAGE_SUFFIXES  # NIfTI files and slice images are cases of their own above
    junk = [p for p, _ in skipped if not str(p).lower().endswith(read_otherwise)]
    if junk:
        logger.info("%d files below %s are not usable DICOM images (junk, DICOMDIR, reports, damaged); skipped", len(junk), root)
    for study_uid, series in sorted(studies.items(), key=lambda kv: study_key(kv[0])):
        chosen, reason = choose_ct_series(series, min_slices=min_slices)
        first = Path((chosen or series[0]).files[0] if (chosen or series[0]).files else (chosen or series[0]).bad[0][0]).parent
        image = (chosen.slices or chosen.files) if chosen else None  # headers travel with the case: no re-parse
        case = _case(study_key(study_uid), image, shown(first),
                     series=f"{chosen.label()}: {reason}" if chosen else "", error="" if chosen else reason,
                     warning="; ".join(chosen.warnings) if chosen else "")
        case["_study_uid"] = study_uid
        cases.append(case)
    if not cases:
        image_like = any(p.suffix.lower() in IMAGE_SUFFIXES for p in walk_files(root))
        reason = "image files found but no folder holds only slice images" if image_like else nothing_usable(skipped)
        cases.append(_case(root.name, None, shown(root), error=reason))
    return cases


def no_ct_reason(cases: list[dict]) -> str | None:
    """Why the discovered ``cases`` hold no CT at all (empty folders, only junk files), or ``None`` when any case has
    CT, usable or not. Commands make this a usage error rather than a batch of failed cases."""
    nothing = ("no DICOM images", "image files found but no folder")
    if not cases:
        return "no CT found in the inputs"
    if all(c.get("image") is None and str(c.get("error", "")).startswith(nothing) for c in cases):
        return f"no CT found in the inputs ({cases[0]['error']})"
    return None
