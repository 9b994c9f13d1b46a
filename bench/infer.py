"""Per-study inference time of ``ctmil infer`` (``run_inference``), split into load / preprocess / predict / write.

Every run is a real ``run_inference`` call on one study (discovery included) with an untrained ``MILNet``
(weights do not change the cost); the per-case timings are the ``t_*`` columns it writes to predictions.csv.
Rows: the real thorax CT in ../shared/data/thorax_ct_dicom (141 slices, 512²; skipped when absent), a
141-slice 512² phantom DICOM series and a 48-slice 128² phantom NIfTI. Median of ``--runs`` runs after a
warm-up run. Prints a Markdown table.

Usage::

    .venv/bin/python bench/infer.py [--runs 5] [--no-overlays] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ctmil.networks import MILNet
from ctmil.infer.batch import run_inference
from ctmil.infer.model_io import load_model

THORAX = Path(__file__).resolve().parents[2] / "shared" / "data" / "thorax_ct_dicom"
PHASES = ("t_load", "t_preprocess", "t_predict", "t_write")


def _inputs(tmp: Path, quick: bool) -> list[tuple[str, Path]]:
    from ctmil.synthetic.dicom_writer import write_dicom_series
    from ctmil.synthetic.phantoms import make_phantom, write_nifti

    rows = []
    if THORAX.exists():
        rows.append(("thorax_ct_dicom (real, DICOM)", THORAX))
    if not quick:
        vol, _, info = make_phantom(0, shape=(141, 512, 512), spacing=(2.0, 0.98, 0.98))
        write_dicom_series(vol, (2.0, 0.98, 0.98), tmp / "phantom_dicom", rng=0, patient_id="BENCH", origin=info["origin_lps"])
        rows.append(("phantom 141×512² (DICOM)", tmp / "phantom_dicom"))
    vol, _, info = make_phantom(1, shape=(48, 128, 128), spacing=(5.0, 2.7, 2.7))
    rows.append(("phantom 48×128² (NIfTI)", write_nifti(vol, (5.0, 2.7, 2.7), tmp / "phantom.nii.gz", origin=info["origin_lps"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-overlays", action="store_true", help="time without the PNG overlays")
    parser.add_argument("--top-slices", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="skip the 141-slice phantom (generating it takes a while)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(MILNet().state_dict(), tmp / "model.pt")
        model = load_model(tmp / "model.pt")
        options = dict(save_overlays=not args.no_overlays, top_slices=args.top_slices, progress=False)
        table = []
        for name, source in _inputs(tmp, args.quick):
            run_inference([source], model, tmp / "warm", **options)  # warm-up: imports, oneDNN kernels, page cache
            phases: dict[str, list[float]] = {p: [] for p in (*PHASES, "discover", "total", "cpu")}
            row = None
            for r in range(args.runs):
                t0, c0 = time.perf_counter(), time.process_time()
                predictions, n_failed = run_inference([source], model, tmp / f"run{r}", **options)
                total, cpu = time.perf_counter() - t0, time.process_time() - c0
                if n_failed:
                    raise SystemExit(f"{name}: {predictions['error'].iloc[0]}")
                row = predictions.iloc[0]
                for p in PHASES:
                    phases[p].append(float(row[p]))
                phases["total"].append(total)
                phases["cpu"].append(cpu)
                phases["discover"].append(total - sum(float(row[p]) for p in PHASES))
            med = {p: statistics.median(v) for p, v in phases.items()}
            table.append((name, f"{row['n_slices_kept']}/{row['n_slices']}", int(row["K"]), med))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    writes = "NIfTI" + ("" if args.no_overlays else f" + {args.top_slices} PNG")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
          f"threads, load average {load:.1f}; torch {torch.__version__}; median of {args.runs} runs\n")
    print(f"| study | slices kept/total | K | discover | load | preprocess | predict | write ({writes}) | total | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, slices, k, m in table:
        print(f"| {name} | {slices} | {k} | {m['discover']:.2f} | {m['t_load']:.2f} | {m['t_preprocess']:.2f} | "
              f"{m['t_predict']:.2f} | {m['t_write']:.2f} | **{m['total']:.2f}** | {m['cpu']:.2f} |")
    print("\nWall-clock seconds per study (CPU s: process CPU time, all threads). Target: ≤ 2 s per 141-slice CT on a 2-core CPU.")


if __name__ == "__main__":
    main()
