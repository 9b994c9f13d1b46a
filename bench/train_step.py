"""Throughput of one full training step of ctmil's MILNet vs MONAI MILModel and torchmil ABMIL.

One step = forward + loss + backward + Adam step (lr 1e-4, weight decay 5e-4, the paper's Table III).
Every model gets the same LeNet instance encoder (paper Table II, identical initial weights):

* ``ctmil MILNet``: gated attention (L = 128), ``forward_all`` + MIL BCE + absolute-location SSL loss (mu = 0.3),
  or ``forward`` + BCE only ("MIL only"); padded instances are packed out by the mask before the encoder.
* ``MONAI MILModel``: ``mil_mode="att"``, ``backbone=LeNetEncoder``, ``backbone_num_features=512`` (its attention
  MLP is fixed at 512 -> 2048 -> 1, plain tanh; it has no mask argument, so only unpadded batches are run).
* ``torchmil ABMIL``: ``gated=True, att_dim=128``, ``feat_ext`` = the LeNet wrapped to map (B, K, 1, 60, 60) to
  (B, K, 512) (ABMIL calls ``feat_ext`` on the whole padded tensor, so padded instances are encoded too).

Patch-steps/s = real instances per step / median step time. FLOPs of forward + backward (optimizer excluded)
are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one step and compared to the fp32 rate of a
large ``torch.matmul`` measured in the same run. Prints a Markdown table.

Usage::

    .venv/bin/python bench/train_step.py            # full run (bags of 217 and 1000 patches)
    .venv/bin/python bench/train_step.py --quick    # a few seconds, small bags
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctmil.networks import LeNetEncoder, MILNet  # noqa: E402
from ctmil.train.losses import MILSSLLoss  # noqa: E402


class BagEncoder(nn.Module):
    """Applies an instance encoder to every instance of ``(B, K, C, H, W)`` -> ``(B, K, M)`` (for torchmil)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(0, 1)).reshape(x.shape[0], x.shape[1], -1)


def make_batch(sizes: list[int], device: torch.device, seed: int = 0) -> dict:
    """Padded batch of bags with ``sizes`` instances, complete 12-patch slices where possible."""
    g = torch.Generator().manual_seed(seed)
    k_max = max(sizes)
    b = len(sizes)
    batch = {
        "patches": torch.zeros(b, k_max, 1, 60, 60),
        "mask": torch.zeros(b, k_max, dtype=torch.bool),
        "position": torch.full((b, k_max), -1, dtype=torch.long),
        "slice_index": torch.full((b, k_max), -1, dtype=torch.long),
        "label": torch.tensor([float(i % 2 == 0) for i in range(b)]),
        "is_virtual": torch.zeros(b, dtype=torch.bool),
    }
    for i, k in enumerate(sizes):
        batch["patches"][i, :k] = torch.rand(k, 1, 60, 60, generator=g)
        batch["mask"][i, :k] = True
        batch["position"][i, :k] = torch.arange(k) % 12
        batch["slice_index"][i, :k] = torch.arange(k) // 12
    return {key: v.to(device) for key, v in batch.items()}


def matmul_gflops(n: int, reps: int, device: torch.device, trials: int = 1) -> float:
    """fp32 ``n×n @ n×n`` rate: the best over ``trials`` of the median of ``reps`` products."""
    return max(_matmul_gflops(n, reps, device) for _ in range(trials))


def _matmul_gflops(n: int, reps: int, device: torch.device) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(kind: str, encoder: nn.Module, device: torch.device) -> tuple[nn.Module, Callable[[nn.Module, dict], torch.Tensor]]:
    """Model and a ``loss(model, batch)`` closure for one benchmark row."""
    encoder = copy.deepcopy(encoder)
    if kind in ("milnet_ssl", "milnet_mil"):
        model = MILNet(encoder=encoder, feature_dim=512)
        if kind == "milnet_ssl":
            criterion = MILSSLLoss(mu=0.3, ssl="absolute")

            def loss_fn(m, batch):
                return criterion(m.forward_all(batch["patches"], batch["mask"]), batch)["total"]

        else:

            def loss_fn(m, batch):
                return F.binary_cross_entropy_with_logits(m(batch["patches"], batch["mask"]).squeeze(1), batch["label"])

    elif kind == "monai":
        from monai.networks.nets import MILModel

        model = MILModel(num_classes=1, mil_mode="att", pretrained=False, backbone=encoder, backbone_num_features=512)

        def loss_fn(m, batch):
            return F.binary_cross_entropy_with_logits(m(batch["patches"]).squeeze(1), batch["label"])

    elif kind == "torchmil":
        try:
            from torchmil.models import ABMIL

            model = ABMIL(in_shape=(1, 1, 60, 60), att_dim=128, gated=True, feat_ext=BagEncoder(encoder))
        except ImportError:  # not installed: the same model written out (bench/_peers.py)
            from bench._peers import GatedABMIL

            model = GatedABMIL(BagEncoder(encoder))

        def loss_fn(m, batch):
            return F.binary_cross_entropy_with_logits(m(batch["patches"], batch["mask"]), batch["label"])

    else:
        raise ValueError(kind)
    return model.to(device).train(), loss_fn


