"""Instance encoder: the paper's LeNet for 1×60×60 CT patches (Table II, layers 1-7)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int, he_init_

__all__ = ["LeNetEncoder", "MaxPool2x2"]


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2, 2)`` (floor mode), ``(N, C, H, W) -> (N, C, H // 2, W // 2)``, with a faster path without grad.

    When no gradient is recorded (inference, validation) the 2 × 2 maximum is taken as two element-wise maxima of
    strided views (rows, then columns) instead of ``max_pool2d``, whose CPU kernel also writes an int64 index per
    output: about 5× faster on the first conv's output and the same values exactly (a maximum of the same
    numbers). With grad, ``max_pool2d`` and its backward run as before (the views' backward is slower there).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.nn.functional.max_pool2d(x, 2, 2)
        h, w = (x.shape[2] // 2) * 2, (x.shape[3] // 2) * 2
        v = x[:, :, :h, :w].permute(0, 2, 3, 1)  # (N, H, W, C): a plain view for channels_last input
        rows = torch.maximum(v[:, 0::2], v[:, 1::2])  # (N, H/2, W, C)
        return torch.maximum(rows[:, :, 0::2], rows[:, :, 1::2]).permute(0, 3, 1, 2)  # (N, C, H/2, W/2)


class LeNetEncoder(nn.Module):
    """LeNet instance feature extractor, ``(N, C, P, P) -> (N, feature_dim)``.

    Layers (paper Table II): conv(5,1,0)-36 + ReLU, maxpool 2, conv(5,1,0)-36 + ReLU, maxpool 2,
    conv(5,1,0)-48 + ReLU, maxpool 2, fc-``feature_dim`` + ReLU (each ReLU runs after its max-pool, which is
    the same function and gradient). For ``patch_size=60`` the conv trunk
    ends in a ``(N, 48, 4, 4)`` map, so the fc layer has 768 inputs.

    timm-style split: :meth:`forward_features` returns the conv feature map ``(N, 48, s, s)`` (useful for
    Grad-CAM style explainers), :meth:`forward_head` flattens it and applies the fc layer, and
    :meth:`forward` chains both. Weights are He-initialised, biases zero.

    Args:
        in_channels: channels of one patch (1 for CT).
        patch_size: side length ``P`` of the square patch; at least 36 so the trunk output is non-empty.
        feature_dim: output feature size ``M`` (512 in the paper).
        channels_last: keep the conv weights in ``torch.channels_last`` memory format, which makes oneDNN run the
            convolutions in NHWC (about 1.5-2× faster training on AVX-512 CPUs for these 36/48-channel convs).
            Numerically equivalent; ``load_state_dict`` keeps the format.
        chunk_size: run the layers on at most this many patches at a time (equal chunks; ``None``: all at once).
            The first conv's output is 450 KB per patch, so a whole bag's (97 MB for 216 patches) falls out of the
            CPU caches before the max-pool reads it back; in chunks of about 48 it does not: 1.8× faster forward
            and 1.25-1.3× faster forward + backward on the project's 2-core CPU (docs/benchmarks.md). Per-patch
            results are unchanged up to float rounding (the conv kernels may block differently).
    """

    def __init__(
        self, in_channels: int = 1, patch_size: int = 60, feature_dim: int = 512, channels_last: bool = True,
        chunk_size: Optional[int] = 48,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
        self.chunk_size = None if chunk_size is None else check_positive_int("chunk_size", chunk_size)
        side = patch_size
        for _ in range(3):  # conv 5 (valid) then maxpool 2 (floor)
            side = (side - 4) // 2
        if side < 1:
            raise ValueError(f"patch_size must be >= 36 for the LeNet encoder (3 × conv5 + maxpool2), got {patch_size}.")
        self.feature_map_size = side  # 4 for 60×60 patches
        # max-pool before ReLU: relu(maxpool(x)) == maxpool(relu(x)) exactly (ReLU is monotone), forward and
        # gradient, but the ReLU and its backward touch 4x fewer values (about 10% of a CPU training step).
        # The conv layers keep their indices 0, 3, 6, so state dicts are unchanged.
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, 36, kernel_size=5, stride=1, padding=0),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
            nn.Conv2d(36, 36, kernel_size=5, stride=1, padding=0),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
            nn.Conv2d(36, 48, kernel_size=5, stride=1, padding=0),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Sequential(nn.Linear(48 * side * side, feature_dim), nn.ReLU(inplace=True))
        he_init_(self)
        if not isinstance(channels_last, bool):
            raise ValueError(f"channels_last must be a bool, got {channels_last!r}.")
        if channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, C, P, P)`` -> conv feature map ``(N, 48, s, s)`` (``s = 4`` for ``P = 60``)."""
        return self.trunk(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Conv feature map ``(N, 48, s, s)`` -> instance features ``(N, feature_dim)``."""
        return self.fc(torch.flatten(x, 1))  # flatten is in (C, H, W) order whatever the memory format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, C, P, P)`` -> ``(N, feature_dim)``, in equal chunks of at most ``chunk_size`` patches."""
        n = x.shape[0]
        if self.chunk_size is None or n <= self.chunk_size:
            return self.forward_head(self.forward_features(x))
        n_chunks = (n + self.chunk_size - 1) // self.chunk_size
        step = (n + n_chunks - 1) // n_chunks
        return torch.cat([self.forward_head(self.forward_features(c)) for c in x.split(step)])
