"""A lung mask that cannot be an adult's lungs fails the case (issue 23), in every command that preprocesses.

A mask that found bowel gas or a sliver of apex instead of the lungs still gives boxes, patches and a bag, and a
model still gives that bag a probability: a silent failure. :class:`CheckLungs` measures the mask over the kept
slices and fails the case when it cannot be lungs:

* **Lung share** (every input): lungs fill a quarter to a half of a chest's cross-section (mask / (mask + tissue at
  or above -400 HU, or its lung-window level), mean over the kept slices): 0.25-0.31 on ctmil's phantoms at every
  size, 0.40 on the real thorax series, 0.26-0.57 on the 73 Per-COVID patients (0.26 for one with 85 % of the lung
  infected); bowel gas that a mask took for lung fills 0.05 of an abdomen's. A share below :data:`MIN_LUNG_SHARE`
  fails. A phantom with the back 70 % of every lung slice consolidated keeps 0.08; one with 90 % fails (0.02): its
  mask has missed most of the lungs, and the reason says so.
* **Image share** (slice images, whose spacing is unknown): the mask covering on average at least
  :data:`MIN_AREA_FRACTION` of the kept slices' image area (0.25-0.55 on the Per-COVID sample).

The volume (mL) and z extent (mm) of the kept lung are measured too when the spacing is known, and written into the
reason, but are not judged: an absolute floor cannot tell a small chest from a generous bowel mask (a phantom's
bowel-gas mask covers 268 mL over 87 mm, more than the lungs of ctmil's smallest test chests), while the shares
separate them, at any scale. Lungs that are merely small for an adult (a scan cut short, a collapsed lung)
pass, and ``qc.html`` flags them against the rest of the cohort (:mod:`ctmil.data.qc`), where a person decides.
docs/preprocessing.md "Plausible lungs" has the measurements.

The array transform decides (``compute_measures`` and ``reason``) apart from acting; the dictionary wrapper raises
:class:`ImplausibleLungs` (a :class:`~ctmil.io.readers.CaseError`: a failed case with a one-line reason, e.g.
``lung mask implausible: 16 mL over 16 mm, lungs 3% of the chest's cross-section (at least 7% expected)``) or, with
``allow_implausible=True``, records that reason in the bag's ``meta["warnings"]`` and goes on. The measures go to
``meta["lungs"]`` either way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform

from ctmil.io.readers import CaseError
from ctmil.transforms.intensity import LUNG_WINDOW_HU
from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, stack_spacing, to_stack
from ctmil.transforms.lung import recorded_intensity

__all__ = ["MIN_AREA_FRACTION", "MIN_LUNG_SHARE", "TISSUE_HU", "CheckLungs", "CheckLungsd", "ImplausibleLungs"]

#: Least mean share of the chest's cross-section (lung mask + tissue) that the lung mask covers on the kept slices.
MIN_LUNG_SHARE = 0.07
#: Least mean share of a kept slice image that the mask covers (slice images, whose spacing is unknown).
MIN_AREA_FRACTION = 0.02
#: Tissue for the lung share: the lung mask's own threshold.
TISSUE_HU = -400.0
_SHARE_SLICES = 24  # the lung share's mean is taken over at most this many kept slices, spread evenly


class ImplausibleLungs(CaseError):
    """The lung mask cannot be an adult's lungs: the case fails with this one-line reason."""