def time_group(kinds, encoder, batch, warmup, reps, device):
    """Time one step of every model in ``kinds`` on the same batch, round-robin so load changes hit all alike.

    Returns ``{kind: (median_s, min_s, max_s, flops)}``.
    """
    steps, flops = {}, {}
    for kind in kinds:
        model, loss_fn = build(kind, encoder, device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)

        def step(model=model, loss_fn=loss_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            opt.step()

        with FlopCounterMode(display=False) as counter:  # forward + backward only
            opt.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
        flops[kind] = counter.get_total_flops()
        steps[kind] = step
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {kind: [] for kind in kinds}
    for _ in range(reps):
        for kind, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[kind].append(time.perf_counter() - t0)
    return {k: (statistics.median(t), min(t), max(t), flops[k]) for k, t in times.items()}


LABELS = {
    "milnet_ssl": "ctmil MILNet, MIL + abs. SSL",
    "milnet_mil": "ctmil MILNet, MIL only",
    "monai": "MONAI MILModel att",
    "torchmil": "torchmil ABMIL gated",
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny bags and few repetitions (a few seconds)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per row (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per row (default 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--matmul-trials", type=int, default=3, help="matmul trials; the best one is the reference rate")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="single-bag sizes (default 217 1000)")
    parser.add_argument("--no-batched", action="store_true", help="only the single-bag groups")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    reps = args.reps or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    if args.quick:
        single_sizes, batched = (24,), [("4 bags 12/24/36/48 (padded)", [12, 24, 36, 48])]
    else:
        single_sizes = (217, 1000)
        batched = [("4 bags of 217", [217] * 4), ("4 bags 100/150/217/300 (padded)", [100, 150, 217, 300])]
    single_sizes = tuple(args.sizes) if args.sizes else single_sizes
    batched = [] if args.no_batched else batched

    load_before = os.getloadavg()[0]
    peak = matmul_gflops(1024 if args.quick else 2048, 3 if args.quick else 10, device, trials=args.matmul_trials)
    encoder = LeNetEncoder()
    groups = [(f"1 bag of {k}", [k], ("milnet_ssl", "milnet_mil", "monai", "torchmil")) for k in single_sizes]
    for name, sizes in batched:
        padded = len(set(sizes)) > 1  # MONAI MILModel has no mask: unpadded batches only
        kinds = ("milnet_ssl", "torchmil") if padded else ("milnet_ssl", "monai", "torchmil")
        groups.append((name, sizes, kinds))
    rows = []
    t_start = time.perf_counter()
    for name, sizes, kinds in groups:
        batch = make_batch(sizes, device)
        n_real = sum(sizes)
        for kind, (med, lo, hi, flops) in time_group(kinds, encoder, batch, warmup, reps, device).items():
            gflops = flops / med / 1e9
            rows.append(
                f"| {LABELS[kind]} | {name} | {n_real} | {med:.3f} ({lo:.3f}-{hi:.3f}) | {n_real / med:,.0f} "
                f"| {flops / 1e9:.1f} | {gflops:.1f} | {100 * gflops / peak:.0f}% |"
            )
    total_s = time.perf_counter() - t_start

    cpu = platform.processor() or platform.machine()
    if device.type == "cuda":
        cpu = torch.cuda.get_device_name(device)
    print(f"device: {device.type} ({cpu}), {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"fp32 matmul ({1024 if args.quick else 2048}^3, best of {args.matmul_trials} trials of the median): "
          f"{peak:.1f} GFLOP/s")
    print(f"steps: warm-up {warmup}, timed {reps} per row (median, min-max), models of a group interleaved; "
          f"benchmark time {total_s:.0f} s")
    print(f"1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| model | bags per step | real patches / step | step s, median (min-max) | patch-steps/s "
          "| GFLOP / step (fwd+bwd) | GFLOP/s | % of matmul rate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
