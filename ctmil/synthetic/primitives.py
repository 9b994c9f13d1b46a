"""What phantoms are drawn with: smooth Gaussian random fields, ellipses, per-slice profiles and the canvas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import fft as sp_fft

from ctmil.synthetic.labels import TISSUE_LABELS

__all__ = ["gaussian_fields", "smoothstep", "ellipse", "per_slice", "Canvas"]


def gaussian_fields(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], corr_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two independent smooth Gaussian random fields of ``shape``, zero mean, unit std, float32.

    Correlation length ``corr_mm`` (Gaussian kernel sigma in mm), made with one complex FFT (periodic borders).
    """
    white = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32)
    spectrum = sp_fft.fftn(white.astype(np.complex64), workers=1)
    kernel = np.ones((1,) * len(shape), dtype=np.float32)
    for axis, (n, sp) in enumerate(zip(shape, spacing)):
        freq = np.fft.fftfreq(n, d=sp).astype(np.float32)  # cycles per mm
        k1 = np.exp(-2.0 * (np.pi * corr_mm * freq) ** 2)
        kernel = kernel * k1.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    field = sp_fft.ifftn(spectrum * kernel, workers=1)
    out = []
    for part in (field.real, field.imag):
        part = part - part.mean()
        out.append((part / max(float(part.std()), 1e-12)).astype(np.float32))
    return out[0], out[1]


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic ramp from 0 (``x <= 0``) to 1 (``x >= 1``)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ellipse(x: np.ndarray, y: np.ndarray, cx: Any, cy: Any, ax: Any, ay: Any) -> np.ndarray:
    """Squared normalised elliptical radius ((x-cx)/ax)^2 + ((y-cy)/ay)^2 (broadcasting; ax, ay > 0)."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def per_slice(v: np.ndarray) -> np.ndarray:
    """(S,) -> (S, 1, 1); floats as float32 so full volumes stay float32."""
    v = np.asarray(v)
    return (v.astype(np.float32) if v.dtype.kind == "f" else v)[:, None, None]


@dataclass(eq=False)
class Canvas:
    """The volume being drawn: HU ``(S, H, W)`` float32 and tissue codes ``(S, H, W)`` uint8 (:data:`TISSUE_LABELS`)."""

    hu: np.ndarray
    tissue: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> "Canvas":
        """Air everywhere: -1000 HU, tissue ``air``."""
        return cls(hu=np.full(shape, -1000.0, dtype=np.float32), tissue=np.zeros(shape, dtype=np.uint8))

    def paint(self, mask: np.ndarray, tissue: str | None, hu: Any) -> None:
        """Set ``tissue`` (unless None) and ``hu`` (a number, or an array broadcastable to the volume) on ``mask``."""
        if tissue is not None:
            self.tissue[mask] = TISSUE_LABELS[tissue]
        self.hu[mask] = np.broadcast_to(hu, self.hu.shape)[mask] if np.ndim(hu) else hu