class CheckLungs(Transform):
    """Measure a kept-slice lung mask and say whether it is plausible (module docstring).

    Args:
        min_lung_share, min_area_fraction: the bounds; :data:`MIN_LUNG_SHARE`, :data:`MIN_AREA_FRACTION` by default.
        intensity: ``"hu"`` or ``"windowed"``; ``None`` reads ctmil's LoadCT record (as :class:`LungMask`).
        slice_axis: spatial axis holding the slices (``1``: LoadCT's stacks; ``-1``: MONAI's spatial-last layout).
    """

    def __init__(
        self,
        min_lung_share: float = MIN_LUNG_SHARE,
        min_area_fraction: float = MIN_AREA_FRACTION,
        intensity: str | None = None,
        slice_axis: int = DEFAULT_SLICE_AXIS,
    ) -> None:
        if not (0 <= min_lung_share <= 1 and 0 <= min_area_fraction <= 1):
            raise ValueError("the lung bounds min_lung_share and min_area_fraction must be in [0, 1]")
        self.min_lung_share, self.min_area_fraction = float(min_lung_share), float(min_area_fraction)
        self.intensity = intensity
        self.slice_axis = check_slice_axis(slice_axis)

    def compute_measures(self, img: NdarrayOrTensor, mask: NdarrayOrTensor, kept, stride: int = 1) -> dict:
        """``lung_share``, ``area_fraction``, and ``volume_ml`` and ``extent_mm`` (HU with a spacing; else NaN) of
        ``mask``, the lung mask of the kept slices ``img`` on the grid of every ``stride``-th row and column; ``kept``
        are the kept slices' indices in the loaded stack."""
        kind = recorded_intensity(img, self.intensity, "CheckLungs")
        m = to_stack(mask, self.slice_axis, "the lung mask")
        m = (m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m))[0].astype(bool)
        x = to_stack(img, self.slice_axis, "CheckLungs")
        x = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))[0, :, ::stride, ::stride]
        if x.shape != m.shape:
            raise ValueError(f"CheckLungs: mask grid {m.shape} does not match the image's at stride {stride}: {x.shape}")
        kept = np.asarray(kept, np.int64).reshape(-1)
        level = TISSUE_HU if kind == "hu" else (TISSUE_HU - LUNG_WINDOW_HU[0]) / (LUNG_WINDOW_HU[1] - LUNG_WINDOW_HU[0])
        lung = m.sum(axis=(1, 2)).astype(np.float64)
        some = np.unique(np.linspace(0, m.shape[0] - 1, min(m.shape[0], _SHARE_SLICES)).round().astype(int))
        chest = (m[some] | (x[some] >= level)).sum(axis=(1, 2))  # the share: from up to 24 slices spread evenly
        measures = {
            "lung_share": round(float(np.mean(lung[some] / np.maximum(chest, 1))) if m.shape[0] else 0.0, 4),
            "area_fraction": round(float(lung.mean() / (m.shape[1] * m.shape[2])) if m.size else 0.0, 4),
            "volume_ml": float("nan"),
            "extent_mm": float("nan"),
        }
        spacing = stack_spacing(img, self.slice_axis) if kind == "hu" else None
        if spacing is not None and kept.size:
            dz, dy, dx = spacing
            measures["volume_ml"] = round(float(lung.sum() * stride**2 * dz * dy * dx / 1000.0), 1)
            measures["extent_mm"] = round(float((kept.max() - kept.min() + 1) * dz), 1)
        return measures

    def reason(self, measures: Mapping) -> str | None:
        """The one-line reason ``measures`` are implausible, or ``None``."""
        found = []
        if measures["lung_share"] < self.min_lung_share:
            found.append(f"lungs {measures['lung_share']:.0%} of the chest's cross-section (at least {self.min_lung_share:.0%} expected)")
        if not np.isfinite(measures.get("volume_ml", float("nan"))) and measures["area_fraction"] < self.min_area_fraction:
            found.append(f"{measures['area_fraction']:.1%} of the slice area (at least {self.min_area_fraction:.0%} expected)")
        if not found:
            return None
        volume, extent = measures.get("volume_ml", float("nan")), measures.get("extent_mm", float("nan"))
        size = [f"{volume:.0f} mL over {extent:.0f} mm"] if np.isfinite(volume) and np.isfinite(extent) else []
        return f"lung mask implausible: {', '.join(size + found)}"

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor, kept, stride: int = 1) -> tuple[dict, str | None]:
        """``(measures, reason or None)``."""
        measures = self.compute_measures(img, mask, kept, stride)
        return measures, self.reason(measures)


class CheckLungsd(MapTransform):
    """Dictionary wrapper of :class:`CheckLungs`: fails the case (:class:`ImplausibleLungs`) when ``d[mask_key]``
    (the kept slices' mask at ``d[stride_key]``, their indices in ``d[kept_key]``) is implausible, unless
    ``allow_implausible``; then the reason joins ``d[meta_key]["warnings"]``. ``d[meta_key]["lungs"]`` gets the
    measures in both cases."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "lung",
        kept_key: str = "kept_slices",
        stride_key: str | None = None,
        meta_key: str = "image_meta",
        allow_implausible: bool = False,
        slice_axis: int = DEFAULT_SLICE_AXIS,
        allow_missing_keys: bool = False,
        **bounds,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.kept_key, self.meta_key = mask_key, kept_key, meta_key
        self.stride_key = stride_key or f"{mask_key}_stride"
        self.allow_implausible = bool(allow_implausible)
        self.check = CheckLungs(slice_axis=slice_axis, **bounds)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            measures, reason = self.check(d[key], d[self.mask_key], d[self.kept_key], int(d.get(self.stride_key, 1)))
            if reason is not None and not self.allow_implausible:
                raise ImplausibleLungs(reason)
            meta = dict(d.get(self.meta_key) or {})
            meta["lungs"] = measures
            if reason is not None:
                meta["warnings"] = [*meta.get("warnings", []), reason]
            d[self.meta_key] = meta
        return d


CheckLungsD = CheckLungsDict = CheckLungsd
