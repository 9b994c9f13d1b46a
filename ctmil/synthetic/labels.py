"""Label codes of a phantom's ground-truth maps, and its severity: the rule, the per-case draw, cohort labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctmil.synthetic.seeding import as_generator

__all__ = [
    "TISSUE_LABELS",
    "LESION_LABELS",
    "SEVERE_THRESHOLD",
    "NON_SEVERE_RANGE",
    "SEVERE_RANGE",
    "NON_SEVERE_CONSOLIDATION",
    "SEVERE_CONSOLIDATION",
    "P_NO_LESION",
    "SeverityParams",
    "sample_severity",
    "assign_labels",
]

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


def _check_severe_fraction(severe_fraction: float) -> None:
    if not 0.0 <= severe_fraction <= 1.0:
        raise ValueError(f"severe_fraction must be in [0, 1], got {severe_fraction}")


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
    _check_severe_fraction(severe_fraction)
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
    _check_severe_fraction(severe_fraction)
    rng = as_generator(rng)
    n_severe = int(round(n * severe_fraction))
    if n >= 2 and 0.0 < severe_fraction < 1.0:
        n_severe = min(max(n_severe, 1), n - 1)
    flags = np.zeros(n, dtype=bool)
    flags[:n_severe] = True
    return rng.permutation(flags)
