"""Instance encoder: the paper's LeNet for 1×60×60 CT patches (Table II, layers 1-7)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ctmil.networks.utils import check_positive_int, he_init_

__all__ = ["LeNetEncoder"]


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
    """

    def __init__(
        self, in_channels: int = 1, patch_size: int = 60, feature_dim: int = 512, channels_last: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.feature_dim = check_positive_int("feature_dim", feature_dim)
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
            nn.MaxPool2d(2, 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(36, 36, kernel_size=5, stride=1, padding=0),
            nn.MaxPool2d(2, 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(36, 48, kernel_size=5, stride=1, padding=0),
            nn.MaxPool2d(2, 2),
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
        """``x: (N, C, P, P)`` -> ``(N, feature_dim)``."""
        return self.forward_head(self.forward_features(x))
