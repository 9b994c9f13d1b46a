"""Small PNG pictures of CT slices for reports, drawn with numpy (no figure): a slice in a display window with a
mask outline and a box, a text strip above a tile (Pillow's built-in font, no font file), and a grid of tiles."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

__all__ = ["label_tile", "outline", "png_bytes", "slice_tile", "tile_grid"]

LUNG_WINDOW_HU = (-1350.0, 150.0)  # level -600, width 1500
OUTLINE_RGB = (1.0, 0.25, 0.2)
BOX_RGB = (0.2, 1.0, 0.2)


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels ``(H, W)`` of a boolean mask: in the mask, with a 4-neighbour outside it."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return m & ~inner


def slice_tile(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    box: Sequence[int] | None = None,
    *,
    width: int = 296,
    aspect: float = 1.0,
    mask_stride: int = 1,
    intensity: str = "hu",
) -> np.ndarray:
    """One slice as ``(h, width, 3)`` float RGB in [0, 1], resampled (nearest) to ``width`` pixels across.

    Args:
        image: ``(H, W)`` HU (``intensity="hu"``, shown in a lung window) or windowed values in [0, 1].
        mask: boolean ``(ceil(H / mask_stride), ceil(W / mask_stride))``: its outline is drawn in red.
        box: ``(row0, col0, row1, col1)`` (end exclusive) in image pixels, drawn in green.
        aspect: row spacing / column spacing (the tile's height follows it).
        mask_stride: the mask's grid is every ``mask_stride``-th row and column of the image.
    """
    img = np.asarray(image, np.float32)
    h_in, w_in = img.shape
    height = max(1, int(round(h_in * aspect * width / w_in)))
    rows = np.minimum(((np.arange(height) + 0.5) * h_in / height).astype(np.int64), h_in - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w_in / width).astype(np.int64), w_in - 1)
    lo, hi = LUNG_WINDOW_HU if intensity == "hu" else (0.0, 1.0)
    grey = np.clip((img[np.ix_(rows, cols)] - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if mask is not None:
        m = np.asarray(mask, bool)
        r = np.minimum(rows // mask_stride, m.shape[0] - 1)
        c = np.minimum(cols // mask_stride, m.shape[1] - 1)
        rgb[outline(m[np.ix_(r, c)])] = OUTLINE_RGB
    if box is not None:
        r0, c0, r1, c1 = (int(v) for v in box)
        top, bottom = np.searchsorted(rows, r0), np.searchsorted(rows, r1) - 1
        left, right = np.searchsorted(cols, c0), np.searchsorted(cols, c1) - 1
        top, left = min(top, height - 1), min(left, width - 1)
        bottom, right = max(bottom, top), max(right, left)
        rgb[[top, bottom], left : right + 1] = BOX_RGB
        rgb[top : bottom + 1, [left, right]] = BOX_RGB
    return rgb


def label_tile(tile: np.ndarray, text: str, height: int = 20, foreground: float = 1.0,
               background: float = 0.0) -> np.ndarray:
    """``tile`` ``(h, w, 3)`` with a ``height``-pixel strip above it holding ``text`` (one line, cut at the tile's
    width): ``(h + height, w, 3)``; the picture itself is left as it was, so a label never hides anatomy."""
    from PIL import Image, ImageDraw, ImageFont

    width = tile.shape[1]
    size = max(8, height - 6)
    try:
        font = ImageFont.load_default(size=size)  # Pillow's own scalable font (needs FreeType)
    except (OSError, TypeError, ImportError):
        font = ImageFont.load_default()
    strip = Image.new("L", (width, height), 0)
    if isinstance(font, ImageFont.FreeTypeFont):
        ImageDraw.Draw(strip).text((4, height // 2), str(text), fill=255, font=font, anchor="lm")
    else:  # the 11-pixel bitmap font takes no anchor
        ImageDraw.Draw(strip).text((4, max(0, (height - 11) // 2)), str(text), fill=255, font=font)
    ink = np.asarray(strip, np.float32)[..., None] / 255.0
    band = background + (foreground - background) * np.repeat(ink, 3, axis=2)
    return np.concatenate([band.astype(np.float32), np.asarray(tile, np.float32)], axis=0)


def tile_grid(tiles: Sequence[np.ndarray], columns: int = 2, gap: int = 4, background: float = 0.15) -> np.ndarray:
    """Tiles ``(h_i, w_i, 3)`` laid out row by row, ``columns`` per row, ``gap`` pixels apart."""
    if not tiles:
        raise ValueError("no tiles")
    columns = max(1, min(columns, len(tiles)))
    n_rows = -(-len(tiles) // columns)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((n_rows * th + (n_rows - 1) * gap, columns * tw + (columns - 1) * gap, 3), background, np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (th + gap) : r * (th + gap) + t.shape[0], c * (tw + gap) : c * (tw + gap) + t.shape[1]] = t
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """``(H, W, 3)`` float RGB in [0, 1] as PNG bytes (8 bit, no timestamp: the same image gives the same bytes)."""
    from matplotlib import image as mpimg

    buf = io.BytesIO()
    mpimg.imsave(buf, np.clip(rgb, 0.0, 1.0), format="png", metadata={"Software": None})
    return buf.getvalue()
