"""PNG overlays of attention on a CT slice: the lung window, the crop box and the 3 × 4 patch grid drawn in."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctmil.infer.attention_maps import GRID, LUNG_WINDOW_HU, cell_index

__all__ = ["cell_edges", "overlay_rgb", "save_overlay"]


def cell_edges(length: int, n_cells: int) -> np.ndarray:
    """Pixel offsets ``(n_cells - 1,)`` inside a box where a new grid cell starts (for drawing the grid)."""
    return np.searchsorted(cell_index(length, n_cells), np.arange(1, n_cells))


def overlay_rgb(ct_slice: np.ndarray, attention_slice: np.ndarray, *, intensity: str = "hu", vmax: float | None = None,
                alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1]: the CT in a lung window (HU) or as is (windowed), the attention blended on top.

    Pixels with zero attention (outside the lung boxes) show the CT only.
    """
    from matplotlib import colormaps

    ct = np.asarray(ct_slice, np.float32)
    att = np.asarray(attention_slice, np.float32)
    lo, hi = LUNG_WINDOW_HU if intensity == "hu" else (0.0, 1.0)
    top = float(vmax) if vmax is not None and vmax > 0 else max(float(att.max()), 1e-12)
    grey = np.clip((ct - lo) / (hi - lo), 0.0, 1.0)[..., None]  # (H, W, 1)
    heat = colormaps[cmap](np.clip(att / top, 0.0, 1.0))[..., :3]  # (H, W, 3)
    weight = (att > 0)[..., None] * alpha
    return grey * (1.0 - weight) + heat * weight


def save_overlay(
    ct_slice: np.ndarray,
    attention_slice: np.ndarray,
    box: Sequence[int],
    path: str | os.PathLike,
    *,
    intensity: str = "hu",
    vmax: float | None = None,
    title: str = "",
    aspect: float = 1.0,
    grid: tuple[int, int] = GRID,
) -> Path:
    """One slice as PNG: CT in a lung window, the attention heat map, the lung box and its patch grid, a colour bar.

    Args:
        ct_slice: ``(H, W)`` HU (``intensity="hu"``, shown at level -600 / width 1500) or windowed [0, 1].
        attention_slice: ``(H, W)`` painted attention (zero = not painted, left transparent).
        box: ``(row0, col0, row1, col1)`` of the slice's lung box.
        vmax: top of the colour scale (e.g. the case's largest value, so slices are comparable); default the slice's.
        aspect: row spacing / column spacing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    att = np.asarray(attention_slice, np.float32)
    top = float(vmax) if vmax is not None and vmax > 0 else max(float(att.max()), 1e-12)
    rgb = overlay_rgb(ct_slice, att, intensity=intensity, vmax=top)  # one pre-blended image: cheap to render
    h, w = att.shape
    width_px = 640  # the image gets ~80 % of it: about native size for 512² CT
    height_px = int(np.clip(0.8 * width_px * h * aspect / w / 0.88, 240, 1600))
    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.8, 0.88))
    ax.imshow(rgb, aspect=aspect, interpolation="nearest")
    r0, c0, r1, c1 = (int(v) for v in box)
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="lime", linewidth=1.2))
    for e in cell_edges(r1 - r0, grid[0]):
        ax.plot([c0 - 0.5, c1 - 0.5], [r0 + e - 0.5] * 2, color="lime", linewidth=0.5, linestyle=":")
    for e in cell_edges(c1 - c0, grid[1]):
        ax.plot([c0 + e - 0.5] * 2, [r0 - 0.5, r1 - 0.5], color="lime", linewidth=0.5, linestyle=":")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9, y=0.97)
    cax = fig.add_axes((0.84, 0.12, 0.03, 0.7))
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, top), cmap="jet"), cax=cax, label="attention")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None}, pil_kwargs={"compress_level": 1})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
