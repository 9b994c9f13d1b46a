"""Anatomy that real chest CT has and the plain phantom lacks, each a keyword of :func:`ctmil.synthetic.make_phantom`
(all off by default, so a seed still gives the phantom it always gave):

* ``field_of_view="neck_to_abdomen"``: the scan runs from the upper abdomen (liver, stomach, bowel gas) to the neck,
  and the lung apices come within ``skin_mm`` of the skin, as they do in the supraclavicular fossa. The frame puts the
  lungs in the middle of the stack (:func:`ctmil.synthetic.chest_frame.draw_frame`), :func:`paint_neck_and_abdomen`
  draws the rest. This is the scan that made a real pneumonia CT come out "ok" with a bag of abdomen (issue 23).
* ``air_pockets=True``: a blanket over the front of the body whose folds trap air against the skin
  (:func:`paint_air_pockets`): air enclosed by the image, yet outside the body.
* ``consolidated_lung=f``: the back ``f`` of the right lung consolidated on every slice, so that it is barely air-dark
  (:func:`paint_consolidated_lung`).
* ``offset_mm=(dy, dx)``: the patient lies off the centre of the field of view (in the frame).

None of them draws from the generator: they are shaped by the smooth fields the phantom already has.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctmil.synthetic.chest_frame import ChestFrame, Fields
from ctmil.synthetic.labels import LESION_LABELS, TISSUE_LABELS
from ctmil.synthetic.lungs import LungMaps
from ctmil.synthetic.primitives import Canvas, ellipse, per_slice, smoothstep

__all__ = ["FIELDS_OF_VIEW", "SKIN_MM", "paint_neck_and_abdomen", "paint_air_pockets", "paint_consolidated_lung"]

FIELDS_OF_VIEW = ("chest", "neck_to_abdomen")
#: Soft tissue between a lung apex and the skin in the ``neck_to_abdomen`` field of view, mm.
SKIN_MM = 2.0
_APEX_U = 0.8  # lung slices above this height (0 base, 1 apex) have their body pulled in to the lungs


def _neck(f: ChestFrame) -> np.ndarray:
    """``(1, H, W)`` the neck's cross-section: around the trachea and the cervical spine, behind the middle."""
    return ellipse(f.x, f.y, 0.0, 0.3 * f.b, 0.42 * f.a, 0.68 * f.b) < 1.0


def paint_neck_and_abdomen(canvas: Canvas, f: ChestFrame, fields: Fields, lungs: LungMaps, skin_mm: float = SKIN_MM) -> None:
    """The ends of a ``neck_to_abdomen`` scan.

    * Above the lungs only the neck remains; on the top lung slices (above ``_APEX_U`` of the lung height) the body
      is the neck plus everything within ``skin_mm`` of the lungs of that slice or the one below, so the apices lie
      ``skin_mm`` (at least two pixels) under the skin, and one slice under it at the top.
    * Below the lung bases, loops of bowel gas fill the front of the abdomen, besides the liver and stomach the
      plain phantom draws: enclosed air that is not lung.
    """
    n_s = f.shape[0]
    slices = np.arange(n_s)
    skin = max(skin_mm, 2.0 * max(f.spacing[1:]))  # two pixels at least, or the blur of _finish would erase it
    neck = _neck(f)[0]
    body = (canvas.tissue > 0) & (canvas.tissue != TISSUE_LABELS["couch"])
    for s in slices[(f.u > _APEX_U) & (slices > f.first)]:
        keep = neck.copy()
        covered = lungs.mask[s] | lungs.mask[s - 1]  # the slice above the apex roofs it over
        if covered.any():
            dist = ndimage.distance_transform_edt(~covered, sampling=f.spacing[1:])
            keep |= dist <= skin
        cut = body[s] & ~keep
        canvas.hu[s][cut] = -1000.0
        canvas.tissue[s][cut] = 0
    belly = per_slice(f.u < -0.08)  # a few cm below the lung bases
    gas = belly & (fields.lesion_f1 > 1.3) & (f.y < 0.1 * f.b) & (np.abs(f.x) < 0.75 * f.a_c)
    gas &= ellipse(f.x, f.y, 0.0, 0.0, f.a_c, f.b_c) < 0.85  # inside the abdominal wall
    gas &= canvas.tissue > 0
    canvas.paint(gas, "gas", -1000.0)


def paint_air_pockets(canvas: Canvas, f: ChestFrame, d_body: np.ndarray) -> None:
    """A blanket (3 mm, at least two pixels) over the front half of the body, lying on the skin along fold lines and
    lifting up to 10 mm off it between them: the pockets between blanket and skin are air enclosed by the image but
    outside the body."""
    r = np.sqrt(d_body)
    gap_mm = (r - 1.0) * min(f.a, f.b)  # roughly the distance outside the skin
    phase = f.x / (18.0 * f.mm) + per_slice(f.z_mm) / (40.0 * f.mm)
    lift = 10.0 * f.mm * np.clip(np.sin(phase) + 0.3, 0.0, None) / 1.3  # 0 along the folds
    thick = max(3.0 * f.mm, 2.0 * max(f.spacing[1:]))
    front = (f.y < 0.15 * f.b) & (np.abs(f.x) < 0.95 * f.a) & per_slice(f.u <= _APEX_U)  # not over the neck
    blanket = front & (gap_mm >= lift) & (gap_mm < lift + thick)
    pocket = front & (gap_mm > 0) & (gap_mm < lift) & (canvas.tissue == 0)
    canvas.paint(blanket & (canvas.tissue == 0), "soft", -60.0)
    canvas.hu[pocket] = -1000.0


def paint_consolidated_lung(canvas: Canvas, lesion: np.ndarray, lungs: LungMaps, f: ChestFrame, fraction: float) -> None:
    """Consolidate the back ``fraction`` of the right lung (patient right: ``x < 0``) on every slice."""
    if not fraction > 0:
        return
    right = lungs.mask & (f.x < 0)
    edge = 1.0 - 2.0 * fraction
    w = smoothstep((lungs.posterior - edge + 0.04) / 0.08) * right
    canvas.hu = canvas.hu * (1 - w) + 30.0 * w
    lesion[right & (lungs.posterior > edge)] = LESION_LABELS["consolidation"]
