"""The end-to-end demo: phantom cohort → bags → short cross-validation of settings A and D → report.

All settings come from ``bundles/covid19_severity_mil/configs/demo.json`` (phantoms, preprocessing) and the
CV config it names (``cv_demo.json``); nothing about the run is fixed in code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ctmil.io.discovery import read_datalist
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.evaluate.cv import run_cv_from_config
from ctmil.data.preprocess import preprocess_cases

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "bundles" / "covid19_severity_mil" / "configs" / "demo.json"


def run_demo(out_dir: str | os.PathLike, config: str | os.PathLike | None = None, overrides: dict | None = None, progress: bool = True) -> dict:
    """Run the demo into ``out_dir``; returns paths of the report, the model and the wall time in seconds."""
    start = time.perf_counter()
    config_path = Path(config) if config else DEFAULT_CONFIG
    cfg = json.loads(config_path.read_text())
    out = Path(out_dir)
    ph = cfg["phantoms"]
    logger.info("1/3 generating %d phantom CTs", ph["n"])
    generate_cohort(out / "phantoms", n=ph["n"], seed=ph["seed"], formats=("dicom",), shape=ph["shape"],
                    spacing=ph["spacing"], severe_fraction=ph["severe_fraction"], progress=progress)
    logger.info("2/3 preprocessing the DICOM series into bags")
    cases = read_datalist(out / "phantoms" / "labels.csv", min_slices=cfg["preprocess"]["min_slices"])
    manifest = preprocess_cases(cases, out / "bags", settings=cfg["preprocess"], progress=progress)
    failed = manifest[manifest["status"] == "failed"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} phantom case(s) failed preprocessing: {failed['error'].tolist()[:3]}")
    logger.info("3/3 cross-validation (%s)", cfg["cv_config"])
    cv_config = config_path.parent / cfg["cv_config"]
    run_cv_from_config(cv_config, out / "bags" / "datalist.csv", out / "cv", overrides=overrides)
    elapsed = time.perf_counter() - start
    (out / "cv" / "wall_time_seconds.txt").write_text(f"{elapsed:.1f}\n")
    return {"report": out / "cv" / "report.md", "model": out / "cv" / "model.pt", "roc": out / "cv" / "roc.png", "seconds": elapsed}
