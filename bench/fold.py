"""Wall time of one paper-size training fold, and the projected time of the paper's protocol.

One fold as the paper trains it: 206 training bags of 217 patches (synthetic, seeded; a quarter positive),
batch 1, 50 epochs, setting D (MIL + absolute-location SSL + virtual bags from epoch 26), through ctmil's real
trainer (:func:`ctmil.train.engines.create_trainer`, :class:`~ctmil.train.handlers.VirtualBagHandler`,
:class:`~ctmil.data.epochs.EpochBags`). With ``--device cuda`` the training bags stay on the GPU for the whole
run (``EpochBags(device=...)``) and batches are copied with ``non_blocking``; ``--amp`` turns on mixed precision.

Prints the fold's wall time, the mean epoch time before and after virtual bags start, the peak RSS, and the
projection for the paper's protocol: 4 settings × 10 folds × 5 repeats = 200 folds at this fold's time
(settings A-C do no more work per step than D, so this is an upper estimate). ``--epochs`` / ``--bags`` /
``--k`` shrink it (the projection then scales the measured epoch time to 50 epochs of 206 bags of 217).

Usage::

    .venv/bin/python bench/fold.py                                    # the paper-size fold (long on a CPU)
    .venv/bin/python bench/fold.py --epochs 2 --bags 20 --device cpu  # a shrunken run
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Events

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctmil.bundle import virtual_slots  # noqa: E402
from ctmil.data.bags import BagDataset  # noqa: E402
from ctmil.data.epochs import EpochBags  # noqa: E402
from ctmil.networks import MILNet  # noqa: E402
from ctmil.train.engines import create_trainer  # noqa: E402
from ctmil.train.handlers import VirtualBagHandler  # noqa: E402
from ctmil.train.losses import MILSSLLoss  # noqa: E402

PAPER = {"bags": 206, "k": 217, "epochs": 50, "settings": 4, "folds": 10, "repeats": 5}


def synthetic_bags(n_bags: int, k: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> BagDataset:
    """``n_bags`` bags of ``k`` patches (complete 12-patch slices where ``k`` allows), every fourth positive,
    patches stored as ``dtype`` (float16 as preprocessing stores them by default)."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        bags.append({"patches": torch.rand(k, 1, 60, 60, generator=g).to(dtype), "position": torch.arange(k) % 12,
                     "slice_index": torch.arange(k) // 12, "label": torch.tensor(float(i % 4 == 0)),
                     "case_id": f"bag{i:04d}"})
    return BagDataset(bags)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fold(n_bags: int, k: int, epochs: int, device: torch.device, amp: bool = False, start_epoch: int = 26,
             seed: int = 0) -> dict:
    """Train one fold; ``{"wall_s", "epoch_s" (list), "n_virtual" (virtual bags trained per epoch), "rss_mb",
    "patch_steps" (per epoch)}``."""
    torch.manual_seed(seed)
    data = synthetic_bags(n_bags, k, seed).cache_all()
    network = MILNet().to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=5e-4)
    loader = EpochBags(data, batch_size=1, virtual_slots=virtual_slots(data), seed=seed,
                       device=device if device.type != "cpu" else None)
    handler = VirtualBagHandler(data, sink=loader.set_virtual, start_epoch=min(start_epoch, epochs), seed=seed)
    trainer = create_trainer(network, optimizer, MILSSLLoss(mu=0.3, ssl="absolute"), loader, max_epochs=epochs,
                             device=device, train_handlers=[handler], amp=amp, non_blocking=device.type == "cuda")
    epoch_s, n_virtual, marks = [], [], {}

    def started(engine):
        marks["t"] = time.perf_counter()
        n_virtual.append(loader.n_virtual)  # the virtual bags this epoch trains on

    def done(engine):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_s.append(time.perf_counter() - marks["t"])

    trainer.add_event_handler(Events.EPOCH_STARTED, started)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, done)
    t0 = time.perf_counter()
    trainer.run()
    n_key_reg = handler.n_key + handler.n_regular  # instances of one virtual bag
    steps = [n_bags * k + v * n_key_reg for v in n_virtual]
    return {"wall_s": time.perf_counter() - t0, "epoch_s": epoch_s, "n_virtual": n_virtual, "rss_mb": peak_rss_mb(),
            "patch_steps": steps, "virtual_size": n_key_reg}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h ({seconds / 86400:.2f} days)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=PAPER["bags"])
    parser.add_argument("--k", type=int, default=PAPER["k"], help="patches per bag")
    parser.add_argument("--epochs", type=int, default=PAPER["epochs"])
    parser.add_argument("--start-epoch", type=int, default=26, help="first epoch whose pools make virtual bags")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 + GradScaler on CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    load0 = os.getloadavg()[0]
    r = run_fold(args.bags, args.k, args.epochs, device, args.amp, args.start_epoch)
    ep = r["epoch_s"]
    with_virtual = [t for t, v in zip(ep[1:], r["n_virtual"][1:]) if v]  # epochs that trained virtual bags
    plain = [t for t, v in zip(ep[1:], r["n_virtual"][1:]) if not v] or ep[:1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (os.uname().machine + " CPU")
    print(f"device: {device} ({name}), {torch.get_num_threads()} threads, torch {torch.__version__}, amp {args.amp}")
    print(f"1-min load average: {load0:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print(f"fold: {args.bags} bags of {args.k} patches, {args.epochs} epochs, setting D "
          f"(abs. SSL + virtual bags from epoch {min(args.start_epoch, args.epochs)})")
    print(f"wall time: {r['wall_s']:.1f} s; epoch (first excluded) without virtual bags {sum(plain) / len(plain):.2f} s, "
          f"with virtual bags {sum(with_virtual) / len(with_virtual):.2f} s" if with_virtual else
          f"wall time: {r['wall_s']:.1f} s; epoch (first excluded) {sum(plain) / len(plain):.2f} s")
    print(f"peak RSS: {r['rss_mb']:.0f} MiB")
    runs = PAPER["settings"] * PAPER["folds"] * PAPER["repeats"]
    paper_size = (args.bags, args.k, args.epochs) == (PAPER["bags"], PAPER["k"], PAPER["epochs"])
    if paper_size:
        fold_s = r["wall_s"]
    else:  # time per patch-step (epochs after the first) times the paper fold's patch-steps (virtual bags included)
        first = 1 if len(ep) > 1 else 0
        per_patch = sum(ep[first:]) / sum(r["patch_steps"][first:])
        n_virtual = virtual_slots(synthetic_bags(PAPER["bags"], 1))  # 102 for a quarter positive
        paper_steps = PAPER["bags"] * PAPER["k"] * PAPER["epochs"] + (PAPER["epochs"] - 26) * n_virtual * PAPER["k"]
        fold_s = per_patch * paper_steps
        print(f"projected paper-size fold (206 × 217 patches, 50 epochs, from {per_patch * 1e3:.2f} ms per patch-step "
              f"incl. the epoch's overhead): {fold_s:.0f} s")
    print(f"projected paper protocol ({PAPER['settings']} settings × {PAPER['folds']} folds × {PAPER['repeats']} "
          f"repeats = {runs} folds): {_hours(fold_s * runs)}")


if __name__ == "__main__":
    main()
