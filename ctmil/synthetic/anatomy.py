"""The chest outside the lungs, drawn onto a :class:`~ctmil.synthetic.primitives.Canvas`: couch, body wall,
mediastinum and heart, spine, liver dome and stomach gas, ribs and sternum, trachea and main bronchi.

Each ``paint_*`` function overwrites what earlier ones drew where its structure lies, so the order in
:func:`ctmil.synthetic.chest.make_phantom` matters. Only :func:`paint_airway` draws from the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctmil.synthetic.chest_frame import ChestFrame, Fields
from ctmil.synthetic.primitives import Canvas, ellipse, per_slice

__all__ = [
    "Spine",
    "paint_couch",
    "paint_body",
    "paint_mediastinum",
    "paint_spine",
    "paint_abdomen",
    "paint_ribs",
    "paint_airway",
]


@dataclass(frozen=True, eq=False)
class Spine:
    """Vertebral column masks ``(S, H, W)`` and the vertebral body's centre row ``y`` and radius ``r`` (mm)."""

    bone: np.ndarray
    canal: np.ndarray
    y: float
    r: float


def paint_couch(canvas: Canvas, f: ChestFrame, couch: str) -> None:
    """A band below the body, separated from it by air: ``"solid"``, ``"foam"`` (dense shells, foam core)."""
    if couch == "none":
        return
    x, y, mm = f.x, f.y, f.mm
    y_top = f.b + f.gap - 6 * mm * (x / f.a) ** 2
    band = (y >= y_top) & (y < y_top + f.couch_th) & (np.abs(x) < 0.46 * f.fov_x)
    band = np.broadcast_to(band, f.shape)
    if couch == "solid":
        canvas.paint(band, "couch", 220.0)
    else:
        shell = (y < y_top + 4 * mm) | (y >= y_top + f.couch_th - 4 * mm)
        canvas.paint(band, "couch", np.where(shell, 300.0, -850.0))


def paint_body(canvas: Canvas, f: ChestFrame, fields: Fields) -> tuple[np.ndarray, np.ndarray]:
    """Fat ring around soft tissue; returns the body's squared elliptical radius and the inside of the fat ring."""
    y_flat = np.where(f.y > 0, f.y * 1.06, f.y)  # back flattened on the table
    d_body = ellipse(f.x, y_flat, 0.0, 0.0, f.a, f.b) * (1 + 0.03 * fields.shape_f2)
    body = d_body < 1.0
    inner = ellipse(f.x, y_flat, 0.0, 0.0, f.a - f.fat, f.b - f.fat) * (1 + 0.03 * fields.shape_f2) < 1.0
    canvas.paint(body, "fat", -100.0 + 8.0 * fields.tex_f2)
    canvas.paint(inner, "soft", 45.0 + 6.0 * fields.tex_f2)
    return d_body, inner


def paint_mediastinum(canvas: Canvas, f: ChestFrame, inner: np.ndarray) -> np.ndarray:
    """Heart with epicardial fat, anterior and posterior mediastinum, aorta; returns the mediastinum with pleura."""
    x, y, a_c, b_c, mm = f.x, f.y, f.a_c, f.b_c, f.mm
    h_prof = per_slice(np.sqrt(np.clip(1 - ((f.u - 0.3) / 0.38) ** 2, 0, 1)))
    heart_ax = 0.42 * a_c * h_prof + 1e-3
    heart_ay = 0.52 * b_c * h_prof + 1e-3
    d_heart = ellipse(x, y, 0.2 * a_c, -0.25 * b_c, heart_ax, heart_ay)
    d_med_ant = ellipse(x, y, 0.0, -0.3 * b_c, 0.2 * a_c, 0.5 * b_c)
    d_med_post = ellipse(x, y, 0.0, 0.35 * b_c, 0.12 * a_c, 0.55 * b_c)
    d_aorta = ellipse(x, y, 0.18 * a_c, 0.42 * b_c, 12 * mm, 12 * mm)
    pleura = 4 * mm
    mediastinum = (
        (ellipse(x, y, 0.2 * a_c, -0.25 * b_c, heart_ax + pleura, heart_ay + pleura) < 1)
        | (ellipse(x, y, 0.0, -0.3 * b_c, 0.2 * a_c + pleura, 0.5 * b_c + pleura) < 1)
        | (ellipse(x, y, 0.0, 0.35 * b_c, 0.12 * a_c + pleura, 0.55 * b_c + pleura) < 1)
        | (d_aorta < 1.6)
    )
    epicardial_fat = (d_heart < 1.0) & (d_heart > 0.8) & ~((d_med_ant < 1) | (d_med_post < 1) | (d_aorta < 1))
    heart = d_heart <= 0.8
    canvas.paint(epicardial_fat & inner, "fat", -90.0)
    canvas.paint((heart | (d_med_ant < 1) | (d_med_post < 1) | (d_aorta < 1)) & inner, None, 40.0)
    return mediastinum


