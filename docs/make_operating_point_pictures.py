"""The pictures of docs/operating_point.md, from phantom-like scores (no model needed; a few seconds).

    python docs/make_operating_point_pictures.py   # writes docs/img/operating_point_*.png

Scores that rank well but are badly scaled, as a short MIL training gives (every probability low): the
learnt Platt map brings them to the observed rate, and the Youden threshold sits between the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctmil.stats.calibration import apply_calibration, plot_reliability
from ctmil.stats.operating_point import fit_operating_point

OUT = Path(__file__).resolve().parent / "img"


def scores(seed: int, n: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    logit = -3.0 + 1.6 * y + rng.normal(0, 0.6, n)  # ranks well (AUC ~0.95), probabilities all low
    return y, 1 / (1 + np.exp(-logit))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    y_fit, p_fit = scores(0, 60)  # inner validation cases of one run
    y_new, p_new = scores(1, 400)  # its future cases
    point = fit_operating_point(p_fit, y_fit, "platt", "youden")
    calibrated = apply_calibration(point["calibration"], p_new)
    plot_reliability({"raw sigmoid": p_new, "Platt (learnt on 60 inner cases)": calibrated}, y_new,
                     OUT / "operating_point_reliability.png", title="Calibration learnt on training data", dpi=80)
    fig = Figure(figsize=(6.0, 2.6), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    ax.hist(calibrated[y_new == 0], bins=bins, alpha=0.6, label="non-severe")
    ax.hist(calibrated[y_new == 1], bins=bins, alpha=0.6, label="severe")
    ax.axvline(point["threshold"], color="k", linestyle="--", label=f"learnt threshold {point['threshold']:.2f}")
    ax.axvline(0.5, color="grey", linestyle=":", label="0.5")
    ax.set(xlabel="calibrated probability", ylabel="cases")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(OUT / "operating_point_threshold.png")


if __name__ == "__main__":
    main()
