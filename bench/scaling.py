"""How training and inference costs grow: epoch time vs number of bags and vs bag size K, peak RSS vs cohort size,
inference time vs number of slices (the last via ``bench/infer.py --slices``).

Each measurement runs in its own process (``--one``), so peak RSS is that of one cohort and no cache carries over:

* epochs: one epoch of ``n`` bags (batch 1, setting D's step: MIL + absolute SSL, Adam) through ctmil's trainer,
  after one untimed warm-up epoch; the seconds per epoch and per patch-step;
* RSS: the peak resident set after loading a cohort of ``n`` bags of 217 patches and running 3 steps.

``--patch-dtype`` (float32 by default; float16 as ``ctmil preprocess`` stores bags) is the dtype of the bags'
patches in memory; the step casts them to float32 before the network.

``--scale`` multiplies the bag counts (default 1: 100, 200, 400 bags; the paper-size fold has 206), so a
loaded machine can show the trend in less time. Prints Markdown tables with the ratio to the smallest row.

Usage::

    .venv/bin/python bench/scaling.py [--scale 0.1] [--ks 217 500 1000] [--bags 100 200 400] [--patch-dtype float16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one(kind: str, n_bags: int, k: int, patch_dtype: str = "float32") -> dict:
    import torch

    from bench.fold import peak_rss_mb, synthetic_bags
    from ctmil.data.epochs import EpochBags
    from ctmil.networks import MILNet
    from ctmil.train.engines import create_trainer
    from ctmil.train.losses import MILSSLLoss

    torch.manual_seed(0)
    rss0 = peak_rss_mb()
    data = synthetic_bags(n_bags, k, dtype=getattr(torch, patch_dtype)).cache_all()
    net = MILNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
    loader = EpochBags(data, batch_size=1, seed=0)
    if kind == "rss":
        from ctmil.train.steps import make_train_step

        step = make_train_step(net, opt, MILSSLLoss(mu=0.3, ssl="absolute"))
        for j, batch in enumerate(loader):
            step(None, batch)
            if j == 2:
                break
        return {"rss_mb": peak_rss_mb(), "rss_start_mb": rss0}
    trainer = create_trainer(net, opt, MILSSLLoss(mu=0.3, ssl="absolute"), loader, max_epochs=2)
    marks = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: marks.append(time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: marks.append(time.perf_counter()))
    trainer.run()
    return {"epoch_s": marks[3] - marks[2], "load": os.getloadavg()[0]}


def _run(kind: str, n: int, k: int, patch_dtype: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, str(n), str(k), patch_dtype], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--bags", type=int, nargs="*", default=[100, 200, 400])
    parser.add_argument("--ks", type=int, nargs="*", default=[217, 500, 1000])
    parser.add_argument("--k-bags", type=int, default=10, help="bags per epoch in the K table (times --scale)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["bags", "k", "rss"])
    parser.add_argument("--patch-dtype", default="float32", choices=["float32", "float16"], help="dtype of the bags' patches")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.one[3])))
        return
    counts = [max(1, round(n * args.scale)) for n in args.bags]
    print(f"1-min load average at start {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; bag counts scaled by {args.scale}; "
          f"{args.patch_dtype} patches\n")
    nbytes = {"float32": 4, "float16": 2}[args.patch_dtype]  # bytes per patch value in memory
    if "bags" not in args.skip:
        print("| bags (K = 217) | epoch s | ms per patch-step | × smallest | load |\n|---:|---:|---:|---:|---:|")
        base = None
        for n in counts:
            r = _run("epoch", n, 217, args.patch_dtype)
            base = base or r["epoch_s"]
            print(f"| {n} | {r['epoch_s']:.1f} | {1e3 * r['epoch_s'] / (n * 217):.2f} | "
                  f"{r['epoch_s'] / base:.2f} (bags × {n / counts[0]:.1f}) | {r['load']:.1f} |", flush=True)
    if "k" not in args.skip:
        n = max(1, round(args.k_bags * args.scale))
        print(f"\n| K ({n} bags) | epoch s | ms per patch-step | × smallest | load |\n|---:|---:|---:|---:|---:|")
        base = None
        for k in args.ks:
            r = _run("epoch", n, k, args.patch_dtype)
            base = base or r["epoch_s"]
            print(f"| {k} | {r['epoch_s']:.1f} | {1e3 * r['epoch_s'] / (n * k):.2f} | {r['epoch_s'] / base:.2f} "
                  f"(K × {k / args.ks[0]:.1f}) | {r['load']:.1f} |", flush=True)
    if "rss" not in args.skip:
        print("\n| cohort (bags of 217) | peak RSS MiB | MiB per bag above the 1st row | in-memory patches MiB |\n|---:|---:|---:|---:|")
        first = None
        for n in counts:
            r = _run("rss", n, 217, args.patch_dtype)
            first = first or (n, r["rss_mb"])
            per = (r["rss_mb"] - first[1]) / (n - first[0]) if n != first[0] else float("nan")
            print(f"| {n} | {r['rss_mb']:.0f} | {per:.2f} | {n * 217 * 3600 * nbytes / 2**20:.0f} |", flush=True)


if __name__ == "__main__":
    main()
