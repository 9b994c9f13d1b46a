"""Bags as inputs of the infer workflow: a bag datalist (``case_id, bag, label``, as ``ctmil preprocess`` writes)
becomes cases whose ``image`` is the bag file, and :class:`~ctmil.infer.batch.CaseDataset` reads such a case with
:func:`load_bag_case` instead of preprocessing it. ``ctmil evaluate`` and the bundle's ``evaluate.json`` run the one
evaluation workflow on either kind of input this way (issue 20).

A bag holds no CT, so its case gets no overlays and no DICOM results; its attention map is painted from the bag's
recorded geometry as for any case.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ctmil.data.bags import load_bag
from ctmil.io.discovery import discover_cases, parse_label, read_table
from ctmil.io.paths import shown_path
from ctmil.keys import Columns

__all__ = ["BAG_SUFFIXES", "cases_or_bags", "is_bag_case", "is_bag_datalist", "load_bag_case"]

BAG_SUFFIXES = (".pt", ".pth")


def is_bag_datalist(path: "str | os.PathLike") -> bool:
    """A CSV with a ``bag`` column."""
    return str(path).lower().endswith(".csv") and Path(path).is_file() and "bag" in read_table(path).columns


def is_bag_case(case: Mapping[str, Any]) -> bool:
    return str(case.get("image") or "").lower().endswith(BAG_SUFFIXES)


def _bag_cases(path: Path, labels: Mapping[str, float], keep_paths: bool) -> list[dict]:
    table = read_table(path)
    if Columns.CASE_ID not in table.columns:
        raise ValueError(f"{path}: a bag datalist needs case_id and bag columns (and label, or labels)")
    if table[Columns.CASE_ID].duplicated().any():
        raise ValueError(f"{path}: duplicate case ids: {', '.join(sorted(table.loc[table[Columns.CASE_ID].duplicated(), Columns.CASE_ID])[:5])}")
    cases = []
    for row in table.to_dict("records"):
        case_id = str(row[Columns.CASE_ID])
        bag = Path(str(row["bag"]))
        bag = bag if bag.is_absolute() else path.resolve().parent / bag
        error = "" if bag.is_file() else f"bag not found: {shown_path(bag, path.parent, keep_paths)}"
        try:
            label = parse_label(row.get(Columns.LABEL))
        except ValueError as err:
            label, error = None, error or str(err)
        label = labels.get(case_id) if label is None else label
        cases.append({Columns.CASE_ID: case_id, "image": str(bag) if not error else None, Columns.LABEL: label,
                      "patient": str(row.get("patient") or case_id), "source": shown_path(bag, path.parent, keep_paths),
                      "series": "", "error": error, "warning": ""})  # fmt: skip
    return cases


def cases_or_bags(inputs: "str | os.PathLike | Sequence[str | os.PathLike]", labels: Mapping[str, float] | None = None,
                  keep_paths: bool = False, **discover: Any) -> list[dict]:  # fmt: skip
    """The cases of ``inputs``: those of a bag datalist (given alone), else :func:`~ctmil.io.discovery.discover_cases`
    of CT inputs with the other keyword arguments. ``labels`` fill the bags' missing labels (as discovery does)."""
    sources = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    bags = [Path(p) for p in sources if is_bag_datalist(p)]
    if not bags:
        return discover_cases(sources, labels=dict(labels or {}), keep_paths=keep_paths, **discover)
    if len(sources) > 1:
        raise ValueError(f"a bag datalist ({bags[0].name}) is read on its own, not with other inputs.")
    return _bag_cases(bags[0], dict(labels or {}), keep_paths)


def load_bag_case(case: Mapping[str, Any]) -> tuple[dict, float, float]:
    """``(bag, read seconds, 0)`` of a bag case, its ``case_id`` and ``label`` the case's (as preprocessing gives)."""
    t0 = time.perf_counter()
    bag = load_bag(case["image"])
    bag[Columns.CASE_ID] = case[Columns.CASE_ID]
    label = case.get(Columns.LABEL)
    bag[Columns.LABEL] = float("nan") if label is None or label != label else float(label)
    return bag, time.perf_counter() - t0, 0.0
