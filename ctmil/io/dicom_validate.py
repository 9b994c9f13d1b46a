"""What makes a DICOM slice or series unusable, as one-line reasons: sizes, geometry, rescaling, gaps.

NaN compares false with everything, so every check here is written so that a non-finite value fails it.
The rules (documented in docs/preprocessing.md, "What is rejected and why"):

* an image larger than :data:`MAX_PIXELS` (4096²) is rejected from its header, before any decoder allocates;
* positions, orientations, pixel spacings and rescale values must be finite; pixel spacing within
  :data:`SPACING_RANGE` mm; orientation vectors of about unit length and about perpendicular; slope non-zero;
* a series may lose a few slices (unreadable, truncated, bad geometry): at most :data:`MAX_BAD_FRACTION` of
  them, with a warning naming the files; more, and the case fails naming the first bad file;
* gaps along the slice normal must be whole multiples of the slice spacing; missing slices (at most
  :data:`MAX_MISSING_FRACTION` of the expected count) give a warning stating the gap, more an error. The network
  never sees z positions (slices are cropped and tiled one by one), so a small gap only removes a few
  instances from the bag; a large block missing means a broken series whose bag would misrepresent the lungs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAX_PIXELS = 4096 * 4096  # Rows × Columns × frames × samples of one file
SPACING_RANGE = (0.01, 50.0)  # mm, pixel spacing and slice spacing
MAX_POSITION = 1e5  # mm from the scanner's origin
MAX_RESCALE = 1e6
MAX_BAD_FRACTION = 0.1  # of a series' slices that may be dropped
MAX_MISSING_FRACTION = 0.1  # of a series' expected slices that may be missing (gaps)


def _finite(values, limit: float = math.inf) -> bool:
    try:
        return all(math.isfinite(float(v)) and abs(float(v)) <= limit for v in values)
    except (TypeError, ValueError):
        return False


def image_problem(header) -> str | None:
    """Why the image of ``header`` (a :class:`~ctmil.io.dicom_header.SliceHeader`) is too large or empty."""
    rows, cols = header.get("Rows"), header.get("Columns")
    if rows is None or cols is None:
        return None  # no image: not a size problem (the series check says "no pixel data")
    frames, samples = int(header.get("NumberOfFrames") or 1), int(header.get("SamplesPerPixel") or 1)
    if rows < 1 or cols < 1:
        return f"empty image ({rows}×{cols})"
    if rows * cols * max(frames, 1) * max(samples, 1) > MAX_PIXELS:
        return f"image larger than 4096×4096 pixels ({rows}×{cols}, {frames} frames, {samples} samples)"
    return None


def orientation_problem(iop: Sequence[float]) -> str | None:
    if len(iop) != 6 or not _finite(iop):
        return "non-finite ImageOrientationPatient"
    row, col = [float(v) for v in iop[:3]], [float(v) for v in iop[3:]]  # plain floats: numpy costs more per file here
    norms = math.sqrt(sum(v * v for v in row)), math.sqrt(sum(v * v for v in col))
    if not (0.9 < norms[0] < 1.1 and 0.9 < norms[1] < 1.1):
        return f"degenerate ImageOrientationPatient (vector lengths {norms[0]:.3g}, {norms[1]:.3g})"
    if abs(sum(a * b for a, b in zip(row, col))) > 0.05:
        return "degenerate ImageOrientationPatient (row and column directions not perpendicular)"
    return None


def geometry_problem(header) -> str | None:
    """Why the geometry or rescaling values present in ``header`` cannot be used (absent ones are not checked)."""
    ipp, iop, ps = header.get("ImagePositionPatient"), header.get("ImageOrientationPatient"), header.get("PixelSpacing")
    if ipp is not None and (len(ipp) != 3 or not _finite(ipp, MAX_POSITION)):
        return "non-finite or absurd ImagePositionPatient"
    if iop is not None and (problem := orientation_problem(iop)):
        return problem
    if ps is not None:
        lo, hi = SPACING_RANGE
        if len(ps) != 2 or not _finite(ps) or not all(lo <= float(v) <= hi for v in ps):
            return f"implausible PixelSpacing {_show(ps)} (expected {lo}–{hi} mm)"
    slope, intercept = header.get("RescaleSlope"), header.get("RescaleIntercept")
    if slope is not None and not (_finite([slope], MAX_RESCALE) and float(slope) != 0.0):
        return f"unusable RescaleSlope {_show([slope])}"
    if intercept is not None and not _finite([intercept], MAX_RESCALE):
        return f"unusable RescaleIntercept {_show([intercept])}"
    return None


def _show(values) -> str:
    return "\\".join(f"{float(v):g}" if isinstance(v, (int, float)) else str(v) for v in values)


def max_bad(n_total: int) -> int:
    """How many of ``n_total`` slices a series may lose and still be used."""
    return int(MAX_BAD_FRACTION * n_total)


def bad_files_text(bad: list[tuple[str, str]], n_total: int) -> str:
    from pathlib import Path

    first_name, first_reason = Path(bad[0][0]).name, bad[0][1]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{len(bad)} of {n_total} slices unusable, first {first_name}: {first_reason}{more}"


def spacing_problem(along: np.ndarray, tolerance: float = 0.1) -> tuple[str | None, str | None, float]:
    """Check sorted slice positions along the normal; ``(problem, warning, slice_spacing)``.

    The slice spacing is the smallest gap that occurs most (the median of the gaps below 1.5× the smallest);
    every gap must be a whole multiple of it (within ``tolerance``); missing slices are allowed up to
    :data:`MAX_MISSING_FRACTION` of the expected count, with a warning.
    """
    gaps = np.diff(along)
    if gaps.size == 0:
        return None, None, float("nan")
    if not np.all(np.isfinite(gaps)):
        return "non-finite slice positions", None, float("nan")
    if np.any(gaps < 1e-3):
        return "duplicate slice positions", None, float("nan")
    dz = float(np.median(gaps[gaps < 1.5 * gaps.min()]))
    lo, hi = SPACING_RANGE
    if not lo <= dz <= hi:
        return f"implausible slice spacing {dz:g} mm (expected {lo}–{hi} mm)", None, dz
    steps = np.rint(gaps / dz)
    if np.max(np.abs(gaps - steps * dz)) > tolerance * dz + 1e-3:
        return f"inconsistent slice spacing ({gaps.min():.2f}–{gaps.max():.2f} mm)", None, dz
    missing = int(np.sum(steps - 1))
    if missing == 0:
        return None, None, dz
    where = np.flatnonzero(steps > 1)
    spans = ", ".join(f"{along[i]:.1f}–{along[i + 1]:.1f} mm" for i in where[:3]) + (" ..." if where.size > 3 else "")
    expected = along.size + missing
    text = f"{missing} of {expected} slices missing (gaps at {spans})"
    if missing > MAX_MISSING_FRACTION * expected:
        return f"{text}: more than {MAX_MISSING_FRACTION:.0%} of the series, a broken series", None, dz
    return None, text, dz
