"""Lung-density features of a CT, taken where the lung mask already is (array transform + dictionary wrapper).

What a radiologist's "percentage of infection" measures is how much of the lung is dense. These features
measure it directly, from the pixels inside the lung mask of the preprocessing chain (no second pass over the
images): a histogram over fixed bins, the fractions of lung in the ground-glass and consolidation ranges, and the
lung volume. They feed the quantitative baseline setting ``Q`` of ``ctmil cv`` (:mod:`ctmil.stats.quantitative`)
and are recorded in every bag under ``meta["density"]``.

* HU inputs (DICOM, NIfTI): ``HU_BINS`` histogram bins over [-1000, 100] HU (values outside fall in the end bins);
  ground glass is [-700, -300) HU, consolidation [-300, 100] HU (the ranges of quantitative CT scores of COVID-19
  pneumonia); ``volume_ml`` from the spacing.
* Lung-window slice images ([0, 1], no HU and no spacing): the same number of bins over [0, 1], the two fractions
  over the same HU ranges mapped through ctmil's lung window (:data:`~ctmil.transforms.LUNG_WINDOW_HU`; an
  approximation for images windowed otherwise), and no volume (``nan``).

The feature vector (:func:`density_vector`) has a fixed length for both kinds, so a model fitted on one kind can
be applied to the other only if the user insists: ``ctmil cv`` never mixes kinds silently (the bag records it).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform

from ctmil.transforms.intensity import LUNG_WINDOW_HU
from ctmil.transforms.layout import DEFAULT_SLICE_AXIS, check_slice_axis, stack_spacing, to_stack
from ctmil.transforms.lung import recorded_intensity

__all__ = ["DENSITY_FEATURES", "HU_BINS", "LungDensity", "LungDensityd", "density_input", "density_vector"]

HU_BINS = 24
HU_RANGE = (-1000.0, 100.0)
GGO_HU = (-700.0, -300.0)
CONSOLIDATION_HU = (-300.0, 100.0)
#: names of :func:`density_vector`'s entries, in order
DENSITY_FEATURES = tuple(f"hist_{i:02d}" for i in range(HU_BINS)) + ("ggo_fraction", "consolidation_fraction", "volume_ml")


def _to_window(hu: tuple[float, float]) -> tuple[float, float]:
    low, high = LUNG_WINDOW_HU
    return tuple(float(np.clip((v - low) / (high - low), 0, 1)) for v in hu)


class LungDensity(Transform):
    """Density features ``dict`` of a one-channel CT stack inside its lung mask (module docstring).

    Args:
        intensity: ``"hu"`` or ``"windowed"``; ``None`` reads ctmil's LoadCT record (as :class:`LungMask`).
        slice_axis: spatial axis holding the slices (``1``: LoadCT's stacks; ``-1``: MONAI's spatial-last layout).
    """

    def __init__(self, intensity: str | None = None, slice_axis: int = DEFAULT_SLICE_AXIS) -> None:
        self.intensity = intensity
        self.slice_axis = check_slice_axis(slice_axis)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor, stride: int = 1) -> dict:
        """Features of ``img`` inside ``mask`` (same layout; on the grid of every ``stride``-th row and column)."""
        kind = recorded_intensity(img, self.intensity, "LungDensity")
        stack = to_stack(img, self.slice_axis, "LungDensity")
        m = to_stack(mask, self.slice_axis, "the lung mask")
        x = (stack.detach().cpu().numpy() if isinstance(stack, torch.Tensor) else np.asarray(stack))[0, :, ::stride, ::stride]
        m = (m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m))[0].astype(bool)
        if x.shape != m.shape:
            raise ValueError(f"LungDensity: mask grid {m.shape} does not match the image's at stride {stride}: {x.shape}")
        values = x[m].astype(np.float64)
        if kind == "hu":
            edges, ggo, cons = np.linspace(*HU_RANGE, HU_BINS + 1), GGO_HU, CONSOLIDATION_HU
            spacing = stack_spacing(img, self.slice_axis)
            volume = float(values.size * stride**2 * np.prod(spacing) / 1000.0) if spacing else float("nan")
        else:
            edges, ggo, cons = np.linspace(0.0, 1.0, HU_BINS + 1), _to_window(GGO_HU), _to_window(CONSOLIDATION_HU)
            volume = float("nan")
        clipped = np.clip(values, edges[0], edges[-1])
        hist = np.histogram(clipped, bins=edges)[0].astype(np.float64)
        n = max(values.size, 1)
        return {
            "intensity": kind,
            "bin_edges": [round(float(e), 6) for e in edges],
            "histogram": [round(float(h / n), 6) for h in hist],
            "ggo_fraction": round(float(np.count_nonzero((values >= ggo[0]) & (values < ggo[1])) / n), 6),
            "consolidation_fraction": round(float(np.count_nonzero((values >= cons[0]) & (values <= cons[1])) / n), 6),
            "volume_ml": round(volume, 2),
        }


class LungDensityd(MapTransform):
    """Dictionary wrapper of :class:`LungDensity`: the features of ``d[key]`` inside ``d[mask_key]`` (at
    ``d[stride_key]``, 1 when absent) go to ``d[meta_key]["density"]``, which the bag keeps as ``meta["density"]``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "lung",
        stride_key: str | None = None,
        meta_key: str = "image_meta",
        intensity: str | None = None,
        slice_axis: int = DEFAULT_SLICE_AXIS,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.meta_key = mask_key, meta_key
        self.stride_key = stride_key or f"{mask_key}_stride"
        self.measure = LungDensity(intensity, slice_axis)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = dict(d.get(self.meta_key) or {})
            meta["density"] = self.measure(d[key], d[self.mask_key], int(d.get(self.stride_key, 1)))
            d[self.meta_key] = meta
        return d


def density_vector(density: Mapping) -> np.ndarray:
    """The fixed-length feature vector (:data:`DENSITY_FEATURES`) of a bag's ``meta["density"]``."""
    hist = [float(v) for v in density["histogram"]]
    if len(hist) != HU_BINS:
        raise ValueError(f"density histogram has {len(hist)} bins, expected {HU_BINS}")
    return np.asarray([*hist, float(density["ggo_fraction"]), float(density["consolidation_fraction"]), float(density["volume_ml"])],
                      dtype=np.float64)  # fmt: skip


def density_input(density: Mapping) -> torch.Tensor:
    """The hybrid network's input ``(len(DENSITY_FEATURES),)`` float32 of a bag's ``meta["density"]``: the
    :func:`density_vector` with the volume in units of 10 L and a missing volume (slice images) as 0."""
    v = density_vector(density)
    v[-1] = 0.0 if not np.isfinite(v[-1]) else v[-1] / 10000.0
    return torch.as_tensor(v, dtype=torch.float32)
