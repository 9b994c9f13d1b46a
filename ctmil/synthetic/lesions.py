"""COVID-19-like lesions: ground-glass opacities and consolidations where a propensity field is highest.

The propensity is smooth noise plus a peripheral, posterior and basal bias; the lesion is its top
``involvement`` quantile inside the lungs (so the measured involvement equals the target within a voxel), and
consolidation the top ``consolidation_fraction`` of the lesion. Edges are fuzzy (smoothstep blending).
"""

from __future__ import annotations

import numpy as np

from ctmil.synthetic.chest_frame import ChestFrame, Fields
from ctmil.synthetic.labels import LESION_LABELS
from ctmil.synthetic.lungs import LungMaps
from ctmil.synthetic.primitives import Canvas, per_slice, smoothstep

__all__ = ["paint_dependent_consolidation", "paint_lesions"]


def _propensity(f: ChestFrame, fields: Fields, lungs: LungMaps) -> np.ndarray:
    """Lesion propensity ``(S, H, W)``: smooth noise + peripheral, posterior and basal bias."""
    periph = np.clip(np.maximum(lungs.radius, np.sqrt(lungs.d_cav) / 0.97), 0, 1.2)
    basal = per_slice(1 - np.clip(f.u, 0, 1))
    return fields.lesion_f1 + 0.5 * fields.lesion_f2 + 1.2 * periph + 0.6 * lungs.posterior + 0.4 * basal


def paint_lesions(
    canvas: Canvas,
    lesion: np.ndarray,
    f: ChestFrame,
    fields: Fields,
    lungs: LungMaps,
    w_vessel: np.ndarray,
    involvement: float,
    consolidation_fraction: float,
) -> None:
    """Blend lesions into ``canvas.hu`` and write their codes into ``lesion`` ``(S, H, W)`` uint8 (no draws)."""
    field = _propensity(f, fields, lungs)
    if not involvement > 0:
        return
    lung = lungs.mask
    f_lung = field.ravel()[lungs.index]
    thr = float(np.quantile(f_lung, 1.0 - involvement))
    soft = 0.12 * float(f_lung.std())
    in_lesion = lung & (field > thr)
    w_g = smoothstep((field - thr + soft) / (2 * soft)) * lung  # 0.5 at the mask edge: fuzzy blobs
    ggo_hu = -460.0 + 50.0 * fields.tex_f2
    canvas.hu += w_g * (ggo_hu - lungs.base_hu) * (1 - w_vessel)  # vessels stay visible through ground glass
    lesion[in_lesion] = LESION_LABELS["ggo"]
    f_les = field[in_lesion]
    if consolidation_fraction > 0 and f_les.size:
        thr_c = float(np.quantile(f_les, 1.0 - consolidation_fraction))
        soft_c = 0.5 * soft
        w_c = smoothstep((field - thr_c + soft_c) / (2 * soft_c)) * lung
        cons_hu = 15.0 + 15.0 * fields.tex_f2
        canvas.hu = canvas.hu * (1 - w_c) + cons_hu * w_c
        lesion[in_lesion & (field > thr_c)] = LESION_LABELS["consolidation"]


def paint_dependent_consolidation(canvas: Canvas, lesion: np.ndarray, lungs: LungMaps, fraction: float) -> None:
    """Consolidate the back ``fraction`` of each lung, slice by slice (dependent consolidation of severe COVID-19).

    The band is measured along each lung's own front-to-back axis (``lungs.posterior``, -1 front .. +1 back), so it
    follows the lung's shape; its edge is a few voxels soft. Vessels vanish inside it, as they do on real CT.
    """
    if not fraction > 0:
        return
    edge = 1.0 - 2.0 * fraction  # posterior coordinate where the band starts
    w = smoothstep((lungs.posterior - edge + 0.04) / 0.08) * lungs.mask
    cons_hu = 25.0
    canvas.hu = canvas.hu * (1 - w) + cons_hu * w
    lesion[lungs.mask & (lungs.posterior > edge)] = LESION_LABELS["consolidation"]
