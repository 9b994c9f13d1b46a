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

from ctmil.io.dicom_series import choose_ct_series, scan_dicom_tree
from ctmil.io.readers import IMAGE_SUFFIXES, NIFTI_SUFFIXES, detect_input_kind

logger = logging.getLogger(__name__)
IMAGE_COLUMNS = ("image", "path", "dicom_dir", "nifti_path")


def study_key(study_uid: str) -> str:
    """A stable, non-identifying case key for a DICOM study."""
    return "st-" + hashlib.sha256(study_uid.encode()).hexdigest()[:12]


def _case(case_id: str, image, source: str, label=None, patient=None, series: str = "", error: str = "") -> dict:
    return {
        "case_id": str(case_id), "image": image, "label": label, "patient": str(patient or case_id),
        "source": str(source), "series": series, "error": error,
    }


def read_datalist(csv_path: str | os.PathLike, min_slices: int = 8) -> list[dict]:
    """Cases from a CSV with ``case_id``, an image column (``image``/``path``/``dicom_dir``/``nifti_path``),
    and optional ``label`` and ``patient``; relative paths are taken from the CSV's folder."""
    csv_path = Path(csv_path)
    table = pd.read_csv(csv_path)
    columns = [c for c in IMAGE_COLUMNS if c in table.columns]
    if "case_id" not in table.columns or not columns:
        raise ValueError(f"{csv_path}: a datalist needs a 'case_id' column and one of {IMAGE_COLUMNS}; found {list(table.columns)}")
    if table["case_id"].duplicated().any():
        raise ValueError(f"{csv_path}: duplicate case ids: {sorted(table.loc[table['case_id'].duplicated(), 'case_id'].astype(str))[:5]}")
    cases = []
    for row in table.to_dict("records"):
        value = next((row[c] for c in columns if not pd.isna(row[c]) and str(row[c]).strip()), None)
        if value is None:
            cases.append(_case(str(row["case_id"]), None, csv_path, error=f"no input path in columns {columns}"))
            continue
        path = Path(str(value))
        path = path if path.is_absolute() else csv_path.parent / path
        label = row.get("label")
        label = None if label is None or pd.isna(label) else float(label)
        cases.extend(_cases_for_path(path, str(row["case_id"]), label, row.get("patient"), min_slices))
    return cases


def _cases_for_path(path: Path, case_id: str, label, patient, min_slices: int) -> list[dict]:
    """One case for a path named in a datalist (a DICOM folder of one study, a NIfTI file, a slice folder)."""
    if not path.exists():
        return [_case(case_id, None, path, label, patient, error=f"input not found: {path}")]
    kind = detect_input_kind(path)
    if kind != "dicom":
        return [_case(case_id, str(path), path, label, patient)]
    studies, _ = scan_dicom_tree(path)
    if not studies:
        return [_case(case_id, None, path, label, patient, error="no DICOM images found")]
    if len(studies) > 1:
        return [_case(case_id, None, path, label, patient, error=f"{len(studies)} studies in one case folder")]
    chosen, reason = choose_ct_series(next(iter(studies.values())), min_slices=min_slices)
    if chosen is None:
        return [_case(case_id, None, path, label, patient, error=reason)]
    return [_case(case_id, chosen.files, path, label, patient, series=f"{chosen.label()}: {reason}")]


def discover_cases(inputs: list[str | os.PathLike], labels: dict[str, float] | None = None, min_slices: int = 8, progress: bool = False) -> list[dict]:
    """Cases from CSV datalists, NIfTI files, slice-image folders and DICOM export trees.

    A directory is read as: one slice-image case if it holds only images; one case per NIfTI file and per
    sub-folder of slice images inside it; and one case per DICOM study found anywhere below it (the axial
    CT series chosen per study, the reason recorded). ``labels`` maps case ids (or, for DICOM, the
    StudyInstanceUID) to 0/1.
    """
    labels = labels or {}
    cases: list[dict] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            cases.append(_case(path.name, None, path, error=f"input not found: {path}"))
        elif path.is_file() and path.suffix.lower() == ".csv":
            cases.extend(read_datalist(path, min_slices))
        elif path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES):
            cases.append(_case(_stem(path), str(path), path))
        elif path.is_dir() and detect_input_kind(path) == "slices":
            cases.append(_case(path.name, str(path), path))
        elif path.is_dir():
            cases.extend(_cases_in_directory(path, min_slices, progress))
        else:
            cases.append(_case(path.name, None, path, error="unsupported input (expected a folder, .nii/.nii.gz or .csv)"))
    for case in cases:
        if case["label"] is None:
            key = case.pop("_study_uid", None)
            label = labels.get(case["case_id"], labels.get(key) if key else None)
            case["label"] = None if label is None else float(label)
        case.pop("_study_uid", None)
    ids = [c["case_id"] for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate case ids among the inputs: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})[:5]))
    return cases


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _cases_in_directory(root: Path, min_slices: int, progress: bool) -> list[dict]:
    cases = []
    for nifti in sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES)):
        cases.append(_case(_stem(nifti), str(nifti), nifti))
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        if detect_input_kind(folder) == "slices":
            cases.append(_case(folder.name, str(folder), folder))
    studies, skipped = scan_dicom_tree(root, progress=progress)
    if skipped:
        logger.info("%d files below %s are not DICOM images (junk, DICOMDIR, reports); skipped", len(skipped), root)
    for study_uid, series in sorted(studies.items(), key=lambda kv: study_key(kv[0])):
        chosen, reason = choose_ct_series(series, min_slices=min_slices)
        first = Path((chosen or series[0]).files[0]).parent
        case = _case(study_key(study_uid), chosen.files if chosen else None, first,
                     series=f"{chosen.label()}: {reason}" if chosen else "", error="" if chosen else reason)
        case["_study_uid"] = study_uid
        cases.append(case)
    if not cases:
        image_like = any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.rglob("*"))
        reason = "image files found but no folder holds only slice images" if image_like else "no DICOM images, NIfTI files or slice images found"
        cases.append(_case(root.name, None, root, error=reason))
    return cases
