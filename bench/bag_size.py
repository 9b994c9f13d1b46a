"""Bag size K and the HU window: all kept slices vs at most N slices, window on vs off, by ctmil's own CV.

Run: ``nice -n 5 .venv/bin/python bench/bag_size.py [--data phantoms percovid] [--n-phantoms 24] [--epochs 6]
[--folds 3] [--setting A] [--out DIR]``. Prints one Markdown table per data set: setting, K mean (patches per bag),
out-of-fold AUC, accuracy, sensitivity, specificity at 0.5, preprocessing and training seconds.

Protocol: ``ctmil.evaluate.cv.run_cv`` over ``train.json`` + ``cv.json`` with ``max_epochs``, ``cv#n_folds``,
``cv#n_repeats`` 1, one ``cv#settings`` entry, ``cv#final_model`` ``none`` and the row's ``preprocessing_args#...``
overrides; every row preprocesses its own bags (they differ) into its own folder. Data sets:

* ``phantoms``: ``generate_cohort`` NIfTI phantoms (seed 0, 25 % severe) with thin slices, ``(64, 112, 112)`` at
  ``(3.75, 3, 3)`` mm, so that a bag of all kept slices is about twice the paper's K ≈ 217;
* ``percovid``: the 73 Per-COVID-19 patients of ``../shared/data/percovid_sample`` (lung-window PNG slices, label
  ``severe``); the window does not apply to them, so only slice counts are compared.

A 73- or 24-case CV has a wide confidence interval: the table is evidence about cost and about gross loss, not a
ranking of close settings.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from ctmil.bundle import bag_table
from ctmil.evaluate.cv import run_cv
from ctmil.stats.metrics import binary_metrics

PERCOVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "percovid_sample"
PHANTOM_GEOMETRY = {"shape": (64, 112, 112), "spacing": (3.75, 3.0, 3.0)}
#: rows per data set: (name, ``preprocessing`` overrides)
ROWS = {
    "phantoms": [
        ("all slices, window", {"max_slices": None}),
        ("18 slices, window", {"max_slices": 18}),
        ("8 slices, window", {"max_slices": 8}),
        ("all slices, no window", {"max_slices": None, "window_hu": None}),
    ],
    "percovid": [
        ("all slices", {"max_slices": None}),
        ("18 slices", {"max_slices": 18}),
        ("8 slices", {"max_slices": 8}),
    ],
}


def phantom_datalist(folder: Path, n: int) -> Path:
    """``n`` NIfTI phantoms and a CT datalist (``case_id, image, label``) of them."""
    from ctmil.synthetic.phantoms import generate_cohort

    table = generate_cohort(folder, n=n, seed=0, formats=("nifti",), progress=False, **PHANTOM_GEOMETRY)
    rows = pd.DataFrame({"case_id": table["case_id"], "image": [str(folder / p) for p in table["nifti_path"]],
                         "label": table["label"].astype(int)})
    rows.to_csv(folder / "datalist.csv", index=False)
    return folder / "datalist.csv"


def percovid_datalist(folder: Path) -> Path:
    """The Per-COVID-19 sample as a CT datalist: one slice-image folder per patient, ``severe`` as the label."""
    labels = pd.read_csv(PERCOVID / "labels.csv", dtype={"subject_id": str})
    rows = pd.DataFrame({"case_id": labels["subject_id"], "image": [str(PERCOVID / "subjects" / s) for s in labels["subject_id"]],
                         "label": labels["severe"].astype(int)})
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / "datalist.csv", index=False)
    return folder / "datalist.csv"


def run_row(datalist: Path, out: Path, settings: dict, args) -> dict:
    """One CV run; the bags are made first (timed apart), then ``run_cv`` finds them cached."""
    overrides = {"max_epochs": args.epochs, "cv#n_folds": args.folds, "cv#n_repeats": 1, "cv#settings": [args.setting],
                 "cv#final_model": "none", **{f"preprocessing_args#{k}": v for k, v in settings.items()}}
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([str(Path(__file__).resolve().parents[1] / "ctmil" / "configs" / f)
                                                          for f in ("train.json", "cv.json")]))
    parser.update(overrides)
    t0 = time.perf_counter()
    table = bag_table(str(datalist), out / "bags", parser.get_parsed_content("preprocessing_args"))
    t1 = time.perf_counter()
    predictions = run_cv(str(datalist), out, files=("train.json", "cv.json"), overrides=overrides, progress=False, restart=True)
    t2 = time.perf_counter()
    manifest = pd.read_csv(out / "bags" / "manifest.csv")
    ok = manifest[manifest["status"].isin(["ok", "cached"])]
    metrics = binary_metrics(predictions["prob"].to_numpy(), predictions["label"].to_numpy(), 0.5)
    return {"K mean": float(ok["K"].mean()), "slices mean": float(ok["n_slices_kept"].mean()), "cases": len(table),
            "AUC": metrics["auc"], "accuracy": metrics["accuracy"], "sensitivity": metrics["sensitivity"],
            "specificity": metrics["specificity"], "preprocess s": t1 - t0, "train s": t2 - t1}


def print_table(name: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n### {name}\n")
    print("| setting | cases | slices mean | K mean | AUC | accuracy | sensitivity | specificity | preprocess s | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting, r in rows:
        print(f"| {setting} | {r['cases']} | {r['slices mean']:.1f} | {r['K mean']:.0f} | {r['AUC']:.3f} | {r['accuracy']:.3f} | "
              f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['preprocess s']:.0f} | {r['train s']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", choices=sorted(ROWS), default=["phantoms", "percovid"])
    parser.add_argument("--n-phantoms", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--setting", default="A", choices=list("ABCD"))
    parser.add_argument("--rows", nargs="*", default=None, help="only these row names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="ctmil-bag-size-"))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {args.threads} threads, load {os.getloadavg()[0]:.2f} | {args.epochs} epochs, {args.folds}-fold CV x 1, "
          f"setting {args.setting}, threshold 0.5")
    for name in args.data:
        if name == "percovid" and not PERCOVID.exists():
            print(f"\n{PERCOVID} not found: skipped")
            continue
        datalist = phantom_datalist(out / "phantoms", args.n_phantoms) if name == "phantoms" else percovid_datalist(out / "percovid")
        results = []
        for i, (setting, settings) in enumerate(ROWS[name]):
            if args.rows and setting not in args.rows:
                continue
            results.append((setting, run_row(datalist, out / name / f"row{i}", settings, args)))
        print_table(f"{name} ({len(pd.read_csv(datalist))} cases)", results)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
