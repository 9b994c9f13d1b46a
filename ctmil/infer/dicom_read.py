"""Reading back the SR that :mod:`ctmil.infer.dicom_results` writes: its values (:func:`read_sr_result`, what a PACS
user or a test compares with ``predictions.csv``) and its content tree as text (:func:`sr_content_tree`, shown in
docs/pacs.md)."""

from __future__ import annotations

import os

from ctmil.infer.dicom_results import CODES
from ctmil.keys import Columns

__all__ = ["read_sr_result", "sr_content_tree"]


def read_sr_result(path: "str | os.PathLike[str]") -> dict:
    """What an SR written here says: ``{"probability", "threshold", "prediction", "model_sha256", "study_uid"}``."""
    import highdicom as hd

    sr = hd.sr.srread(str(path))
    group = sr.content.get_image_measurement_groups()[0]
    value = {m.name: m.value for m in group.get_measurements()}
    severity = group.get_qualitative_evaluations(name=CODES["severity"])[0].value
    params = _texts(sr, "111002")  # DCM "Algorithm Parameters"
    sha = next((p.split()[-1] for p in params if p.startswith("model sha256 ")), "")
    return {Columns.PROBABILITY: float(value[CODES[Columns.PROBABILITY]]), Columns.THRESHOLD: float(value[CODES[Columns.THRESHOLD]]),
            Columns.PREDICTION: int(severity == CODES["severe"]), "model_sha256": sha, "study_uid": str(sr.StudyInstanceUID)}


def _texts(dataset, code_value: str) -> list[str]:
    """The TEXT values of every content item named ``code_value`` anywhere in an SR's content tree."""
    found = []
    for item in getattr(dataset, "ContentSequence", []):
        name = getattr(item, "ConceptNameCodeSequence", None)
        if item.get("ValueType") == "TEXT" and name and name[0].CodeValue == code_value:
            found.append(str(item.TextValue))
        found += _texts(item, code_value)
    return found


def sr_content_tree(path: "str | os.PathLike[str]") -> str:
    """An SR's content tree as indented text, one content item a line: ``VALUE TYPE  concept name = value`` (a run of
    identical lines, such as the source images, as one line with ``(× n)``)."""
    import pydicom

    sr = pydicom.dcmread(str(path))
    lines = [f"CONTAINER  {sr.ConceptNameCodeSequence[0].CodeMeaning}"]

    def value(item) -> str:
        kind = item.ValueType
        if kind == "CODE":
            code = item.ConceptCodeSequence[0]
            return f" = {code.CodeMeaning} ({code.CodingSchemeDesignator} {code.CodeValue})"
        if kind == "NUM":
            measured = item.MeasuredValueSequence[0]
            return f" = {measured.NumericValue} [{measured.MeasurementUnitsCodeSequence[0].CodeMeaning}]"
        if kind in ("TEXT", "UIDREF", "DATETIME", "DATE", "TIME", "PNAME"):
            keyword = {"TEXT": "TextValue", "UIDREF": "UID", "DATETIME": "DateTime", "DATE": "Date", "TIME": "Time",
                       "PNAME": "PersonName"}[kind]
            return f" = {item.get(keyword, '')}"
        if kind == "IMAGE":
            return f" = {item.ReferencedSOPSequence[0].ReferencedSOPClassUID.name}"
        return ""

    def walk(dataset, depth: int) -> None:
        for item in getattr(dataset, "ContentSequence", []):
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            lines.append(f"{'  ' * depth}{item.ValueType:<10} {name}{value(item)}")
            walk(item, depth + 1)

    walk(sr, 1)
    runs: list[list] = []
    for line in lines:
        if runs and runs[-1][0] == line:
            runs[-1][1] += 1
        else:
            runs.append([line, 1])
    return "\n".join(line if n == 1 else f"{line}  (× {n})" for line, n in runs)
