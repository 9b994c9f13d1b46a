"""Per-study inference time of ``ctmil infer`` (``run_inference``), split into load / preprocess / predict / write.

Every run is a real ``run_inference`` call on one study (discovery included) with an untrained ``MILNet``
(weights do not change the cost); the per-case timings are the ``t_*`` columns it writes to predictions.csv.
Rows: the real thorax CT in ../shared/data/thorax_ct_dicom (141 slices, 512²; skipped when absent), a
141-slice 512² phantom DICOM series and a 48-slice 128² phantom NIfTI. Median of ``--runs`` runs after a
warm-up run. Prints a Markdown table.

``--batch N`` also times one ``run_inference`` over N phantom studies (48×128² NIfTI, different seeds) with and
without the background prefetch of the next case, and prints studies per hour. ``--processes 1 2 4`` then runs the
same N studies as that many ``ctmil infer --shard I/P`` processes at once (each with cores / P torch threads, as a
SLURM array or ``xargs -P`` would), merged by ``ctmil merge-predictions``, and prints studies per hour in all and per
core used. ``--real-batch N`` runs N NIfTI copies of the real thorax series the same way (issue 21's real-data row).
``--slices 50 141 400`` times
phantom DICOM series of those slice counts (512², 2 mm) for the scaling table.

Usage::

    .venv/bin/python bench/infer.py [--runs 5] [--no-overlays] [--threads N] [--quick] [--batch 20] [--slices ...]
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
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.model_io import load_model

THORAX = Path(__file__).resolve().parents[2] / "shared" / "data" / "thorax_ct_dicom"
PHASES = ("t_load_s", "t_preprocess_s", "t_predict_s", "t_write_s")


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


def _batch_rate(tmp: Path, model, n: int, options: dict) -> list[str]:
    """Studies per hour of one run_inference over ``n`` phantom studies, with and without prefetch."""
    from ctmil.synthetic.phantoms import make_phantom, write_nifti

    folder = tmp / "batch_in"
    folder.mkdir()
    for i in range(n):
        vol, _, info = make_phantom(100 + i, shape=(48, 128, 128), spacing=(5.0, 2.7, 2.7))
        write_nifti(vol, (5.0, 2.7, 2.7), folder / f"study{i:02d}.nii.gz", origin=info["origin_lps"])
    lines = []
    for trial, prefetch in enumerate((0, 1, 0, 1)):  # alternated, so load changes hit both
        t0 = time.perf_counter()  # a fresh --out each time: into the same one, a rerun would resume and skip every study
        predictions, n_failed = run_inference([folder], model, tmp / f"batch_out{trial}", prefetch=prefetch, **options)
        wall = time.perf_counter() - t0
        lines.append(f"| {n} phantom studies 48×128² NIfTI | {prefetch} | {wall:.1f} | {wall / n:.2f} | {3600 * n / wall:,.0f} "
                     f"| {os.getloadavg()[0]:.1f} |" + (f" {n_failed} failed" if n_failed else ""))
    return lines


def _real_batch(tmp: Path, n: int) -> Path:
    """A folder of ``n`` NIfTI copies of the real thorax series (HU, its own spacing), different file names."""
    import shutil

    from ctmil.io.readers import load_dicom_case
    from ctmil.synthetic.phantoms import write_nifti

    folder = tmp / "real_in"
    folder.mkdir()
    volume, _, meta = load_dicom_case(THORAX)
    first = write_nifti(volume, meta["spacing"], folder / "thorax00.nii.gz")
    for i in range(1, n):
        shutil.copyfile(first, folder / f"thorax{i:02d}.nii.gz")
    return folder


def _process_rates(tmp: Path, model_path: Path, n: int, counts: list[int], folder: Path | None = None, tag: str = "") -> list[str]:
    """Studies per hour of the batch folder (``folder``, default the phantom batch) run as P parallel ``ctmil infer
    --shard`` processes, for each P."""
    import subprocess
    import sys

    cores = os.cpu_count() or 1
    lines = []
    for p in counts:
        out = tmp / f"shards{tag}{p}"
        threads = max(1, cores // p)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        argv = [sys.executable, "-m", "ctmil.cli", "infer", str(folder or tmp / "batch_in"), "--model", str(model_path), "--out", str(out),
                "-q", "--device", "cpu", "--no-overlays", "--no-maps"]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([*argv, "--shard", f"{i}/{p}"], env=env) for i in range(p)]
        codes = [proc.wait() for proc in procs]
        merged = subprocess.run([sys.executable, "-m", "ctmil.cli", "merge-predictions", str(out), "-q"])
        wall = time.perf_counter() - t0
        used = min(cores, p * threads)
        bad = "" if not any(codes) and merged.returncode == 0 else f" exit codes {codes} / merge {merged.returncode}"
        lines.append(f"| {p} | {threads} | {wall:.1f} | {3600 * n / wall:,.0f} | {3600 * n / wall / used:,.0f} | "
                     f"{os.getloadavg()[0]:.1f} |{bad}")
    return lines


def _slice_rows(tmp: Path, counts: list[int]) -> list[tuple[str, Path]]:
    from ctmil.synthetic.dicom_writer import write_dicom_series
    from ctmil.synthetic.phantoms import make_phantom

    rows = []
    for n in counts:
        vol, _, info = make_phantom(0, shape=(n, 512, 512), spacing=(2.0, 0.98, 0.98))
        write_dicom_series(vol, (2.0, 0.98, 0.98), tmp / f"slices{n}", rng=0, patient_id="BENCH", origin=info["origin_lps"])
        rows.append((f"phantom {n}×512² (DICOM)", tmp / f"slices{n}"))
    return rows


def forward_rate(model, k: int, seconds: float, peak: float) -> str:
    """FLOPs of the forward of one bag of ``k`` patches (FlopCounterMode), its rate at ``seconds``, its share of ``peak``."""
    from torch.utils.flop_counter import FlopCounterMode

    patches = torch.rand(k, 1, 60, 60)
    with FlopCounterMode(display=False) as counter:
        model.predict(patches)
    gflop = counter.get_total_flops() / 1e9
    return f"{gflop:.1f} GFLOP in {seconds:.3f} s = {gflop / seconds:.1f} GFLOP/s, {100 * gflop / seconds / peak:.0f}% of the matmul rate"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-overlays", action="store_true", help="time without the PNG overlays")
    parser.add_argument("--top-slices", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="skip the 141-slice phantom (generating it takes a while)")
    parser.add_argument("--batch", type=int, default=0, help="also time a batch of this many phantom studies")
    parser.add_argument("--slices", type=int, nargs="*", default=None, help="phantom DICOM series of these slice counts only")
    parser.add_argument("--no-real", action="store_true", help="skip the real thorax series")
    parser.add_argument("--processes", type=int, nargs="*", default=[],
                        help="with --batch: also run the batch as this many parallel shard processes (e.g. 1 2 4)")
    parser.add_argument("--real-batch", type=int, default=0,
                        help="with --processes: also run this many copies of the real thorax series (NIfTI) as shard processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(MILNet().state_dict(), tmp / "model.pt")
        model = load_model(tmp / "model.pt")
        options = dict(options=InferenceOptions(save_overlays=not args.no_overlays, top_slices=args.top_slices), progress=False)
        table = []
        inputs = _slice_rows(tmp, args.slices) if args.slices else _inputs(tmp, args.quick)
        if args.no_real:
            inputs = [(n, src) for n, src in inputs if src != THORAX]
        loads = []
        for name, source in inputs:
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
                loads.append(os.getloadavg()[0])
            med = {p: statistics.median(v) for p, v in phases.items()}
            table.append((name, f"{row['n_slices_kept']}/{row['n_slices']}", int(row["K"]), med))
        batch_lines = _batch_rate(tmp, model, args.batch, options) if args.batch else []
        process_lines = _process_rates(tmp, tmp / "model.pt", args.batch, args.processes) if args.batch and args.processes else []
        real_lines = []
        if args.real_batch and args.processes and THORAX.exists() and not args.no_real:
            real = _real_batch(tmp, args.real_batch)
            real_lines = _process_rates(tmp, tmp / "model.pt", args.real_batch, args.processes, folder=real, tag="real")
        from train_step import matmul_gflops  # bench/train_step.py: best of several trials of the median

        peak = matmul_gflops(2048, 10, torch.device("cpu"), trials=3)
        rates = [f"{name}: K = {k}, {forward_rate(model, k, m['t_predict_s'], peak)}" for name, _, k, m in table]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    writes = "NIfTI" + ("" if args.no_overlays else f" + {args.top_slices} PNG")
    span = f"{min(loads):.1f}-{max(loads):.1f} during the runs, " if loads else ""
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
          f"threads, 1-min load average {span}{load:.1f} at the end; torch {torch.__version__}; median of {args.runs} runs\n")
    print(f"| study | slices kept/total | K | discover | load | preprocess | predict | write ({writes}) | total | CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, slices, k, m in table:
        print(f"| {name} | {slices} | {k} | {m['discover']:.2f} | {m['t_load_s']:.2f} | {m['t_preprocess_s']:.2f} | "
              f"{m['t_predict_s']:.2f} | {m['t_write_s']:.2f} | **{m['total']:.2f}** | {m['cpu']:.2f} |")
    print("\nWall-clock seconds per study (CPU s: process CPU time, all threads). Target: ≤ 1.0 s per 141-slice CT.")
    print(f"\nForward (predict) against the fp32 matmul rate of {peak:.1f} GFLOP/s (best of 3 trials):")
    print("\n".join(f"* {r}" for r in rates))
    if batch_lines:
        print("\n| batch | prefetch | wall s | s / study | studies / hour | load at end |\n|---|---:|---:|---:|---:|---:|")
        print("\n".join(batch_lines))
    if process_lines:
        print(f"\n{args.batch} studies as P parallel `ctmil infer --shard I/P` processes + `ctmil merge-predictions` "
              f"({os.cpu_count()} CPUs; per core: over the cores the processes' threads use; maps and overlays off)\n")
        print("| processes | torch threads each | wall s | studies / hour | per core | load at end |\n|---:|---:|---:|---:|---:|---:|")
        print("\n".join(process_lines))
    if real_lines:
        print(f"\n{args.real_batch} copies of the real thorax series (141 × 512², NIfTI) as P parallel `ctmil infer --shard I/P` "
              f"processes + `ctmil merge-predictions` (maps and overlays off)\n")
        print("| processes | torch threads each | wall s | studies / hour | per core | load at end |\n|---:|---:|---:|---:|---:|---:|")
        print("\n".join(real_lines))


if __name__ == "__main__":
    main()
