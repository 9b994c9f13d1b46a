"""Each speed lever of ctmil's training step (MIL + absolute SSL, batch 1), measured against the step as it was.

Every variant is one full step (forward, ``MILSSLLoss``, backward, Adam) on the same synthetic bag, built from
the same seeded weights; the variants run round-robin (one step of each, repeated) so load changes hit all
alike. Prints best and median step time, the speed-up of the best over the "before" row, the 1-min load
average, and the largest loss difference from the "before" row after the timed steps (numerics).

Rows:

* ``before``: the step before issue 13 (conv → ReLU → pool trunk, outputs copied to the host each step);
* ``now``: :func:`ctmil.train.steps.make_train_step` as the trainer builds it (ReLU after pool, no host copies);
* one row per lever on top of ``now``: NCHW instead of channels-last, oneDNN off, the first conv's input
  gradient computed (what skipping it saves), Adam ``foreach``/``fused``, 1 thread instead of all,
  bf16 autocast (only where oneDNN has native bf16, detected at run time, unless ``--force-bf16``),
  ``torch.compile`` of the encoder or of ``forward_all`` (``--compile``; compile time is not counted).

Usage::

    .venv/bin/python bench/train_levers.py [--k 217] [--reps 7] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_step import make_batch, matmul_gflops  # noqa: E402
from ctmil.networks import LeNetEncoder, MILNet  # noqa: E402
from ctmil.train.losses import MILSSLLoss  # noqa: E402
from ctmil.networks.predict import step_output as _output  # noqa: E402
from ctmil.train.steps import _cpu_has_bf16, make_train_step  # noqa: E402


def paper_order(encoder: LeNetEncoder) -> LeNetEncoder:
    """The encoder with its ReLUs before the max-pools again (the layout before issue 13; same function)."""
    enc = copy.deepcopy(encoder)
    t = enc.trunk
    enc.trunk = nn.Sequential(t[0], t[2], t[1], t[3], t[5], t[4], t[6], t[8], t[7])
    return enc


def _net(base: MILNet, encoder: nn.Module | None = None) -> MILNet:
    net = copy.deepcopy(base)
    if encoder is not None:
        net.encoder = encoder
    return net


def variants(base: MILNet, batch: dict, device: torch.device, args) -> dict:
    """``{name: step()}``, each with its own copy of the network and optimiser; a step returns the loss tensor."""
    loss = MILSSLLoss(mu=0.3, ssl="absolute")

    def ctmil(net, host=False, wrap=None, opt_kwargs=None, amp=False, batch_fn=None):
        net = net.to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4, **(opt_kwargs or {}))
        step = make_train_step(net, opt, loss, device, amp=amp, amp_dtype=torch.bfloat16 if amp else None)

        def run():
            b = batch_fn() if batch_fn else batch
            out = step(None, b)
            if host:  # the step before issue 13 copied prob/label/attention/mask to the host every step
                _output({"logits": out["prob"][:, None], "attention": out["attention"]}, b, host=True)
            result = out["loss"]
            return wrap(result) if wrap else result

        return run

    rows = {
        "before: conv-ReLU-pool, host copies": ctmil(_net(base, paper_order(base.encoder)), host=True),
        "now: make_train_step": ctmil(_net(base)),
        "NCHW instead of channels-last": ctmil(_net(base, _nchw(base.encoder))),
        "Adam foreach=True": ctmil(_net(base), opt_kwargs={"foreach": True}),
        "Adam fused=True": ctmil(_net(base), opt_kwargs={"fused": True}),
    }
    grad_batch = dict(batch)

    def with_input_grad():
        grad_batch["patches"] = batch["patches"].detach().clone().requires_grad_(True)
        return grad_batch

    rows["first conv input grad computed"] = ctmil(_net(base), batch_fn=with_input_grad)
    if device.type == "cpu":
        rows["oneDNN off"] = ctmil(_net(base, _nchw(base.encoder)))
        rows["1 thread"] = ctmil(_net(base))
    if _cpu_has_bf16() or args.force_bf16:
        rows["bf16 autocast" + ("" if _cpu_has_bf16() else " (no native bf16)")] = ctmil(_net(base), amp=True)
    if args.compile:
        enc = _net(base)
        enc.encoder = torch.compile(enc.encoder)
        rows["torch.compile(encoder)"] = ctmil(enc)
        whole = _net(base)
        whole.forward_all = torch.compile(whole.forward_all)
        rows["torch.compile(forward_all)"] = ctmil(whole)
    return rows


def _nchw(encoder: LeNetEncoder) -> LeNetEncoder:
    """The same encoder (same weights) with its conv weights in the default NCHW memory format."""
    plain = LeNetEncoder(channels_last=False)
    plain.load_state_dict(encoder.state_dict())
    return plain.to(memory_format=torch.contiguous_format)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=217, help="patches in the bag")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 autocast even without native bf16")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    base = MILNet()
    batch = make_batch([args.k], device)
    batch["case_id"] = ["bench"]
    steps = variants(base, batch, device, args)
    peak = max(matmul_gflops(2048, 5, device) for _ in range(3))

    def timed(name, step):
        if name == "oneDNN off":
            with torch.backends.mkldnn.flags(enabled=False):
                return _time(step, device)
        if name == "1 thread":
            torch.set_num_threads(1)
            try:
                return _time(step, device)
            finally:
                torch.set_num_threads(max(1, args.threads))
        return _time(step, device)

    losses = {name: [] for name in steps}
    for _ in range(args.warmup):
        for name, step in steps.items():
            timed(name, step)
    times = {name: [] for name in steps}
    loads = []
    for _ in range(args.reps):
        loads.append(os.getloadavg()[0])
        for name, step in steps.items():
            dt, value = timed(name, step)
            times[name].append(dt)
            losses[name].append(float(value))
    ref = times[next(iter(steps))]
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, K = {args.k}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {_cpu_has_bf16()}")
    print(f"fp32 matmul 2048^3, best of 3 trials: {peak:.1f} GFLOP/s; 1-min load during the timed steps "
          f"{min(loads):.2f}-{max(loads):.2f}; warm-up {args.warmup}, timed {args.reps} per row, round-robin\n")
    print("| variant | best s | median s | speed-up of best vs before | max abs loss diff vs before |")
    print("|---|---:|---:|---:|---:|")
    first = losses[next(iter(steps))]
    for name in steps:
        diff = max(abs(a - b) for a, b in zip(losses[name], first))
        print(f"| {name} | {min(times[name]):.3f} | {statistics.median(times[name]):.3f} | "
              f"{min(ref) / min(times[name]):.2f}x | {diff:.2e} |")


def _time(step, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    value = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, value


if __name__ == "__main__":
    main()
