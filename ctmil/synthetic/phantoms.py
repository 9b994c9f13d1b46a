"""Seeded synthetic chest-CT phantoms with COVID-19-like lesions, and writers for DICOM / NIfTI cohorts.

No patient data is ever committed: tests, benchmarks and the demo run on these phantoms. A phantom is a
drawing of a chest made of ellipses and smooth random fields, not anatomy (see ``docs/phantoms.md``).

Array convention (the ``(S, H, W)`` volume returned by :func:`make_phantom`):

* axis 0 -- slices from the **feet (index 0, inferior) to the head** (last index, superior);
* axis 1 -- rows from **anterior (row 0)** to posterior;
* axis 2 -- columns from the **patient's right (column 0)** to the patient's left (radiological display).

``spacing`` is ``(z, y, x)`` in mm. World coordinates are DICOM LPS; ``info["affine_ras"]`` maps ``(s, r, c)``
indices to RAS mm (NIfTI world).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import fft as sp_fft
from scipy import ndimage
from tqdm import tqdm

from ctmil.synthetic.dicom_writer import (
    check_spacing,
    TRANSFER_SYNTAXES,
    affine_ras,
    as_generator,
    default_origin,
    write_dicom_series,
)

__all__ = [
    "TISSUE_LABELS",
    "LESION_LABELS",
    "SEVERE_THRESHOLD",
    "SeverityParams",
    "sample_severity",
    "assign_labels",
    "make_phantom",
    "write_nifti",
    "generate_cohort",
]

logger = logging.getLogger(__name__)

#: Codes of ``info["tissue_map"]``.
TISSUE_LABELS: dict[str, int] = {
    "air": 0,  # outside the body
    "fat": 1,  # subcutaneous fat, pericardial fat
    "soft": 2,  # muscle, mediastinum, heart, liver
    "bone": 3,  # spine, ribs, sternum
    "lung": 4,  # lung parenchyma incl. vessels and lesions
    "airway": 5,  # trachea and main bronchi
    "couch": 6,  # patient table
    "gas": 7,  # stomach gas bubble below the lungs
}
#: Codes of the lesion mask.
LESION_LABELS: dict[str, int] = {"none": 0, "ggo": 1, "consolidation": 2}

#: A phantom is severe (label 1) when the lesion volume exceeds this fraction of the lung volume.
SEVERE_THRESHOLD = 0.25
#: Target involvement ranges drawn for non-severe and severe phantoms (a gap around the threshold keeps labels
#: unambiguous).
NON_SEVERE_RANGE = (0.01, 0.18)
SEVERE_RANGE = (0.32, 0.60)
#: Fraction of the lesion volume that is consolidation.
NON_SEVERE_CONSOLIDATION = (0.0, 0.12)
SEVERE_CONSOLIDATION = (0.35, 0.55)
#: Probability that a non-severe phantom has no lesion at all.
P_NO_LESION = 0.15

_HU_MIN, _HU_MAX = -1024.0, 3071.0
_MIN_SHAPE = (10, 32, 32)


@dataclass(frozen=True)
class SeverityParams:
    """Per-case disease parameters: ``involvement`` is the target lesion fraction of lung volume."""

    severe: bool
    involvement: float
    consolidation_fraction: float


def sample_severity(
    rng: np.random.Generator | int,
    *,
    severe: bool | None = None,
    severe_fraction: float = 0.25,
) -> SeverityParams:
    """Draw disease parameters; ``severe=None`` draws severity with probability ``severe_fraction``.

    Non-severe: involvement uniform in :data:`NON_SEVERE_RANGE` (0 with probability :data:`P_NO_LESION`), mostly
    ground glass. Severe: involvement uniform in :data:`SEVERE_RANGE` with 35-55 % of the lesion consolidated.
    """
    if not 0.0 <= severe_fraction <= 1.0:
        raise ValueError(f"severe_fraction must be in [0, 1], got {severe_fraction}")
    rng = as_generator(rng)
    if severe is None:
        severe = bool(rng.random() < severe_fraction)
    if severe:
        involvement = rng.uniform(*SEVERE_RANGE)
        consolidation = rng.uniform(*SEVERE_CONSOLIDATION)
    else:
        involvement = 0.0 if rng.random() < P_NO_LESION else rng.uniform(*NON_SEVERE_RANGE)
        consolidation = rng.uniform(*NON_SEVERE_CONSOLIDATION)
    return SeverityParams(bool(severe), float(involvement), float(consolidation))


def assign_labels(rng: np.random.Generator | int, n: int, severe_fraction: float = 0.25) -> np.ndarray:
    """Severity flags ``(n,)`` bool for a cohort: ``round(n * severe_fraction)`` severe cases in random order,
    clipped to ``[1, n - 1]`` when ``n >= 2`` and ``0 < severe_fraction < 1`` so both classes are present."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not 0.0 <= severe_fraction <= 1.0:
        raise ValueError(f"severe_fraction must be in [0, 1], got {severe_fraction}")
    rng = as_generator(rng)
    n_severe = int(round(n * severe_fraction))
    if n >= 2 and 0.0 < severe_fraction < 1.0:
        n_severe = min(max(n_severe, 1), n - 1)
    flags = np.zeros(n, dtype=bool)
    flags[:n_severe] = True
    return rng.permutation(flags)


