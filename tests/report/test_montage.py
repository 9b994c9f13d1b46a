"""Montage pieces: the text strip that labels a tile."""

import numpy as np
import pytest
from PIL import ImageFont

from ctmil.report.montage import label_tile, tile_grid


@pytest.fixture(params=["freetype", "bitmap"])
def font_kind(request, monkeypatch):
    """Pillow's scalable font, and the bitmap fallback used when Pillow has no FreeType."""
    if request.param == "bitmap":
        load_default = ImageFont.load_default

        def no_freetype(size=None):
            if size is not None:
                raise ImportError("The _imagingft C module is not installed")
            return load_default()

        monkeypatch.setattr(ImageFont, "load_default", no_freetype)
    return request.param


def test_label_is_a_strip_above_the_tile_with_the_picture_untouched(font_kind):
    tile = np.random.default_rng(0).uniform(0.2, 0.8, (50, 298, 3)).astype(np.float32)
    out = label_tile(tile, "largest lung (slice 12)", height=20)
    assert out.shape == (70, 298, 3) and np.array_equal(out[20:], tile)
    strip = out[:20]
    assert strip.max() > 0.9 and 0.0 < (strip > 0.5).mean() < 0.5  # white text on black, not a white block
    assert not label_tile(tile, "", height=20)[:20].any()  # no text: only the background


def test_different_labels_draw_different_strips(font_kind):
    tile = np.zeros((10, 298, 3), np.float32)
    first, last = (label_tile(tile, text)[:20] for text in ("first kept (slice 3)", "last kept (slice 30)"))
    assert not np.array_equal(first, last)


def test_labelled_tiles_keep_the_grid_width():
    tiles = [label_tile(np.zeros((40, 298, 3), np.float32), f"slice {i}") for i in range(4)]
    grid = tile_grid(tiles, columns=2)
    assert grid.shape == (2 * 60 + 4, 600, 3)
