"""What a batch-inference run checks about its cases before work, and what lets a rerun resume (issues 21, 25):

* :func:`check_input_intensity`: the cases are of the intensity the model was trained on (HU or lung-window slice
  images, ``model.json``'s ``input``), or the run refuses them;
* :func:`run_key`: what a run's outputs depend on, hashed; :func:`finished_rows`: the cases an earlier run into the
  same folder finished under that key (each has its :data:`CASE_RECORD`), which a rerun skips.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctmil import __version__
from ctmil.infer.model_io import InferenceModel
from ctmil.io.paths import safe_case_name
from ctmil.io.readers import detect_input_kind
from ctmil.transforms.compose import PREPROCESSING_REVISION
from ctmil.keys import Columns

__all__ = ["CASE_RECORD", "INTENSITY_OF_KIND", "check_input_intensity", "finished_rows", "run_key"]

#: The intensity of each input kind (:func:`ctmil.io.readers.detect_input_kind`).
INTENSITY_OF_KIND = {"dicom": "hu", "nifti": "hu", "slices": "windowed"}
_WHAT = {"hu": "Hounsfield units (DICOM, NIfTI)", "windowed": "lung-window slice images"}


def check_input_intensity(cases: list[dict], trained_on: Sequence[str], allow: bool = False) -> list[dict]:
    """``cases``, after refusing those whose intensity the model was not trained on (a one-line ``ValueError`` naming
    the first), or, with ``allow``, adding the mismatch to their ``warning``. A model that recorded nothing
    (``trained_on`` empty) is not checked. The bundle's ``inference.json`` feeds its dataset through it
    (``checked_cases``)."""
    if not trained_on:
        return cases
    for case in cases:
        image = str(case.get("image") or "")
        if not image or image.lower().endswith((".pt", ".pth")):  # a bag: no input to judge
            continue
        intensity = INTENSITY_OF_KIND.get(detect_input_kind(image))
        if intensity is None or intensity in trained_on:
            continue
        text = (f"input is {_WHAT[intensity]} but the model was trained on "
                f"{' and '.join(_WHAT.get(t, t) for t in trained_on)}")
        if not allow:
            raise ValueError(f"{case[Columns.CASE_ID]}: {text}; --allow-input-mismatch predicts it anyway")
        if text not in (case.get("warning") or ""):
            case["warning"] = "; ".join(w for w in (case.get("warning") or "", text) if w)
    return cases


def run_key(loaded: InferenceModel, settings: Mapping[str, Any], overrides: Mapping[str, Any], configs: Sequence[str] = ()) -> str:
    """What a run's outputs depend on, hashed: the model file (path, size, modification time), the preprocessing
    settings and revision, the labels, the threshold, the per-case options, every other override and the extra
    config files' contents. ``""`` for a model held only in memory (no resume)."""
    path = Path(loaded.path) if loaded.path else None
    if path is None or not path.is_file():
        return ""
    stat = path.stat()
    ignored = ("network", "output_dir", "progress", "dataloader", "device", "inputs")  # not what a row is made of
    options = {k: v for k, v in overrides.items() if k not in ignored}  # labels, paths, options, every --set
    payload = {"model": [str(path.resolve()), stat.st_size, stat.st_mtime_ns], "preprocessing": dict(settings),
               "revision": PREPROCESSING_REVISION, "ctmil": __version__, "configs": list(configs), **options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: A finished case's record: ``{"run_key": str, "row": {...}}`` (:func:`finished_rows`).
CASE_RECORD = "prediction.json"


def finished_rows(out_dir: "str | os.PathLike[str]", cases: list[Mapping], run_key: str) -> dict[str, dict]:
    """The rows of ``cases`` that an earlier run into ``out_dir`` finished under the same ``run_key`` (model, settings,
    options), by case id: a resumed run skips them and puts their rows back into ``predictions.csv``."""
    done = {}
    for case in cases:
        path = Path(out_dir) / "cases" / safe_case_name(str(case[Columns.CASE_ID])) / CASE_RECORD
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("run_key") == run_key and (record.get("row") or {}).get(Columns.STATUS) == "ok":
            done[str(case[Columns.CASE_ID])] = dict(record["row"])
    return done