# ----------------------------------------------------------------------------------------------------------------
# random fields and small geometry helpers


def _gaussian_fields(
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


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: Any, cy: Any, ax: Any, ay: Any) -> np.ndarray:
    """Squared normalised elliptical radius ((x-cx)/ax)^2 + ((y-cy)/ay)^2 (broadcasting; ax, ay > 0)."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def _validate_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple]:
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) for v in shape):
        raise ValueError(f"shape must be 3 ints (S, H, W), got {shape!r}")
    shp = tuple(int(v) for v in shape)
    if any(v < m for v, m in zip(shp, _MIN_SHAPE)):
        raise ValueError(f"shape must be at least {_MIN_SHAPE} (S, H, W), got {shp}")
    return shp, check_spacing(spacing)


# ----------------------------------------------------------------------------------------------------------------
# the phantom


def make_phantom(
    rng_or_seed: np.random.Generator | np.random.SeedSequence | int,
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] = (5.0, 2.7, 2.7),
    *,
    severe: bool | None = None,
    involvement: float | None = None,
    consolidation_fraction: float | None = None,
    severe_fraction: float = 0.25,
    severe_threshold: float = SEVERE_THRESHOLD,
    noise_hu: float = 12.0,
    couch: str = "solid",
    origin: Sequence[float] | None = None,
    dtype: np.dtype | type = np.int16,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one synthetic chest CT in Hounsfield units.

    Args:
        rng_or_seed: numpy Generator, SeedSequence or int seed; the only source of randomness.
        shape: ``(S, H, W)``, at least ``(10, 32, 32)``. The chest is scaled down to fit the in-plane field of view
            if ``H * y`` / ``W * x`` are too small for an adult chest (about 300 x 210 mm plus the couch).
        spacing: ``(z, y, x)`` mm; the default gives a 346 mm field of view and a 240 mm long stack.
        severe: force the severity; ``None`` draws it with probability ``severe_fraction``.
        involvement: force the lesion fraction of lung volume in ``[0, 0.8]`` (overrides ``severe``).
        consolidation_fraction: force the consolidated fraction of the lesion volume in ``[0, 1]``.
        severe_threshold: label rule, ``label = int(involvement > severe_threshold)``.
        noise_hu: standard deviation of the (slightly correlated) image noise.
        couch: ``"solid"`` (dense band), ``"foam"`` (two dense shells around a -850 HU foam core: a lung-like
            region outside the body) or ``"none"``.
        origin: LPS mm position of voxel ``(0, 0, 0)``; default centres the slices, last slice at z = 0.
        dtype: ``np.int16`` (rounded HU, default) or a float dtype.

    Returns:
        ``volume (S, H, W)`` HU clipped to [-1024, 3071]; ``lesion_mask (S, H, W)`` uint8 (0 none, 1 ground-glass
        opacity, 2 consolidation); ``info`` dict with ``label`` (0/1), ``severe``, ``involvement`` (measured lesion
        fraction of lung voxels), ``target_involvement``, ``consolidation_fraction`` (measured), ``lung_voxels``,
        ``lesion_voxels``, ``slice_involvement`` ``(S,)`` list, ``lung_slices`` (first, last) indices,
        ``spacing``, ``shape``, ``origin_lps``, ``affine_ras`` (4x4 list) and the arrays ``lung_mask``
        ``(S, H, W)`` bool and ``tissue_map`` ``(S, H, W)`` uint8 (codes in :data:`TISSUE_LABELS`).
    """
    (n_s, n_h, n_w), (dz, dy, dx) = _validate_geometry(shape, spacing)
    if couch not in ("solid", "foam", "none"):
        raise ValueError(f"couch must be 'solid', 'foam' or 'none', got {couch!r}")
    if not (np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be non-negative, got {noise_hu}")
    if involvement is not None and not 0.0 <= involvement <= 0.8:
        raise ValueError(f"involvement must be in [0, 0.8], got {involvement}")
    if consolidation_fraction is not None and not 0.0 <= consolidation_fraction <= 1.0:
        raise ValueError(f"consolidation_fraction must be in [0, 1], got {consolidation_fraction}")
    if not 0.0 < severe_threshold < 1.0:
        raise ValueError(f"severe_threshold must be in (0, 1), got {severe_threshold}")
    if not (np.issubdtype(np.dtype(dtype), np.floating) or np.dtype(dtype) == np.int16):
        raise ValueError(f"dtype must be int16 or a float dtype, got {dtype!r}")
    rng = as_generator(rng_or_seed)

    sev = sample_severity(rng, severe=severe, severe_fraction=severe_fraction)
    target = sev.involvement if involvement is None else float(involvement)
    cons_frac = sev.consolidation_fraction if consolidation_fraction is None else float(consolidation_fraction)

    # ---- case anatomy parameters (mm), scaled to fit the field of view
    a = 150.0 * rng.uniform(0.9, 1.08)  # body lateral semi-axis
    b = 105.0 * rng.uniform(0.9, 1.08)  # body antero-posterior semi-axis
    fat = rng.uniform(10.0, 22.0)  # subcutaneous fat thickness
    gap, couch_th = rng.uniform(10.0, 20.0), 28.0 if couch != "none" else 0.0
    fov_x, fov_y = n_w * dx, n_h * dy
    scale = min(1.0, 0.92 * fov_x / (2 * a), 0.94 * fov_y / (2 * b + gap + couch_th))
    if scale < 1.0:
        logger.debug("field of view %.0f x %.0f mm: chest scaled by %.2f", fov_y, fov_x, scale)
    a, b, fat, gap, couch_th = (v * scale for v in (a, b, fat, gap, couch_th))
    mm = scale  # multiply fixed mm sizes by this
    free_y = fov_y - (2 * b + gap + couch_th)
    yc = 0.45 * free_y + b  # body centre, mm from the top edge
    a_c, b_c = a - fat - 18 * mm, b - fat - 18 * mm  # thoracic cavity semi-axes

    # ---- coordinates: X (1, 1, W) patient-left positive, Y (1, H, 1) posterior positive, both mm from body centre
    x = ((np.arange(n_w) - (n_w - 1) / 2) * dx).astype(np.float32)[None, None, :]
    x = x + np.float32(rng.uniform(-0.03, 0.03) * a)
    y = (np.arange(n_h) * dy - yc).astype(np.float32)[None, :, None]
    z_mm = (np.arange(n_s) * dz).astype(np.float32)

    # lung z-extent: at least two lung-free slices at each end
    t_base, t_apex = rng.uniform(0.10, 0.16), rng.uniform(0.84, 0.90)
    first = max(2, int(round(t_base * n_s)))
    last = min(n_s - 3, int(round(t_apex * n_s)) - 1)
    u = (np.arange(n_s) - first + 0.5) / (last - first + 1)  # (S,) 0 at the base, 1 at the apex
    in_lung_z = (np.arange(n_s) >= first) & (np.arange(n_s) <= last)
    uc = np.clip(u, 1e-3, 1 - 1e-3)
    prof = uc**0.35 * (1 - uc) ** 0.7
    prof = np.where(in_lung_z, prof / (prof.max() if prof.max() > 0 else 1.0), 0.0)

    def per_slice(v: np.ndarray) -> np.ndarray:
        """(S,) -> (S, 1, 1); floats as float32 so full volumes stay float32."""
        v = np.asarray(v)
        return (v.astype(np.float32) if v.dtype.kind == "f" else v)[:, None, None]

    shape3 = (n_s, n_h, n_w)
    shape_f1, shape_f2 = _gaussian_fields(rng, shape3, (dz, dy, dx), 25.0 * mm)  # shape perturbations
    lesion_f1, lesion_f2 = _gaussian_fields(rng, shape3, (dz, dy, dx), 9.0 * mm)  # lesion propensity
    tex_f1, tex_f2 = _gaussian_fields(rng, shape3, (dz, dy, dx), 3.0 * mm)  # fine texture

    tissue = np.zeros(shape3, dtype=np.uint8)
    hu = np.full(shape3, -1000.0, dtype=np.float32)

    # ---- couch: a band below the body, separated from it by air
    if couch != "none":
        y_top = b + gap - 6 * mm * (x / a) ** 2
        band = (y >= y_top) & (y < y_top + couch_th) & (np.abs(x) < 0.46 * fov_x)
        band = np.broadcast_to(band, shape3)
        tissue[band] = TISSUE_LABELS["couch"]
        if couch == "solid":
            hu[band] = 220.0
        else:
            shell = (y < y_top + 4 * mm) | (y >= y_top + couch_th - 4 * mm)
            hu[band] = np.broadcast_to(np.where(shell, 300.0, -850.0), shape3)[band]

    # ---- body: fat ring around soft tissue
    y_flat = np.where(y > 0, y * 1.06, y)  # back flattened on the table
    d_body = _ellipse(x, y_flat, 0.0, 0.0, a, b) * (1 + 0.03 * shape_f2)
    body = d_body < 1.0
    inner = _ellipse(x, y_flat, 0.0, 0.0, a - fat, b - fat) * (1 + 0.03 * shape_f2) < 1.0
    tissue[body] = TISSUE_LABELS["fat"]
    hu[body] = (-100.0 + 8.0 * tex_f2)[body]
    tissue[inner] = TISSUE_LABELS["soft"]
    hu[inner] = (45.0 + 6.0 * tex_f2)[inner]

    # ---- mediastinum and heart
    h_prof = per_slice(np.sqrt(np.clip(1 - ((u - 0.3) / 0.38) ** 2, 0, 1)))
    heart_ax = 0.42 * a_c * h_prof + 1e-3
    heart_ay = 0.52 * b_c * h_prof + 1e-3
    d_heart = _ellipse(x, y, 0.2 * a_c, -0.25 * b_c, heart_ax, heart_ay)
    d_med_ant = _ellipse(x, y, 0.0, -0.3 * b_c, 0.2 * a_c, 0.5 * b_c)
    d_med_post = _ellipse(x, y, 0.0, 0.35 * b_c, 0.12 * a_c, 0.55 * b_c)
    d_aorta = _ellipse(x, y, 0.18 * a_c, 0.42 * b_c, 12 * mm, 12 * mm)
    pleura = 4 * mm
    mediastinum = (
        (_ellipse(x, y, 0.2 * a_c, -0.25 * b_c, heart_ax + pleura, heart_ay + pleura) < 1)
        | (_ellipse(x, y, 0.0, -0.3 * b_c, 0.2 * a_c + pleura, 0.5 * b_c + pleura) < 1)
        | (_ellipse(x, y, 0.0, 0.35 * b_c, 0.12 * a_c + pleura, 0.55 * b_c + pleura) < 1)
        | (d_aorta < 1.6)
    )
    epicardial_fat = (d_heart < 1.0) & (d_heart > 0.8) & ~((d_med_ant < 1) | (d_med_post < 1) | (d_aorta < 1))
    heart = d_heart <= 0.8
    hu[epicardial_fat & inner] = -90.0
    tissue[epicardial_fat & inner] = TISSUE_LABELS["fat"]
    hu[(heart | (d_med_ant < 1) | (d_med_post < 1) | (d_aorta < 1)) & inner] = 40.0

    # ---- spine: vertebral body (cancellous core, cortical rim, discs), canal, spinous process
    y_sp = 0.48 * b
    r_vb = 0.15 * b
    d_vb = _ellipse(x, y, 0.0, y_sp, r_vb * 1.1, r_vb)
    disc = per_slice((z_mm % (30.0 * mm)) < max(dz, 5.0 * mm) * 0.8)
    vb_core = np.where(disc, 80.0, 260.0)
    spine_bone = (d_vb < 1) | (
        (_ellipse(x, y, 0.0, y_sp + 0.8 * r_vb + 7 * mm, 13 * mm, 11 * mm) < 1)
        & ~(_ellipse(x, y, 0.0, y_sp + 0.8 * r_vb + 7 * mm, 7 * mm, 7 * mm) < 1)
    ) | (_ellipse(x, y, 0.0, y_sp + 0.8 * r_vb + 25 * mm, 4 * mm, 14 * mm) < 1)
    spine_bone = np.broadcast_to(spine_bone, shape3)
    bone_hu = np.where(d_vb < 0.6, vb_core, 650.0)
    tissue[spine_bone] = TISSUE_LABELS["bone"]
    hu[spine_bone] = np.broadcast_to(bone_hu, shape3)[spine_bone] + (25.0 * tex_f1)[spine_bone]
    canal = np.broadcast_to(_ellipse(x, y, 0.0, y_sp + 0.8 * r_vb + 7 * mm, 6 * mm, 6 * mm) < 1, shape3)
    hu[canal] = 15.0
    tissue[canal] = TISSUE_LABELS["soft"]

    # ---- lungs
    lung = np.zeros(shape3, dtype=bool)
    rn_lung = np.full(shape3, 2.0, dtype=np.float32)  # normalised radius inside the lung ellipse (1 = edge)
    post_lung = np.zeros(shape3, dtype=np.float32)  # -1 anterior .. +1 posterior inside the lung
    d_cav = _ellipse(x, y, 0.0, 0.0, a_c, b_c)
    p = per_slice(prof)
    for side, size in ((-1.0, rng.uniform(1.0, 1.08)), (1.0, rng.uniform(0.92, 1.0))):  # right, left lung
        cx = side * a_c * (0.5 + 0.1 * p)
        cy = 0.1 * b_c * (1 - p) + 0.05 * b_c
        ax = 0.52 * a_c * p * size + 1e-3
        ay = 0.95 * b_c * np.power(p, 0.6) * size + 1e-3
        d_l = _ellipse(x, y, cx, cy, ax, ay)
        side_lung = (d_l < 1.0 + 0.15 * shape_f1) & (d_cav < 0.97) & (p > 0.02)
        # diaphragm dome pushes up into the base of each lung
        dome_r = per_slice(np.sqrt(np.clip(1 - u / 0.3, 0, 1)))
        d_dome = _ellipse(x, y, cx, cy - 0.15 * b_c, ax * 1.1 * dome_r + 1e-3, ay * 0.9 * dome_r + 1e-3)
        side_lung &= ~(d_dome < 1.0)
        side_lung &= (x * side) > 0
        lung |= side_lung
        rn_lung = np.where(side_lung, np.sqrt(d_l), rn_lung)
        post_lung = np.where(side_lung, np.clip((y - cy) / ay, -1, 1), post_lung)
    lung &= inner & ~mediastinum & ~spine_bone
    lung &= ~(_ellipse(x, y, 0.0, y_sp, r_vb * 1.1 + 8 * mm, r_vb + 8 * mm) < 1)  # paravertebral tissue
    lung &= ~((np.abs(x) < 0.15 * a_c) & (y > y_sp - r_vb))  # paraspinal muscles between the lungs
    lung[~in_lung_z] = False
    tissue[lung] = TISSUE_LABELS["lung"]
    lung_base = -860.0 + 28.0 * tex_f1 + 45.0 * post_lung  # dependent (posterior) lung is denser
    hu[lung] = lung_base[lung]

    # ---- liver dome and stomach gas below / under the lungs
    liver = (inner & ~lung & (d_body < 0.9)) & (
        _ellipse(x, y, -0.3 * a_c, 0.0, 0.65 * a_c, 0.8 * b_c) < per_slice(np.clip(1.0 - u / 0.25, 0, 1))
    )
    liver &= ~spine_bone & ~canal
    hu[liver] = 58.0
    tissue[liver] = TISSUE_LABELS["soft"]
    gas = (per_slice(np.arange(n_s) < first) & (_ellipse(x, y, 0.45 * a_c, -0.3 * b_c, 16 * mm, 12 * mm) < 1)) & inner
    hu[gas] = -1000.0
    tissue[gas] = TISSUE_LABELS["gas"]

    # ---- ribs (oblique, so arcs rotate with z) and sternum, over the lung range (+1 slice)
    rib_z = per_slice((np.arange(n_s) >= first - 1) & (np.arange(n_s) <= last + 1))
    rc = np.sqrt(d_cav)
    theta = np.arctan2(y / b_c, x / a_c)
    rib_phase = per_slice(2 * np.pi * z_mm / (40.0 * mm))
    ribs = (rc > 1.02) & (rc < 1.02 + 9 * mm / a_c) & (np.cos(9 * theta + rib_phase) > 0.45) & rib_z
    ribs &= ~(np.abs(x) < 0.12 * a_c) & inner
    sternum = (_ellipse(x, y, 0.0, -b_c - 9 * mm, 14 * mm, 6 * mm) < 1) & per_slice((u > 0.25) & (u < 0.95))
    ribs |= sternum & inner
    hu[ribs] = 600.0 + 40.0 * tex_f2[ribs]
    tissue[ribs] = TISSUE_LABELS["bone"]

    # ---- trachea from the top of the stack down to the carina, then two main bronchi
    u_car = rng.uniform(0.55, 0.65)
    y_tr = y_sp - r_vb - 14 * mm
    r_tr = 9 * mm
    above = per_slice(u >= u_car)
    airway = above & (_ellipse(x, y, 0.0, y_tr, r_tr, r_tr * 0.9) < 1)
    br_prog = per_slice(np.clip((u_car - u) / 0.12, 0, 1))
    br_on = per_slice((u < u_car) & (u >= u_car - 0.12))
    for side in (-1.0, 1.0):
        bx = side * (6 * mm + br_prog * 0.3 * a_c)
        airway |= br_on & (_ellipse(x, y, bx, y_tr, 0.65 * r_tr, 0.65 * r_tr) < 1)
    airway &= inner
    hu[airway] = -1000.0
    tissue[airway] = TISSUE_LABELS["airway"]

    # ---- vessels: small bright blobs in the lungs, denser and bigger towards the hilum
    lung_idx = np.flatnonzero(lung)
    lesion = np.zeros(shape3, dtype=np.uint8)
    n_lung = int(lung_idx.size)
    if n_lung:
        n_vessels = max(1, n_lung // 120)
        weights = (1.35 - np.clip(rn_lung.ravel()[lung_idx], 0, 1.3)) ** 2
        picks = rng.choice(lung_idx, size=n_vessels, replace=True, p=weights / weights.sum())
        impulses = np.zeros(lung.size, dtype=np.float32)
        np.add.at(impulses, picks, rng.uniform(0.7, 1.6, size=n_vessels).astype(np.float32))
        sig = (max(0.4, 4.0 / dz), max(0.5, 1.6 / dy), max(0.5, 1.6 / dx))
        vessel = ndimage.gaussian_filter(impulses.reshape(shape3), sig, truncate=3.0)
        peak = float(np.prod([1.0 / (np.sqrt(2 * np.pi) * s) for s in sig]))
        w_v = np.clip(vessel / (0.6 * peak), 0.0, 1.0)
        hu[lung] = (hu * (1 - w_v) + 30.0 * w_v)[lung]

        # ---- lesions: top quantile of a propensity field (smooth noise + peripheral, posterior and basal bias)
        periph = np.clip(np.maximum(rn_lung, np.sqrt(d_cav) / 0.97), 0, 1.2)
        field = lesion_f1 + 0.5 * lesion_f2 + 1.2 * periph + 0.6 * post_lung + 0.4 * per_slice(1 - np.clip(u, 0, 1))
        f_lung = field.ravel()[lung_idx]
        if target > 0:
            thr = float(np.quantile(f_lung, 1.0 - target))
            soft = 0.12 * float(f_lung.std())
            in_lesion = lung & (field > thr)
            w_g = _smoothstep((field - thr + soft) / (2 * soft)) * lung  # 0.5 at the mask edge: fuzzy blobs
            ggo_hu = -460.0 + 50.0 * tex_f2
            hu += w_g * (ggo_hu - lung_base) * (1 - w_v)  # vessels stay visible through ground glass
            lesion[in_lesion] = LESION_LABELS["ggo"]
            f_les = field[in_lesion]
            if cons_frac > 0 and f_les.size:
                thr_c = float(np.quantile(f_les, 1.0 - cons_frac))
                soft_c = 0.5 * soft
                w_c = _smoothstep((field - thr_c + soft_c) / (2 * soft_c)) * lung
                cons_hu = 15.0 + 15.0 * tex_f2
                hu = hu * (1 - w_c) + cons_hu * w_c
                lesion[in_lesion & (field > thr_c)] = LESION_LABELS["consolidation"]

    # ---- partial volume blur, correlated noise, clip
    hu = ndimage.gaussian_filter(hu, (0, 0.6, 0.6), truncate=2.5)
    if noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape3, dtype=np.float32), (0, 0.7, 0.7), truncate=2.5)
        hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    volume = np.rint(hu).astype(np.int16) if np.dtype(dtype) == np.int16 else hu.astype(dtype)

    n_lesion = int(np.count_nonzero(lesion))
    measured = n_lesion / n_lung if n_lung else 0.0
    lung_per_slice = lung.sum(axis=(1, 2))
    lesion_per_slice = (lesion > 0).sum(axis=(1, 2))
    slice_inv = np.where(lung_per_slice > 0, lesion_per_slice / np.maximum(lung_per_slice, 1), 0.0)
    lung_slices = np.flatnonzero(lung_per_slice)
    if origin is None:
        origin = default_origin(shape3, (dz, dy, dx))
    info: dict[str, Any] = {
        "label": int(measured > severe_threshold),
        "severe": bool(measured > severe_threshold),
        "involvement": float(measured),
        "target_involvement": float(target),
        "severe_threshold": float(severe_threshold),
        "consolidation_fraction": float(np.count_nonzero(lesion == 2) / n_lesion) if n_lesion else 0.0,
        "lung_voxels": n_lung,
        "lesion_voxels": n_lesion,
        "slice_involvement": [float(v) for v in slice_inv],
        "lung_slices": (int(lung_slices[0]), int(lung_slices[-1])) if lung_slices.size else (-1, -1),
        "shape": shape3,
        "spacing": (dz, dy, dx),
        "origin_lps": tuple(float(v) for v in origin),
        "affine_ras": affine_ras((dz, dy, dx), origin).tolist(),
        "lung_mask": lung,
        "tissue_map": tissue,
    }
    return volume, lesion, info


