"""The one ROC plot (ctmil.report.plots): curves and points drawn into a PNG, written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ctmil.report.plots import RocCurve, RocPoint, plot_roc


@pytest.mark.parametrize("n_curves, points", [(1, []), (3, [RocPoint(0.2, 0.8, "threshold 0.5")]), (0, [])])
def test_roc_png(tmp_path, n_curves, points):
    curves = [RocCurve(np.array([0.0, 0.1 * k, 1.0]), np.array([0.0, 0.9, 1.0]), f"curve {k}") for k in range(n_curves)]
    path = plot_roc(curves, tmp_path / "sub" / "roc.png", title="t", points=points, dpi=50)
    with Image.open(path) as image:
        assert image.size == (250, 250) and image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    red = ((pixels[:, 0] > 180) & (pixels[:, 1] < 90) & (pixels[:, 2] < 90)).any()  # the operating point's marker
    assert red == bool(points)
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]
