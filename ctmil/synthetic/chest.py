"""One synthetic chest CT in Hounsfield units: :func:`make_phantom` draws the frame, paints the anatomy, lungs,
vessels and lesions in a fixed order, then blurs, adds noise and measures the ground truth.

Arrays are ``(S, H, W)`` (feet to head, anterior to posterior, patient right to left) with ``spacing``
``(z, y, x)`` mm, as in :mod:`ctmil.synthetic.geometry`. Every random draw comes from the one generator passed
in, in a fixed order, so a seed gives the same bytes on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ctmil.synthetic.anatomy import (
    paint_abdomen,
    paint_airway,
    paint_body,
    paint_couch,
    paint_mediastinum,
    paint_ribs,
    paint_spine,
)
from ctmil.synthetic.chest_frame import ChestFrame, Fields, draw_fields, draw_frame
from ctmil.synthetic.geometry import affine_ras, check_geometry, default_origin
from ctmil.synthetic.labels import SEVERE_THRESHOLD, sample_severity
from ctmil.synthetic.lesions import paint_dependent_consolidation, paint_lesions
from ctmil.synthetic.lungs import LungMaps, paint_lungs, paint_vessels
from ctmil.synthetic.primitives import Canvas
from ctmil.synthetic.seeding import as_generator
from ctmil.synthetic.variants import FIELDS_OF_VIEW, paint_air_pockets, paint_consolidated_lung, paint_neck_and_abdomen
from ctmil.keys import Columns

__all__ = ["make_phantom"]

_HU_MIN, _HU_MAX = -1024.0, 3071.0


def _check_options(
    couch: str,
    noise_hu: float,
    involvement: float | None,
    consolidation_fraction: float | None,
    severe_threshold: float,
    dtype: np.dtype | type,
    dependent_consolidation: float = 0.0,
    field_of_view: str = "chest",
    consolidated_lung: float = 0.0,
    offset_mm: Sequence[float] = (0.0, 0.0),
) -> None:
    if field_of_view not in FIELDS_OF_VIEW:
        raise ValueError(f"field_of_view must be one of {FIELDS_OF_VIEW}, got {field_of_view!r}")
    if not 0.0 <= consolidated_lung <= 0.95:
        raise ValueError(f"consolidated_lung must be in [0, 0.95], got {consolidated_lung}")
    if len(offset_mm) != 2 or not all(np.isfinite(v) and abs(v) <= 80 for v in offset_mm):
        raise ValueError(f"offset_mm must be two numbers (dy, dx) within ±80 mm, got {offset_mm!r}")
    if couch not in ("solid", "foam", "none"):
        raise ValueError(f"couch must be 'solid', 'foam' or 'none', got {couch!r}")
    if not (np.isfinite(noise_hu) and noise_hu >= 0):
        raise ValueError(f"noise_hu must be non-negative, got {noise_hu}")
    if involvement is not None and not 0.0 <= involvement <= 0.8:
        raise ValueError(f"involvement must be in [0, 0.8], got {involvement}")
    if consolidation_fraction is not None and not 0.0 <= consolidation_fraction <= 1.0:
        raise ValueError(f"consolidation_fraction must be in [0, 1], got {consolidation_fraction}")
    if not 0.0 <= dependent_consolidation <= 0.9:
        raise ValueError(f"dependent_consolidation must be in [0, 0.9], got {dependent_consolidation}")
    if not 0.0 < severe_threshold < 1.0:
        raise ValueError(f"severe_threshold must be in (0, 1), got {severe_threshold}")
    if not (np.issubdtype(np.dtype(dtype), np.floating) or np.dtype(dtype) == np.int16):
        raise ValueError(f"dtype must be int16 or a float dtype, got {dtype!r}")


def _paint_chest(canvas: Canvas, rng: np.random.Generator, f: ChestFrame, fields: Fields, couch: str) -> tuple[LungMaps, np.ndarray]:
    """Everything but vessels and lesions, each structure over the ones before it; returns the lungs and the body's
    squared elliptical radius."""
    paint_couch(canvas, f, couch)
    d_body, inner = paint_body(canvas, f, fields)
    mediastinum = paint_mediastinum(canvas, f, inner)
    spine = paint_spine(canvas, f, fields)
    lungs = paint_lungs(canvas, rng, f, fields, inner, mediastinum, spine)
    paint_abdomen(canvas, f, inner, d_body, lungs.mask, spine)
    paint_ribs(canvas, f, fields, lungs.d_cav, inner)
    paint_airway(canvas, rng, f, inner, spine)
    return lungs, d_body


def _finish(hu: np.ndarray, rng: np.random.Generator, noise_hu: float, dtype: np.dtype | type) -> np.ndarray:
    """Partial-volume blur, correlated noise, clip to [-1024, 3071] and cast."""
    hu = ndimage.gaussian_filter(hu, (0, 0.6, 0.6), truncate=2.5)
    if noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), (0, 0.7, 0.7), truncate=2.5)
        hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    np.clip(hu, _HU_MIN, _HU_MAX, out=hu)
    return np.rint(hu).astype(np.int16) if np.dtype(dtype) == np.int16 else hu.astype(dtype)


def _ground_truth(
    lung: np.ndarray,
    lesion: np.ndarray,
    tissue: np.ndarray,
    target: float,
    severe_threshold: float,
    spacing: tuple[float, float, float],
    origin: Sequence[float] | None,
) -> dict[str, Any]:
    """The ``info`` dict of :func:`make_phantom`: measured involvement and label, per-slice values, geometry."""
    n_lung, n_lesion = int(np.count_nonzero(lung)), int(np.count_nonzero(lesion))
    measured = n_lesion / n_lung if n_lung else 0.0
    lung_per_slice = lung.sum(axis=(1, 2))
    lesion_per_slice = (lesion > 0).sum(axis=(1, 2))
    slice_inv = np.where(lung_per_slice > 0, lesion_per_slice / np.maximum(lung_per_slice, 1), 0.0)
    lung_slices = np.flatnonzero(lung_per_slice)
    if origin is None:
        origin = default_origin(lung.shape, spacing)
    return {
        Columns.LABEL: int(measured > severe_threshold),
        "severe": bool(measured > severe_threshold),
        "involvement": float(measured),
        "target_involvement": float(target),
        "severe_threshold": float(severe_threshold),
        "consolidation_fraction": float(np.count_nonzero(lesion == 2) / n_lesion) if n_lesion else 0.0,
        "lung_voxels": n_lung,
        "lesion_voxels": n_lesion,
        "slice_involvement": [float(v) for v in slice_inv],
        "lung_slices": (int(lung_slices[0]), int(lung_slices[-1])) if lung_slices.size else (-1, -1),
        "shape": lung.shape,
        "spacing": spacing,
        "origin_lps": tuple(float(v) for v in origin),
        "affine_ras": affine_ras(spacing, origin).tolist(),
        "lung_mask": lung,
        "tissue_map": tissue,
    }


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
    dependent_consolidation: float = 0.0,
    field_of_view: str = "chest",
    air_pockets: bool = False,
    consolidated_lung: float = 0.0,
    offset_mm: Sequence[float] = (0.0, 0.0),
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
        dependent_consolidation: consolidate the back fraction (in ``[0, 0.9]``) of each lung on every slice, as
            severe COVID-19 does to the dependent lung; drawn after the other lesions, so a seed gives the same
            phantom up to that band (0: none, the default).
        field_of_view: ``"chest"`` (default) or ``"neck_to_abdomen"``: the upper abdomen below the lungs (bowel gas
            too), the neck above them, and the lung apices 2 mm under the skin (:mod:`ctmil.synthetic.variants`).
        air_pockets: a blanket over the front of the body whose folds trap air against the skin.
        consolidated_lung: consolidate the back fraction (in ``[0, 0.95]``) of the right lung on every slice.
        offset_mm: ``(dy, dx)`` mm: the patient lies this far from the centre of the field of view (posterior and
            patient left positive, within ±80 mm).
        The four anatomy variants draw nothing from the generator: with them off, a seed gives the same phantom.

    Returns:
        ``volume (S, H, W)`` HU clipped to [-1024, 3071]; ``lesion_mask (S, H, W)`` uint8 (0 none, 1 ground-glass
        opacity, 2 consolidation); ``info`` dict with ``label`` (0/1), ``severe``, ``involvement`` (measured lesion
        fraction of lung voxels), ``target_involvement``, ``consolidation_fraction`` (measured), ``lung_voxels``,
        ``lesion_voxels``, ``slice_involvement`` ``(S,)`` list, ``lung_slices`` (first, last) indices,
        ``spacing``, ``shape``, ``origin_lps``, ``affine_ras`` (4x4 list) and the arrays ``lung_mask``
        ``(S, H, W)`` bool and ``tissue_map`` ``(S, H, W)`` uint8 (codes in :data:`TISSUE_LABELS`).
    """
    shape3, spacing3 = check_geometry(shape, spacing)
    _check_options(couch, noise_hu, involvement, consolidation_fraction, severe_threshold, dtype, dependent_consolidation,
                   field_of_view, consolidated_lung, offset_mm)
    offset = (float(offset_mm[0]), float(offset_mm[1]))
    rng = as_generator(rng_or_seed)
    # draw order: severity, frame, fields, lung sizes, carina, vessels, noise
    sev = sample_severity(rng, severe=severe, severe_fraction=severe_fraction)
    target = sev.involvement if involvement is None else float(involvement)
    cons_frac = sev.consolidation_fraction if consolidation_fraction is None else float(consolidation_fraction)
    frame = draw_frame(rng, shape3, spacing3, couch, field_of_view, offset)
    fields = draw_fields(rng, frame)
    canvas = Canvas.empty(shape3)
    lungs, d_body = _paint_chest(canvas, rng, frame, fields, couch)
    if field_of_view == "neck_to_abdomen":
        paint_neck_and_abdomen(canvas, frame, fields, lungs)
    if air_pockets:
        paint_air_pockets(canvas, frame, d_body)
    lesion = np.zeros(shape3, dtype=np.uint8)
    if lungs.mask.any():
        w_vessel = paint_vessels(canvas, rng, frame, lungs)
        paint_lesions(canvas, lesion, frame, fields, lungs, w_vessel, target, cons_frac)
        paint_dependent_consolidation(canvas, lesion, lungs, dependent_consolidation)
        paint_consolidated_lung(canvas, lesion, lungs, frame, consolidated_lung)
    volume = _finish(canvas.hu, rng, noise_hu, dtype)
    info = _ground_truth(lungs.mask, lesion, canvas.tissue, target, severe_threshold, spacing3, origin)
    return volume, lesion, info
