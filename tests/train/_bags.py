"""Tiny synthetic bags and a tiny network for the pipeline tests."""

from __future__ import annotations

from typing import Dict, List, Sequence

import pytest
import torch

from ctmil.transforms.tiling import PATCH_NORM, PATCH_NORM_CHANNELS

#: a small MILNet (the LeNet trunk is the paper's; the widths after it are tiny)
TINY_NET = {"feature_dim": 16, "attention_dim": 8, "ssl_hidden": 8}


#: the channels of a bag made with the default preprocessing (min-max and window), which train.json's network takes:
#: bags for the bundle's workflows are made with them (make_bag's one channel is the paper network's)
CHANNELS = PATCH_NORM_CHANNELS[PATCH_NORM]
#: the MILNet arguments train.json derives from those channels: attention scored on the min-max channel alone
CHANNEL_NET = {"in_channels": CHANNELS, "attention_channels": 1} if CHANNELS > 1 else {}


def make_bag(seed: int, label: float, n_slices: int = 1, case_id: str | None = None, size: int = 60, channels: int = 1) -> Dict:
    """A bag of ``n_slices`` complete slices (12 patches each) of ``channels``; positives get a few bright patches."""
    g = torch.Generator().manual_seed(seed)
    k = 12 * n_slices
    patches = torch.rand(k, channels, size, size, generator=g) * 0.5
    if label == 1:
        patches[: max(1, k // 6)] += 0.5
    return {
        "patches": patches,
        "position": torch.arange(12).repeat(n_slices),
        "slice_index": (3 + torch.arange(n_slices)).repeat_interleave(12),
        "label": torch.tensor(float(label)),
        "case_id": case_id if case_id is not None else f"case{seed}",
    }


def make_bags(labels: Sequence[float], n_slices: Sequence[int] | int = 1, channels: int = 1) -> List[Dict]:
    sizes = [n_slices] * len(labels) if isinstance(n_slices, int) else list(n_slices)
    return [make_bag(i, y, s, channels=channels) for i, (y, s) in enumerate(zip(labels, sizes))]


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: on a shared 2-core machine two threads mostly wait for each other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_overrides(out_dir, **changes) -> Dict:
    """Overrides of the bundle's train.json for a tiny CPU run writing into ``out_dir`` (no datalist needed
    when ``train#dataset`` is given)."""
    base = {
        "bundle_root": str(out_dir), "ckpt_dir": str(out_dir), "output_dir": str(out_dir),
        "device": "$torch.device('cpu')", "max_epochs": 2, "val_interval": 0, "validate#dataset": None,
        "tensorboard": False, **{f"network_def#{k}": v for k, v in TINY_NET.items()},
    }
    return {**base, **changes}


def train_tiny(out_dir, dataset, files=("train.json",), **changes):
    """Train through the bundle's workflow (the composition root) on ``dataset``; returns the finished workflow."""
    from ctmil.bundle import build_workflow

    workflow = build_workflow(list(files), tiny_overrides(out_dir, **{"train#dataset": dataset, **changes}))
    workflow.run()
    workflow.finalize()
    return workflow
