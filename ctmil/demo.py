"""The end-to-end demo: phantom cohort → bags → short cross-validation of settings A and D → report.

All settings are ordinary bundle config: ``train.json`` + ``cv.json`` + ``demo.json`` (its ``demo#phantoms``
section describes the cohort; the rest shortens the protocol). Nothing about the run is fixed in code.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from monai.bundle import ConfigParser

from ctmil.bundle import config_files
from ctmil.evaluate.cv import run_cv
from ctmil.synthetic.phantoms import generate_cohort

logger = logging.getLogger(__name__)
DEMO_FILES = ("train.json", "cv.json", "demo.json")


def run_demo(out_dir: str | os.PathLike, overrides: dict | None = None, progress: bool = True) -> dict:
    """Run the demo into ``out_dir``; returns paths of the report, the model and the wall time in seconds."""
    start = time.perf_counter()
    parser = ConfigParser(ConfigParser.load_config_files(config_files(*DEMO_FILES)))
    parser.update(dict(overrides or {}))
    ph = parser.get_parsed_content("demo#phantoms")
    out = Path(out_dir).resolve()
    logger.info("1/2 generating %d phantom CTs", ph["n"])
    generate_cohort(out / "phantoms", n=ph["n"], seed=ph["seed"], formats=("dicom",), shape=ph["shape"],
                    spacing=ph["spacing"], severe_fraction=ph["severe_fraction"], progress=progress)
    logger.info("2/2 preprocessing and cross-validation")
    run_cv(out / "phantoms" / "labels.csv", out / "cv", files=DEMO_FILES, overrides=dict(overrides or {}), progress=progress)
    elapsed = time.perf_counter() - start
    (out / "cv" / "wall_time_seconds.txt").write_text(f"{elapsed:.1f}\n")
    return {"report": out / "cv" / "report.md", "model": out / "cv" / "model.pt", "roc": out / "cv" / "roc.png", "seconds": elapsed}
