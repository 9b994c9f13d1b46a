"""Screenshots of the demo's pages for docs/demo.md and docs/reports.md, rendered by headless Chromium.

    .venv/bin/ctmil demo --out out/demo                  # first: the demo itself (make demo)
    .venv/bin/python docs/make_demo_pictures.py out/demo # then: docs/img/demo_report.png, cv_report.png, evaluate_report.png

The pages come from a trained model on phantoms, so the numbers in the pictures are the demo's own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_report_pictures import IMG, screenshot  # noqa: E402

PAGES = {"report.html": "demo_report.png", "cv/report.html": "cv_report.png", "held_out/report.html": "evaluate_report.png"}


def main(argv=None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="the demo's --out folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    IMG.mkdir(exist_ok=True)
    made = [screenshot(args.demo / page, IMG / name, window=(1000, 1400)) for page, name in PAGES.items()]
    for p in filter(None, made):
        logging.info("%s: %d KB", p, p.stat().st_size // 1024)
    return [p for p in made if p is not None]


if __name__ == "__main__":
    main()
