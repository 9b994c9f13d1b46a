"""A case's chest frame: body size scaled to the field of view, mm coordinates of the voxel grid, the lung
z-extent, and the smooth random fields every structure is perturbed and textured with."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ctmil.synthetic.primitives import gaussian_fields

__all__ = ["ChestFrame", "Fields", "draw_frame", "draw_fields"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ChestFrame:
    """Geometry of one case. Lengths in mm, already multiplied by ``mm`` (the fit-to-field-of-view scale)."""

    shape: tuple[int, int, int]  # (S, H, W)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    a: float  # body lateral semi-axis
    b: float  # body antero-posterior semi-axis
    fat: float  # subcutaneous fat thickness
    gap: float  # air between the back and the couch
    couch_th: float  # couch thickness (0 without a couch)
    mm: float  # scale: multiply fixed mm sizes by this
    fov_x: float  # lateral field of view
    x: np.ndarray  # (1, 1, W) patient-left positive, mm from the body centre
    y: np.ndarray  # (1, H, 1) posterior positive, mm from the body centre
    z_mm: np.ndarray  # (S,) slice positions from slice 0
    first: int  # first lung slice
    last: int  # last lung slice
    u: np.ndarray  # (S,) 0 at the lung base, 1 at the apex
    in_lung_z: np.ndarray  # (S,) bool, first <= s <= last
    prof: np.ndarray  # (S,) lung size profile, 1 at its widest, 0 outside the lung range

    @property
    def a_c(self) -> float:
        """Thoracic cavity lateral semi-axis."""
        return self.a - self.fat - 18 * self.mm

    @property
    def b_c(self) -> float:
        """Thoracic cavity antero-posterior semi-axis."""
        return self.b - self.fat - 18 * self.mm


@dataclass(frozen=True, eq=False)
class Fields:
    """Smooth random fields ``(S, H, W)`` float32, zero mean and unit std, two per correlation length."""

    shape_f1: np.ndarray  # 25 mm: shape perturbations
    shape_f2: np.ndarray
    lesion_f1: np.ndarray  # 9 mm: lesion propensity
    lesion_f2: np.ndarray
    tex_f1: np.ndarray  # 3 mm: fine texture
    tex_f2: np.ndarray


def _body_size(rng: np.random.Generator, fov_y: float, fov_x: float, couch: str, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, ...]:
    """(a, b, fat, gap, couch_th, scale, yc): body sizes scaled to fit (with the body ``offset`` (dy, dx) mm off
    centre), and the body centre, mm from the top edge."""
    a = 150.0 * rng.uniform(0.9, 1.08)  # body lateral semi-axis
    b = 105.0 * rng.uniform(0.9, 1.08)  # body antero-posterior semi-axis
    fat = rng.uniform(10.0, 22.0)  # subcutaneous fat thickness
    gap, couch_th = rng.uniform(10.0, 20.0), 28.0 if couch != "none" else 0.0
    fov_x, fov_y = fov_x - 2 * abs(offset[1]), fov_y - 2 * abs(offset[0])
    scale = min(1.0, 0.92 * fov_x / (2 * a), 0.94 * fov_y / (2 * b + gap + couch_th))
    if scale < 1.0:
        logger.debug("field of view %.0f x %.0f mm: chest scaled by %.2f", fov_y, fov_x, scale)
    a, b, fat, gap, couch_th = (v * scale for v in (a, b, fat, gap, couch_th))
    free_y = fov_y - (2 * b + gap + couch_th)
    yc = 0.45 * free_y + b + abs(offset[0]) + offset[0]  # body centre, mm from the top edge
    return a, b, fat, gap, couch_th, scale, yc


def _lung_extent(rng: np.random.Generator, n_s: int, field_of_view: str = "chest") -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(first, last, u, in_lung_z, prof): at least two lung-free slices at each end; ``"neck_to_abdomen"`` puts the
    lungs between 32-38 % and 78-84 % of the stack, the upper abdomen below them and the neck above."""
    t_base, t_apex = rng.uniform(0.10, 0.16), rng.uniform(0.84, 0.90)
    if field_of_view == "neck_to_abdomen":
        t_base, t_apex = t_base + 0.22, t_apex - 0.06
    first = max(2, int(round(t_base * n_s)))
    last = min(n_s - 3, int(round(t_apex * n_s)) - 1)
    u = (np.arange(n_s) - first + 0.5) / (last - first + 1)  # (S,) 0 at the base, 1 at the apex
    in_lung_z = (np.arange(n_s) >= first) & (np.arange(n_s) <= last)
    uc = np.clip(u, 1e-3, 1 - 1e-3)
    prof = uc**0.35 * (1 - uc) ** 0.7
    prof = np.where(in_lung_z, prof / (prof.max() if prof.max() > 0 else 1.0), 0.0)
    return first, last, u, in_lung_z, prof


def draw_frame(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    couch: str,
    field_of_view: str = "chest",
    offset_mm: tuple[float, float] = (0.0, 0.0),
) -> ChestFrame:
    """Draw the body size, its lateral offset and the lung z-extent (checked ``shape`` and ``spacing``); the body
    lies ``offset_mm`` (dy, dx) further from the centre of the field of view (posterior and patient left positive)."""
    (n_s, n_h, n_w), (dz, dy, dx) = shape, spacing
    a, b, fat, gap, couch_th, mm, yc = _body_size(rng, n_h * dy, n_w * dx, couch, offset_mm)
    x = ((np.arange(n_w) - (n_w - 1) / 2) * dx).astype(np.float32)[None, None, :]
    x = x + np.float32(rng.uniform(-0.03, 0.03) * a) - np.float32(offset_mm[1])
    y = (np.arange(n_h) * dy - yc).astype(np.float32)[None, :, None]
    z_mm = (np.arange(n_s) * dz).astype(np.float32)
    first, last, u, in_lung_z, prof = _lung_extent(rng, n_s, field_of_view)
    return ChestFrame(
        shape=shape, spacing=spacing, a=a, b=b, fat=fat, gap=gap, couch_th=couch_th, mm=mm, fov_x=n_w * dx,
        x=x, y=y, z_mm=z_mm, first=first, last=last, u=u, in_lung_z=in_lung_z, prof=prof,
    )


def draw_fields(rng: np.random.Generator, frame: ChestFrame) -> Fields:
    """Draw the shape, lesion-propensity and texture fields, in that order."""
    shape_f1, shape_f2 = gaussian_fields(rng, frame.shape, frame.spacing, 25.0 * frame.mm)
    lesion_f1, lesion_f2 = gaussian_fields(rng, frame.shape, frame.spacing, 9.0 * frame.mm)
    tex_f1, tex_f2 = gaussian_fields(rng, frame.shape, frame.spacing, 3.0 * frame.mm)
    return Fields(shape_f1, shape_f2, lesion_f1, lesion_f2, tex_f1, tex_f2)