def paint_spine(canvas: Canvas, f: ChestFrame, fields: Fields) -> Spine:
    """Vertebral body (cancellous core, cortical rim, discs), neural arch around the canal, spinous process."""
    x, y, mm, dz = f.x, f.y, f.mm, f.spacing[0]
    y_sp = 0.48 * f.b
    r_vb = 0.15 * f.b
    d_vb = ellipse(x, y, 0.0, y_sp, r_vb * 1.1, r_vb)
    disc = per_slice((f.z_mm % (30.0 * mm)) < max(dz, 5.0 * mm) * 0.8)
    vb_core = np.where(disc, 80.0, 260.0)
    y_canal = y_sp + 0.8 * r_vb + 7 * mm
    spine_bone = (d_vb < 1) | (
        (ellipse(x, y, 0.0, y_canal, 13 * mm, 11 * mm) < 1) & ~(ellipse(x, y, 0.0, y_canal, 7 * mm, 7 * mm) < 1)
    ) | (ellipse(x, y, 0.0, y_sp + 0.8 * r_vb + 25 * mm, 4 * mm, 14 * mm) < 1)
    spine_bone = np.broadcast_to(spine_bone, f.shape)
    bone_hu = np.where(d_vb < 0.6, vb_core, 650.0)
    canvas.paint(spine_bone, "bone", np.broadcast_to(bone_hu, f.shape) + 25.0 * fields.tex_f1)
    canal = np.broadcast_to(ellipse(x, y, 0.0, y_canal, 6 * mm, 6 * mm) < 1, f.shape)
    canvas.paint(canal, "soft", 15.0)
    return Spine(bone=spine_bone, canal=canal, y=y_sp, r=r_vb)


def paint_abdomen(
    canvas: Canvas, f: ChestFrame, inner: np.ndarray, d_body: np.ndarray, lung: np.ndarray, spine: Spine
) -> None:
    """Liver dome under the right lung base and a stomach gas bubble below the lungs."""
    x, y, a_c, b_c, mm = f.x, f.y, f.a_c, f.b_c, f.mm
    liver = (inner & ~lung & (d_body < 0.9)) & (
        ellipse(x, y, -0.3 * a_c, 0.0, 0.65 * a_c, 0.8 * b_c) < per_slice(np.clip(1.0 - f.u / 0.25, 0, 1))
    )
    liver &= ~spine.bone & ~spine.canal
    canvas.paint(liver, "soft", 58.0)
    below_lungs = per_slice(np.arange(f.shape[0]) < f.first)
    gas = (below_lungs & (ellipse(x, y, 0.45 * a_c, -0.3 * b_c, 16 * mm, 12 * mm) < 1)) & inner
    canvas.paint(gas, "gas", -1000.0)


def paint_ribs(canvas: Canvas, f: ChestFrame, fields: Fields, d_cav: np.ndarray, inner: np.ndarray) -> None:
    """Ribs (oblique, so arcs rotate with z) and sternum, over the lung range (+1 slice)."""
    x, y, a_c, b_c, mm = f.x, f.y, f.a_c, f.b_c, f.mm
    slices = np.arange(f.shape[0])
    rib_z = per_slice((slices >= f.first - 1) & (slices <= f.last + 1))
    rc = np.sqrt(d_cav)
    theta = np.arctan2(y / b_c, x / a_c)
    rib_phase = per_slice(2 * np.pi * f.z_mm / (40.0 * mm))
    ribs = (rc > 1.02) & (rc < 1.02 + 9 * mm / a_c) & (np.cos(9 * theta + rib_phase) > 0.45) & rib_z
    ribs &= ~(np.abs(x) < 0.12 * a_c) & inner
    sternum = (ellipse(x, y, 0.0, -b_c - 9 * mm, 14 * mm, 6 * mm) < 1) & per_slice((f.u > 0.25) & (f.u < 0.95))
    ribs |= sternum & inner
    canvas.paint(ribs, "bone", 600.0 + 40.0 * fields.tex_f2)


def paint_airway(canvas: Canvas, rng: np.random.Generator, f: ChestFrame, inner: np.ndarray, spine: Spine) -> None:
    """Trachea from the top of the stack down to a drawn carina level, then two main bronchi."""
    x, y, mm = f.x, f.y, f.mm
    u_car = rng.uniform(0.55, 0.65)
    y_tr = spine.y - spine.r - 14 * mm
    r_tr = 9 * mm
    above = per_slice(f.u >= u_car)
    airway = above & (ellipse(x, y, 0.0, y_tr, r_tr, r_tr * 0.9) < 1)
    br_prog = per_slice(np.clip((u_car - f.u) / 0.12, 0, 1))
    br_on = per_slice((f.u < u_car) & (f.u >= u_car - 0.12))
    for side in (-1.0, 1.0):
        bx = side * (6 * mm + br_prog * 0.3 * f.a_c)
        airway |= br_on & (ellipse(x, y, bx, y_tr, 0.65 * r_tr, 0.65 * r_tr) < 1)
    airway &= inner
    canvas.paint(airway, "airway", -1000.0)
