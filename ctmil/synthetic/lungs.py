"""The lungs: two ellipsoid-like lungs shaped along z with a diaphragm dome, carved from the cavity, and bright
vessel dots that are denser and bigger towards the hilum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctmil.synthetic.anatomy import Spine
from ctmil.synthetic.chest_frame import ChestFrame, Fields
from ctmil.synthetic.primitives import Canvas, ellipse, per_slice

__all__ = ["LungMaps", "paint_lungs", "paint_vessels"]


@dataclass(frozen=True, eq=False)
class LungMaps:
    """Lung masks and maps ``(S, H, W)`` that vessels and lesions are placed with."""

    mask: np.ndarray  # bool
    radius: np.ndarray  # normalised radius inside the lung ellipse (1 = edge, 2 outside the lungs)
    posterior: np.ndarray  # -1 anterior .. +1 posterior inside the lung, 0 outside
    d_cav: np.ndarray  # squared elliptical radius of the thoracic cavity (1, H, W)
    base_hu: np.ndarray  # parenchyma HU before vessels and lesions

    @property
    def index(self) -> np.ndarray:
        """Flat indices of the lung voxels."""
        return np.flatnonzero(self.mask)


def _one_lung(
    f: ChestFrame, fields: Fields, p: np.ndarray, d_cav: np.ndarray, side: float, size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mask ``(S, H, W)`` of the right (``side`` -1) or left (+1) lung, its squared radius, centre row and AP axis."""
    x, y, a_c, b_c = f.x, f.y, f.a_c, f.b_c
    cx = side * a_c * (0.5 + 0.1 * p)
    cy = 0.1 * b_c * (1 - p) + 0.05 * b_c
    ax = 0.52 * a_c * p * size + 1e-3
    ay = 0.95 * b_c * np.power(p, 0.6) * size + 1e-3
    d_l = ellipse(x, y, cx, cy, ax, ay)
    side_lung = (d_l < 1.0 + 0.15 * fields.shape_f1) & (d_cav < 0.97) & (p > 0.02)
    # diaphragm dome pushes up into the base of each lung
    dome_r = per_slice(np.sqrt(np.clip(1 - f.u / 0.3, 0, 1)))
    d_dome = ellipse(x, y, cx, cy - 0.15 * b_c, ax * 1.1 * dome_r + 1e-3, ay * 0.9 * dome_r + 1e-3)
    side_lung &= ~(d_dome < 1.0)
    side_lung &= (x * side) > 0
    return side_lung, d_l, cy, ay


def paint_lungs(
    canvas: Canvas,
    rng: np.random.Generator,
    f: ChestFrame,
    fields: Fields,
    inner: np.ndarray,
    mediastinum: np.ndarray,
    spine: Spine,
) -> LungMaps:
    """Draw both lungs' sizes, carve them out of mediastinum, spine and paravertebral tissue, paint parenchyma."""
    x, y, mm = f.x, f.y, f.mm
    lung = np.zeros(f.shape, dtype=bool)
    rn_lung = np.full(f.shape, 2.0, dtype=np.float32)
    post_lung = np.zeros(f.shape, dtype=np.float32)
    d_cav = ellipse(x, y, 0.0, 0.0, f.a_c, f.b_c)
    p = per_slice(f.prof)
    for side, size in ((-1.0, rng.uniform(1.0, 1.08)), (1.0, rng.uniform(0.92, 1.0))):  # right, left lung
        side_lung, d_l, cy, ay = _one_lung(f, fields, p, d_cav, side, size)
        lung |= side_lung
        rn_lung = np.where(side_lung, np.sqrt(d_l), rn_lung)
        post_lung = np.where(side_lung, np.clip((y - cy) / ay, -1, 1), post_lung)
    lung &= inner & ~mediastinum & ~spine.bone
    lung &= ~(ellipse(x, y, 0.0, spine.y, spine.r * 1.1 + 8 * mm, spine.r + 8 * mm) < 1)  # paravertebral tissue
    lung &= ~((np.abs(x) < 0.15 * f.a_c) & (y > spine.y - spine.r))  # paraspinal muscles between the lungs
    lung[~f.in_lung_z] = False
    base_hu = -860.0 + 28.0 * fields.tex_f1 + 45.0 * post_lung  # dependent (posterior) lung is denser
    canvas.paint(lung, "lung", base_hu)
    return LungMaps(mask=lung, radius=rn_lung, posterior=post_lung, d_cav=d_cav, base_hu=base_hu)


def paint_vessels(canvas: Canvas, rng: np.random.Generator, f: ChestFrame, lungs: LungMaps) -> np.ndarray:
    """Blur ``lung voxels // 120`` weighted random impulses into 30 HU vessel dots; returns their weight (S, H, W).

    Lungs must not be empty. The number of dots follows the voxel count while their size is fixed in mm (with a
    floor in voxels), so fine-spacing phantoms get many more dots per mm^3: a known quirk, kept so that phantoms
    stay reproducible.
    """
    dz, dy, dx = f.spacing
    lung_idx = lungs.index
    n_vessels = max(1, int(lung_idx.size) // 120)
    weights = (1.35 - np.clip(lungs.radius.ravel()[lung_idx], 0, 1.3)) ** 2
    picks = rng.choice(lung_idx, size=n_vessels, replace=True, p=weights / weights.sum())
    impulses = np.zeros(lungs.mask.size, dtype=np.float32)
    np.add.at(impulses, picks, rng.uniform(0.7, 1.6, size=n_vessels).astype(np.float32))
    sig = (max(0.4, 4.0 / dz), max(0.5, 1.6 / dy), max(0.5, 1.6 / dx))
    vessel = ndimage.gaussian_filter(impulses.reshape(f.shape), sig, truncate=3.0)
    peak = float(np.prod([1.0 / (np.sqrt(2 * np.pi) * s) for s in sig]))
    w_v = np.clip(vessel / (0.6 * peak), 0.0, 1.0)
    hu = canvas.hu
    hu[lungs.mask] = (hu * (1 - w_v) + 30.0 * w_v)[lungs.mask]
    return w_v