# ----------------------------------------------------------------------------------------------------------------
# NIfTI


def write_nifti(
    volume: np.ndarray,
    spacing: Sequence[float],
    path: str | os.PathLike,
    *,
    origin: Sequence[float] | None = None,
    layout: str = "ras",
) -> Path:
    """Write an ``(S, H, W)`` volume (phantom convention) as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically.

    ``layout="ras"`` (default) stores the canonical array ``A[i, j, k] = volume[k, H-1-j, W-1-i]`` with a
    positive diagonal affine: ``i`` patient right-wards, ``j`` anterior-wards, ``k`` head-wards, so nibabel,
    ``nib.as_closest_canonical`` and MONAI ``LoadImage`` + ``Orientation("RAS")`` all return ``A`` unchanged.
    ``layout="shw"`` stores ``volume`` as is with the permuted affine ``info["affine_ras"]``; readers must then
    reorient. Either way ``LoadImage`` + ``Orientation("LPS")`` + ``permute(2, 1, 0)`` gives back ``volume``.
    The integer dtype is kept (int16 HU, slope 1, intercept 0); ``.nii.gz`` bytes are deterministic (mtime 0).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (S, H, W), got shape {vol.shape}")
    dz, dy, dx = check_spacing(spacing)
    if layout not in ("ras", "shw"):
        raise ValueError(f"layout must be 'ras' or 'shw', got {layout!r}")
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"path must end with .nii or .nii.gz, got {path.name}")
    if origin is None:
        origin = default_origin(vol.shape, (dz, dy, dx))
    aff_shw = affine_ras((dz, dy, dx), origin)  # (s, r, c) -> RAS
    if layout == "ras":
        data = np.ascontiguousarray(vol.transpose(2, 1, 0)[::-1, ::-1, :])
        n_s, n_h, n_w = vol.shape
        # (i, j, k) = (W-1-c, H-1-r, s)  ->  RAS
        index_map = np.array(
            [[0, 0, 1, 0], [0, -1, 0, n_h - 1], [-1, 0, 0, n_w - 1], [0, 0, 0, 1]], dtype=float
        )  # (i, j, k, 1) -> (s, r, c, 1)
        affine = aff_shw @ index_map
        zooms = (dx, dy, dz)
    else:
        data, affine, zooms = np.ascontiguousarray(vol), aff_shw, (dz, dy, dx)
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ----------------------------------------------------------------------------------------------------------------
# cohorts


def _case_rngs(seed: int, n: int) -> tuple[np.random.Generator, list[np.random.SeedSequence]]:
    """One generator for cohort-level draws and one SeedSequence per case (case i's does not depend on n)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    cohort = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(0,)))
    return cohort, [np.random.SeedSequence(int(seed), spawn_key=(1, i)) for i in range(n)]


def generate_cohort(
    out_dir: str | os.PathLike,
    n: int = 16,
    seed: int = 0,
    formats: Sequence[str] = ("dicom", "nifti"),
    shape: Sequence[int] = (48, 128, 128),
    spacing: Sequence[float] = (5.0, 2.7, 2.7),
    severe_fraction: float = 0.25,
    *,
    write_masks: bool = False,
    transfer_syntax: str = "explicit",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Write ``n`` phantoms and ``labels.csv`` under ``out_dir``; return the label table.

    Layout: ``dicom/<case_id>/IM######`` (one shuffled-name series per case), ``nifti/<case_id>.nii.gz``
    (``layout="ras"``, see :func:`write_nifti`), ``labels.csv`` with columns ``case_id, label, involvement,
    dicom_dir, nifti_path`` (paths relative to ``out_dir``, empty when the format was not asked for) and, with
    ``write_masks``, ``lesion_mask_path, lung_mask_path`` (``masks/<case_id>_{lesion,lung}.nii.gz``, same layout).
    Exactly ``round(n * severe_fraction)`` cases are severe, clipped to ``[1, n - 1]`` when ``n >= 2``
    (:func:`assign_labels`) -- both classes are present for ``n >= 2`` unless ``severe_fraction`` is 0 or 1.
    Output bytes, UIDs included, depend only on the arguments (no clock, no global RNG); case ``i``'s phantom
    depends on ``seed``, ``i``, its label, ``shape`` and ``spacing``. Each case folder / file is written under a
    temporary name and renamed. Empty path cells read back as NaN with :func:`pandas.read_csv`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    fmts = tuple(formats)
    if not fmts or any(f not in ("dicom", "nifti") for f in fmts):
        raise ValueError(f"formats must be a non-empty subset of ('dicom', 'nifti'), got {formats!r}")
    _validate_geometry(shape, spacing)
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    cohort_rng, case_ss = _case_rngs(seed, int(n))
    flags = assign_labels(cohort_rng, int(n), severe_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rows = []
    for i in tqdm(range(int(n)), desc="phantoms", disable=None if progress is None else not progress):
        case_id = f"case_{i:04d}"
        case_rng = np.random.default_rng(case_ss[i])
        vol, lesion, info = make_phantom(case_rng, shape, spacing, severe=bool(flags[i]))
        row: dict[str, Any] = {
            "case_id": case_id,
            "label": info["label"],
            "involvement": round(info["involvement"], 6),
            "dicom_dir": "",
            "nifti_path": "",
        }
        if "dicom" in fmts:
            final = out / "dicom" / case_id
            tmp = out / "dicom" / f".{case_id}.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            write_dicom_series(
                vol,
                info["spacing"],
                tmp,
                rng=case_rng,
                patient_id=f"PH{seed}-{i:04d}",
                patient_name=f"PHANTOM^{i:04d}",
                origin=info["origin_lps"],
                transfer_syntax=transfer_syntax,
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            row["dicom_dir"] = final.relative_to(out).as_posix()
        if "nifti" in fmts:
            path = write_nifti(vol, info["spacing"], out / "nifti" / f"{case_id}.nii.gz", origin=info["origin_lps"])
            row["nifti_path"] = path.relative_to(out).as_posix()
        if write_masks:
            for name, arr in (("lesion", lesion), ("lung", info["lung_mask"].astype(np.uint8))):
                mask_path = out / "masks" / f"{case_id}_{name}.nii.gz"
                path = write_nifti(arr, info["spacing"], mask_path, origin=info["origin_lps"])
                row[f"{name}_mask_path"] = path.relative_to(out).as_posix()
        rows.append(row)

    table = pd.DataFrame(rows)
    csv_tmp = out / ".labels.csv.tmp"
    table.to_csv(csv_tmp, index=False)
    os.replace(csv_tmp, out / "labels.csv")
    logger.info("wrote %d phantoms (%d severe) to %s", len(table), int(table["label"].sum()), out)
    return table
