"""Volume geometry shared by the phantom generator and the writers: argument checks, orientations, origins and
index-to-world matrices.

* A volume is an array ``(N, rows, cols)``; for the default axial orientation that is ``(S, H, W)`` with
  axis 0 from feet (index 0, inferior) to head, rows from anterior (row 0) to posterior, columns from the
  patient's right (column 0) to the patient's left -- the usual radiological display of an axial slice.
* Patient coordinates are DICOM LPS (+x patient left, +y posterior, +z head). ``spacing`` is
  ``(slice, row, column)`` in mm, i.e. ``(z, y, x)`` for axial volumes.
* Voxel ``(k, r, c)`` sits at ``origin + c * dc * row_dir + r * dr * col_dir + k * dk * normal`` where
  ``row_dir, col_dir = ImageOrientationPatient`` and ``normal = row_dir x col_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "ORIENTATIONS",
    "MIN_SHAPE",
    "check_spacing",
    "check_geometry",
    "orientation_vectors",
    "default_origin",
    "voxel_to_lps",
    "affine_ras",
]

#: ImageOrientationPatient (row direction, column direction) for named orientations, LPS.
ORIENTATIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # rows anterior->posterior, columns right->left, normal +z (head)
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # rows head->feet, columns right->left, normal +y (posterior)
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # rows head->feet, columns anterior->posterior, normal -x
}

#: Smallest phantom ``(S, H, W)``.
MIN_SHAPE = (10, 32, 32)


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats ``(slice, row, column)`` mm, i.e. ``(z, y, x)``, or ValueError."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be 3 positive finite numbers (slice, row, column) in mm, got {spacing!r}")
    return sp  # type: ignore[return-value]


def check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple]:
    """A phantom's ``shape`` as 3 ints of at least :data:`MIN_SHAPE` and its checked ``spacing``, or ValueError."""
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) for v in shape):
        raise ValueError(f"shape must be 3 ints (S, H, W), got {shape!r}")
    shp = tuple(int(v) for v in shape)
    if any(v < m for v, m in zip(shp, MIN_SHAPE)):
        raise ValueError(f"shape must be at least {MIN_SHAPE} (S, H, W), got {shp}")
    return shp, check_spacing(spacing)


def orientation_vectors(orientation: str | Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_dir, col_dir, normal), each a unit 3-vector in LPS, for a named or explicit orientation."""
    if isinstance(orientation, str):
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)} or 6 numbers, got {orientation!r}")
        iop = np.asarray(ORIENTATIONS[orientation], dtype=float)
    else:
        iop = np.asarray(orientation, dtype=float)
        if iop.shape != (6,) or not np.all(np.isfinite(iop)):
            raise ValueError(f"orientation must be 6 finite numbers, got {orientation!r}")
    row_dir, col_dir = iop[:3], iop[3:]
    if not (np.isclose(np.linalg.norm(row_dir), 1) and np.isclose(np.linalg.norm(col_dir), 1)):
        raise ValueError(f"orientation vectors must be unit length, got {iop.tolist()}")
    if not np.isclose(row_dir @ col_dir, 0):
        raise ValueError(f"orientation vectors must be orthogonal, got {iop.tolist()}")
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def default_origin(
    shape: Sequence[int], spacing: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> tuple[float, float, float]:
    """LPS position (mm) of voxel ``(0, 0, 0)`` that centres each slice on the scanner axis.

    For axial volumes the last slice (the most superior) lies at z = 0 and the stack extends towards the feet,
    like a table position read-out. ``shape`` is ``(N, rows, cols)``, ``spacing`` ``(slice, row, column)`` mm.
    """
    n, rows, cols = (int(v) for v in shape)
    dk, dr, dc = check_spacing(spacing)
    row_dir, col_dir, normal = orientation_vectors(orientation)
    origin = -(cols - 1) / 2 * dc * row_dir - (rows - 1) / 2 * dr * col_dir - (n - 1) * dk * normal
    return tuple(float(v) for v in origin)  # type: ignore[return-value]


def voxel_to_lps(
    spacing: Sequence[float], origin: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> np.ndarray:
    """4x4 matrix mapping voxel indices ``(k, r, c, 1)`` of an ``(N, rows, cols)`` volume to LPS mm."""
    dk, dr, dc = check_spacing(spacing)
    row_dir, col_dir, normal = orientation_vectors(orientation)
    m = np.eye(4)
    m[:3, 0] = normal * dk
    m[:3, 1] = col_dir * dr
    m[:3, 2] = row_dir * dc
    m[:3, 3] = np.asarray(origin, dtype=float)
    return m


def affine_ras(
    spacing: Sequence[float], origin: Sequence[float], orientation: str | Sequence[float] = "axial"
) -> np.ndarray:
    """4x4 matrix mapping voxel indices ``(k, r, c, 1)`` of an ``(N, rows, cols)`` volume to RAS mm (NIfTI world)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ voxel_to_lps(spacing, origin, orientation)
