"""Small helpers shared by the ctmil networks."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["he_init_", "check_positive_int", "raise_if"]


def he_init_(module: nn.Module) -> nn.Module:
    """Kaiming (He et al. 2015) normal initialisation of every conv/linear weight in ``module``, zero biases.

    This is the paper's "all layers are initialised according to [41] and biases are set as zero"
    (fan-in mode, ReLU gain). Modules other than ``nn.Conv*``/``nn.Linear`` are left untouched.
    Returns ``module`` so it can be chained.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not ``bool``) >= ``minimum``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def raise_if(bad: torch.Tensor, message: str) -> None:
    """``ValueError(message)`` when the one-element bool tensor ``bad`` is True, without a host sync on CUDA.

    On the CPU (where reading a value costs nothing) it is an ordinary check with an ordinary exception. On a
    CUDA device ``torch._assert_async`` checks it in the stream instead, so a training step never waits for the
    device to answer a validation; a violated check then fails the next synchronising call with ``message``.
    """
    if bad.is_cuda:
        torch._assert_async(torch.logical_not(bad), message)
    elif bool(bad):
        raise ValueError(message)
