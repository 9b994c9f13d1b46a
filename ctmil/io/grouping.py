"""Which study and series a DICOM file belongs to, also when an anonymiser blanked the UIDs, and what to say
about the files that were rejected.

With StudyInstanceUID and SeriesInstanceUID present they decide. When either is blank (common in research
exports), files are grouped by what a series shares: the folder, FrameOfReferenceUID, orientation, pixel
geometry (rows, columns, pixel spacing, slice thickness) and the series number and description when kept.
The study is the FrameOfReferenceUID (one scan) or, without one, the folder. Position consistency (no
duplicate positions, even spacing) is then checked per series by :func:`ctmil.io.dicom_series.series_problem`,
so two series that the keys cannot tell apart fail with "duplicate slice positions" instead of being mixed.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

INFERRED_WARNING = "StudyInstanceUID/SeriesInstanceUID blank: series grouped by folder, frame of reference and image geometry"


def _rounded(values, digits: int) -> tuple:
    try:
        return tuple(round(float(v), digits) for v in values or ())
    except (TypeError, ValueError, OverflowError):
        return ()


def series_key(header, root: str | os.PathLike) -> tuple[str, str, bool]:
    """``(study, series, inferred)`` for one file's header; ``inferred`` when the UIDs were blank."""
    study, series = str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", ""))
    if study and series:
        return study, series, False
    try:
        folder = Path(header.path).parent.relative_to(root).as_posix()
    except ValueError:
        folder = Path(header.path).parent.name
    frame = str(header.get("FrameOfReferenceUID", ""))
    study = study or (f"inferred-frame:{frame}" if frame else f"inferred-folder:{folder}")
    parts = (
        folder, frame, _rounded(header.get("ImageOrientationPatient"), 3), header.get("Rows"), header.get("Columns"),
        _rounded(header.get("PixelSpacing"), 4), _rounded([header.get("SliceThickness") or 0], 3),
        header.get("SeriesNumber"), str(header.get("SeriesDescription", "")), str(header.get("Modality", "")),
        tuple(header.get("ImageType") or ()),
    )
    return study, "inferred:" + repr(parts), True


def case_studies(studies: dict[str, list]) -> dict[str, list]:
    """The studies of a folder named as one case: studies that were only inferred (blank UIDs, so one per
    folder or frame of reference) are taken as one, since the user said the folder is one case."""
    if len(studies) > 1 and all(key.startswith("inferred-") for key in studies):
        return {"inferred-case": [series for group in studies.values() for series in group]}
    return studies


def summarise_skipped(skipped: list[tuple[str, str]], limit: int = 3) -> str:
    """One line on rejected files: how many, and the most common reasons with an example file each."""
    if not skipped:
        return ""
    kinds = [reason.split(" (")[0] for _, reason in skipped]  # details in parentheses vary from file to file
    counts = Counter(kinds)
    example = {}
    for (path, _), kind in zip(skipped, kinds):
        example.setdefault(kind, Path(path).name)
    parts = [f"{n} × {kind} (e.g. {example[kind]})" for kind, n in counts.most_common(limit)]
    rest = len(counts) - limit
    return f"{len(skipped)} files rejected: " + "; ".join(parts) + (f"; {rest} other reasons" if rest > 0 else "")


def nothing_usable(skipped: list[tuple[str, str]]) -> str:
    """The case error when a folder held files but no usable series, or nothing at all."""
    if not skipped:
        return "no DICOM images, NIfTI files or slice images found"
    dicom = sum(not reason.startswith(("not DICOM", "cannot read")) for _, reason in skipped)
    head = f"{dicom} DICOM files found but none usable" if dicom else "no DICOM images found"
    return f"{head}; {summarise_skipped(skipped)}"
