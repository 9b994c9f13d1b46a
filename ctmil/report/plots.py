"""The one ROC plot: curves (false and true positive rates, computed by the caller with
:func:`ctmil.stats.metrics.roc_curve`) and operating points on one square axis, written as a PNG atomically.

``ctmil cv``'s report draws one curve per setting and repeat, ``ctmil evaluate`` one curve and its threshold: both
through :func:`plot_roc`, so every ROC picture ctmil makes looks the same.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctmil.io.atomic import atomic_path

__all__ = ["RocCurve", "RocPoint", "plot_roc"]


@dataclass(frozen=True)
class RocCurve:
    """One curve: ``fpr`` and ``tpr`` ``(n,)``, its legend ``label`` (``None``: no entry), colour and opacity."""

    fpr: np.ndarray
    tpr: np.ndarray
    label: str | None = None
    colour: str | None = None
    alpha: float = 1.0


@dataclass(frozen=True)
class RocPoint:
    """An operating point: ``(fpr, tpr)`` = (1 - specificity, sensitivity), with its legend ``label``."""

    fpr: float
    tpr: float
    label: str


def plot_roc(curves: Sequence[RocCurve], path: "str | os.PathLike[str]", title: str = "ROC",
             points: Sequence[RocPoint] = (), dpi: int = 120) -> Path:
    """Draw ``curves`` (steps, as an empirical ROC is) and ``points`` over the chance diagonal; write ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 5.0), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    for curve in curves:
        ax.step(curve.fpr, curve.tpr, where="post", color=curve.colour, alpha=curve.alpha, label=curve.label)
    for point in points:
        ax.plot(point.fpr, point.tpr, marker="o", linestyle="", color="tab:red", label=point.label)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
