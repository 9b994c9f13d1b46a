"""Measure what the chest-wall growth of the lung mask does to the crop (docs/preprocessing.md "Consolidated lung").

    python docs/make_crop_measures.py            # phantoms only
    python docs/make_crop_measures.py --sample   # + the Per-COVID-19 sample in ../shared/data (about a minute)

Prints two Markdown tables, with the mask before the growth (``chest_wall=False``) and with it (the default):

1. phantoms with dependent consolidation (the back ``fraction`` of each lung consolidated): the share of the kept
   slices' lesion voxels inside the lung boxes, on the HU path and on the slice-image path (the same phantom in
   ctmil's lung window), minimum and mean over 8 seeds;
2. on the Per-COVID-19 sample: the crop box's height and width as a share of the body's (``box_height_share``,
   ``box_width_share`` of the manifest) per class, and the AUC of each for severe vs non-severe with its DeLong CI,
   as the CV report's shortcut check computes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.transforms.test_consolidated_crop import consolidated, crop_decision, lesion_inside, windowed  # noqa: E402


def phantom_table(seeds=range(8), fractions=(0.5, 0.6)) -> str:
    rows = ["| consolidated back fraction | path | lesion inside the boxes, before: min / mean | with the growth: min / mean |",
            "|---|---|---|---|"]
    for fraction in fractions:
        shares = {(p, cw): [] for p in ("hu", "windowed") for cw in (False, True)}
        for seed in seeds:
            vol, lesion, info = consolidated(seed, fraction)
            for path in ("hu", "windowed"):
                image = vol if path == "hu" else windowed(vol)
                for cw in (False, True):
                    shares[path, cw].append(lesion_inside(lesion, *crop_decision(image, info["spacing"], path, cw)))
        for path in ("hu", "windowed"):
            b, a = np.array(shares[path, False]), np.array(shares[path, True])
            rows.append(f"| {fraction:.1f} | {'HU (DICOM, NIfTI)' if path == 'hu' else 'slice images'} | "
                        f"{b.min():.3f} / {b.mean():.3f} | {a.min():.3f} / {a.mean():.3f} |")
    return "\n".join(rows)


def sample_table(sample: Path) -> str:
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.data.qc import CROP_MEASURES
    from ctmil.evaluate.shortcut import shortcut_check
    from ctmil.io.discovery import discover_cases

    labels = pd.read_csv(sample / "labels.csv", dtype={"subject_id": str})
    rows = ["| mask | measure | non-severe mean | severe mean | AUC for severe [95 % DeLong CI] |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        table = pd.DataFrame({"case_id": labels["subject_id"], "image": [str(sample / "subjects" / s) for s in labels["subject_id"]],
                              "label": labels["severe"].astype(int)})  # fmt: skip
        table.to_csv(Path(tmp) / "datalist.csv", index=False)
        for cw in (False, True):
            cases = discover_cases([str(Path(tmp) / "datalist.csv")])
            m = preprocess_cases(cases, Path(tmp) / f"cw{int(cw)}", settings={"chest_wall": cw}, progress=False, montages=False)
            m["label"] = m["label"].astype(float).astype(int)
            check = shortcut_check(m[["case_id", "label", *CROP_MEASURES]]).set_index("measure")
            for measure in CROP_MEASURES:
                mean = m.groupby("label")[measure].mean()
                c = check.loc[measure]
                rows.append(f"| {'with the growth' if cw else 'before'} | `{measure}` | {mean[0]:.3f} | {mean[1]:.3f} | "
                            f"{c.auc:.3f} [{c.auc_lower:.3f}, {c.auc_upper:.3f}] |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", action="store_true", help="also measure the Per-COVID-19 sample")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "percovid_sample"))
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    print(phantom_table())
    if args.sample:
        print()
        print(sample_table(Path(args.data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
