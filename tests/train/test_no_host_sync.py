"""A training step reads no tensor value back to the host (issue 13.2): on a GPU that would make every step wait.

On the CPU every read is free, so the test watches for the reads themselves: while one step runs, every
``Tensor.__bool__ / __int__ / __float__ / item / tolist / numpy`` call is recorded with its caller. The only
caller allowed is :func:`ctmil.networks.utils.raise_if`, which on CUDA turns into an asynchronous assertion, besides
``torch.optim``'s reads of its own step counter (a host tensor unless the optimiser is ``capturable``).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from ctmil.data.bags import collate_bags
from ctmil.networks import MILNet
from ctmil.networks.utils import raise_if
from ctmil.train.losses import MILSSLLoss
from ctmil.train.steps import make_train_step
from tests.train._bags import TINY_NET, make_bags

_READS = ("__bool__", "__int__", "__float__", "item", "tolist", "numpy")


@pytest.fixture
def reads(monkeypatch):
    """Callers (function names) of every value read from a tensor while the fixture is active."""
    seen: list[str] = []
    for name in _READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code
            if f"torch{os.sep}optim{os.sep}" not in caller.co_filename:  # the optimiser's host-side step count
                seen.append(f"{caller.co_name} ({_name})")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return seen


@pytest.mark.parametrize("ssl,reduction", [("absolute", "slice"), ("absolute", "item"), ("none", "slice")])
@pytest.mark.parametrize("n_bags", [1, 2])
def test_a_training_step_reads_values_only_in_raise_if(reads, ssl, reduction, n_bags):
    torch.manual_seed(0)
    network = MILNet(**TINY_NET)
    step = make_train_step(network, torch.optim.Adam(network.parameters(), 1e-4), MILSSLLoss(ssl=ssl, ssl_reduction=reduction))
    batch = collate_bags(make_bags([1.0, 0.0][:n_bags], n_slices=2))
    reads.clear()
    out = step(None, batch)
    assert set(reads) <= {"raise_if (__bool__)"}, reads
    assert reads, "the validations ran (on the CPU they read their flag)"
    assert torch.isfinite(out["loss"]).all()


def test_raise_if_raises_the_message_on_the_cpu():
    raise_if(torch.tensor(False), "never")
    with pytest.raises(ValueError, match="^labels must be 0 or 1$"):
        raise_if(torch.tensor(True), "labels must be 0 or 1")


@pytest.mark.parametrize("bad", [False, True])
def test_empty_ssl_items_give_zero_with_a_grad_path(bad):
    """Virtual-only batches (no SSL item) give SSL loss 0 without branching on a tensor value, and backward works."""
    loss = MILSSLLoss(ssl="absolute", ssl_reduction="item" if bad else "slice")
    logits = torch.zeros(1, 1, requires_grad=True)
    ssl = torch.randn(1, 12, 12, requires_grad=True)
    batch = {"label": torch.ones(1), "position": torch.arange(12)[None], "slice_index": torch.zeros(1, 12, dtype=torch.long),
             "mask": torch.ones(1, 12, dtype=torch.bool), "is_virtual": torch.tensor([True])}
    out = loss({"logits": logits, "ssl_abs": ssl}, batch)
    assert float(out["ssl"]) == 0.0
    out["total"].backward()
    assert ssl.grad is not None and float(ssl.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("reduction", ["slice", "item"])
def test_non_finite_logits_of_excluded_items_stay_out_of_the_loss(reduction):
    """A virtual bag's SSL logits are not in the loss, even when they overflowed (e.g. under fp16 autocast)."""
    loss = MILSSLLoss(ssl="absolute", ssl_reduction=reduction)
    ssl = torch.randn(2, 12, 12)
    ssl[1, 3, 5] = float("inf")  # the virtual bag's
    batch = {"label": torch.ones(2), "position": torch.arange(12).repeat(2, 1), "slice_index": torch.zeros(2, 12, dtype=torch.long),
             "mask": torch.ones(2, 12, dtype=torch.bool), "is_virtual": torch.tensor([False, True])}
    out = loss({"logits": torch.zeros(2, 1), "ssl_abs": ssl}, batch)
    assert torch.isfinite(out["ssl"]) and float(out["ssl"]) > 0
