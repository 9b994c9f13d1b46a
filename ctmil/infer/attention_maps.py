"""Per-patch attention painted back onto the original CT and saved as NIfTI in the input's geometry (PNG overlays:
:mod:`ctmil.infer.overlays`).

Everything here is a pure function of a bag's bookkeeping (``slice_index``, ``position``, ``kept_slices``,
``boxes``, ``meta``; docs/design.md) and an attention vector, so it is tested without a network.

How a patch maps back. Preprocessing resized each kept slice's lung box ``(row0, col0, row1, col1)`` to
180 × 240 (bilinear, ``align_corners=False``) and tiled it into a 3 × 4 grid of 60 × 60 patches. An original
pixel ``i`` of a box of length ``L`` therefore has its centre at ``(i + 0.5) · n · 60 / L`` in the resized box and
lies in grid cell ``floor((i + 0.5) · n / L)`` (``n`` = 3 rows or 4 columns): :func:`cell_index`. The cells tile
the box exactly, every box pixel belongs to one patch, and nothing outside the boxes is painted.

Geometry of the written NIfTI. The painted array is ``(S, H, W)`` with the bag's ``meta["affine"]`` mapping
``(s, r, c, 1)`` to RAS mm. :func:`save_attention_nifti` writes it in the voxel layout of the input itself:

* NIfTI input — the input file's own array layout, shape and header geometry (qform/sform copied), so the map
  has exactly the CT's dimensions and affine (a segmentation-like overlay in 3D Slicer or ITK-SNAP);
* DICOM (and slice-image) input — ``(columns, rows, slices)`` with the affine of the series' voxel grid: the
  layout ITK and 3D Slicer give the DICOM series when they load it.

Either way voxel ``v`` of the file and voxel ``(s, r, c)`` of the CT it was painted from have the same world
(RAS mm) coordinates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctmil.io.atomic import atomic_path

logger = logging.getLogger(__name__)

GRID = (3, 4)  # (rows, columns) of the patch grid: position = row * 4 + col
LUNG_WINDOW_HU = (-1350.0, 150.0)  # level -600 HU, width 1500 HU
_SHW_TO_CRS = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # (c, r, s, 1) -> (s, r, c, 1)


def _np(x, dtype=None) -> np.ndarray:
    """Numpy view of a numpy array, torch tensor or sequence."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def cell_index(length: int, n_cells: int) -> np.ndarray:
    """Grid cell ``(length,)`` int64 of each pixel along one side of a box of ``length`` pixels split into ``n_cells``.

    A pixel belongs to the cell that holds its centre once the box is resized to ``n_cells`` equal parts,
    exactly as the bilinear resize to 180 × 240 and the 60 × 60 tiling saw it.
    """
    if length < 1 or n_cells < 1:
        raise ValueError(f"length and n_cells must be >= 1, got {length}, {n_cells}")
    centres = (np.arange(length, dtype=np.float64) + 0.5) * n_cells / length
    return np.minimum(centres.astype(np.int64), n_cells - 1)


def slice_attention(attention, slice_index) -> tuple[np.ndarray, np.ndarray]:
    """Attention mass per slice: ``(slices (n,), mass (n,))`` for the distinct slices of ``slice_index (K,)``."""
    a, s = _np(attention, np.float64).reshape(-1), _np(slice_index, np.int64).reshape(-1)
    if a.shape != s.shape:
        raise ValueError(f"attention {a.shape} and slice_index {s.shape} differ in length")
    slices, inverse = np.unique(s, return_inverse=True)
    return slices, np.bincount(inverse, weights=a, minlength=slices.size)


def top_attended_slices(attention, slice_index, n: int = 3) -> np.ndarray:
    """The ``n`` slices with the largest attention mass, most attended first (ties: lower slice index first)."""
    slices, mass = slice_attention(attention, slice_index)
    order = np.lexsort((slices, -mass))
    return slices[order[: max(int(n), 0)]]


def paint_attention(
    attention,
    slice_index,
    position,
    boxes,
    kept_slices,
    spatial_shape: Sequence[int],
    grid: tuple[int, int] = GRID,
    mode: str = "bag",
) -> np.ndarray:
    """Paint each patch's attention on its area of the original slice.

    Args:
        attention: ``(K,)`` per-patch attention (numpy or torch).
        slice_index: ``(K,)`` index of each patch's slice in the original ``(S, H, W)`` volume.
        position: ``(K,)`` grid position ``row * grid[1] + col``.
        boxes: ``(S_kept, 4)`` lung boxes ``(row0, col0, row1, col1)``, end exclusive, in original pixels.
        kept_slices: ``(S_kept,)`` the slice each box belongs to.
        spatial_shape: ``(S, H, W)`` of the original volume.
        grid: ``(rows, columns)`` of the patch grid.
        mode: ``"bag"`` paints ``a_k`` as is (the whole volume's values sum to 1 over patches);
            ``"slice"`` paints ``a_k / Σ_{i in slice} a_i`` (the paper's Fig. 5), each slice's patches sum to 1.

    Returns:
        ``(S, H, W)`` float32: every pixel of patch ``k``'s cell holds its (normalised) attention; zero outside
        the lung boxes and on slices that were not kept. Several patches on one cell add up.
    """
    if mode not in ("bag", "slice"):
        raise ValueError(f"mode must be 'bag' or 'slice', got {mode!r}")
    a = _np(attention, np.float64).reshape(-1)
    s_idx, pos = _np(slice_index, np.int64).reshape(-1), _np(position, np.int64).reshape(-1)
    boxes, kept = _np(boxes, np.int64).reshape(-1, 4), _np(kept_slices, np.int64).reshape(-1)
    shape = tuple(int(v) for v in spatial_shape)
    if len(shape) != 3:
        raise ValueError(f"spatial_shape must be (S, H, W), got {spatial_shape}")
    if not (a.size == s_idx.size == pos.size):
        raise ValueError(f"attention ({a.size}), slice_index ({s_idx.size}) and position ({pos.size}) differ in length")
    if boxes.shape[0] != kept.size:
        raise ValueError(f"{boxes.shape[0]} boxes for {kept.size} kept slices")
    rows, cols = int(grid[0]), int(grid[1])
    if pos.size and (pos.min() < 0 or pos.max() >= rows * cols):
        raise ValueError(f"position must be in 0..{rows * cols - 1}")
    if kept.size and (kept.min() < 0 or kept.max() >= shape[0]):
        raise ValueError(f"kept_slices must be in 0..{shape[0] - 1}")
    bad = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > shape[1]) | (boxes[:, 3] > shape[2])
    bad |= (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad.any():
        raise ValueError(f"box {boxes[np.flatnonzero(bad)[0]].tolist()} is empty or outside the {shape[1]}x{shape[2]} image")
    row_of_slice = np.full(shape[0], -1, np.int64)
    row_of_slice[kept] = np.arange(kept.size)
    j = row_of_slice[np.clip(s_idx, 0, shape[0] - 1)]
    if s_idx.size and (s_idx.min() < 0 or s_idx.max() >= shape[0] or (j < 0).any()):
        raise ValueError("every patch's slice_index must be one of kept_slices")

    table = np.zeros((kept.size, rows * cols), np.float64)  # (S_kept, 12) value per grid cell
    np.add.at(table, (j, pos), a)
    if mode == "slice":
        total = table.sum(axis=1, keepdims=True)
        table = np.divide(table, total, out=np.zeros_like(table), where=total > 0)
    out = np.zeros(shape, np.float32)
    for k, (s, (r0, c0, r1, c1)) in enumerate(zip(kept.tolist(), boxes.tolist())):
        cells = table[k].reshape(rows, cols)
        out[s, r0:r1, c0:c1] = cells[cell_index(r1 - r0, rows)[:, None], cell_index(c1 - c0, cols)[None, :]]
    return out


# ---------------------------------------------------------------------------------------------------------------
# NIfTI in the input's geometry


def voxel_mapping(affine_from, shape_from: Sequence[int], affine_to, shape_to: Sequence[int], tol: float = 1e-3):
    """How to re-lay an array of grid ``(affine_from, shape_from)`` onto grid ``(affine_to, shape_to)``.

    Both grids must be the same voxels in another axis order/direction (a signed permutation of indices).

    Returns:
        ``(axes, flips)`` such that ``np.flip(np.transpose(a, axes), flips)`` is ``a`` in the target layout, or
        ``None`` when the grids are not related that way (different sampling, oblique, other shape).
    """
    m = np.linalg.inv(np.asarray(affine_from, float)) @ np.asarray(affine_to, float)  # target index -> source index
    rot, offset = m[:3, :3], m[:3, 3]
    perm = np.rint(rot)
    is_permutation = np.array_equal(np.abs(perm).sum(0), np.ones(3)) and np.array_equal(np.abs(perm).sum(1), np.ones(3))
    if np.abs(rot - perm).max() > tol or not is_permutation:
        return None
    axes = tuple(int(np.argmax(np.abs(perm[:, t]))) for t in range(3))
    flips = []
    for t, src in enumerate(axes):
        n = int(shape_from[src])
        if int(shape_to[t]) != n:
            return None
        sign = perm[src, t]
        if abs(offset[src] - (0.0 if sign > 0 else n - 1)) > tol:
            return None
        if sign < 0:
            flips.append(t)
    return axes, tuple(flips)


def relayout(array: np.ndarray, axes: Sequence[int], flips: Sequence[int]) -> np.ndarray:
    """``array`` transposed by ``axes`` and flipped along ``flips`` (a view, see :func:`voxel_mapping`)."""
    out = np.transpose(array, tuple(axes))
    return np.flip(out, tuple(flips)) if flips else out


def _reference_nifti(meta: dict):
    """The input NIfTI's header image when the case came from one (``None`` otherwise or when unreadable)."""
    if meta.get("input_kind") != "nifti" or not meta.get("source"):
        return None
    import nibabel as nib

    try:
        ref = nib.load(str(meta["source"]))  # lazy: reads the header only
    except Exception as err:  # moved or unreadable since it was loaded
        logger.warning("cannot re-read the input NIfTI header (%s); writing the map in the series layout", type(err).__name__)
        return None
    return ref if len(ref.shape) >= 3 else None


def attention_volume_for_input(volume: np.ndarray, meta: dict):
    """The painted ``(S, H, W)`` volume in the input's own voxel layout (see the module docstring).

    Returns:
        ``(array, affine, reference)``: the re-laid array (a view), its 4×4 voxel → RAS affine, and the input
        NIfTI image whose header geometry to copy (``None`` for DICOM / slice input).
    """
    affine = np.asarray(meta["affine"], float)
    shape = tuple(int(v) for v in volume.shape)
    ref = _reference_nifti(meta)
    if ref is not None:
        mapping = voxel_mapping(affine, shape, ref.affine, ref.shape[:3])
        if mapping is not None:
            return relayout(volume, *mapping), np.asarray(ref.affine, float), ref
        logger.warning("the input NIfTI grid does not match the loaded volume; writing the map in the series layout")
    return volume.transpose(2, 1, 0), affine @ _SHW_TO_CRS, None


def save_attention_nifti(volume: np.ndarray, meta: dict, path: str | os.PathLike) -> Path:
    """Write a painted ``(S, H, W)`` map as float32 NIfTI aligned with the input CT (atomic: temp file + rename)."""
    import nibabel as nib

    data, affine, ref = attention_volume_for_input(np.asarray(volume, np.float32), meta)
    img = nib.Nifti1Image(data, affine)
    coded = (ref.get_qform(coded=True), ref.get_sform(coded=True)) if ref is not None else ((None, 0), (None, 0))
    for setter, (matrix, code) in zip((img.set_qform, img.set_sform), coded):
        if matrix is None:  # uncoded in the input (or no input NIfTI): the affine as scanner coordinates
            setter(affine, code=1)
        else:  # the input's geometry exactly, codes included
            setter(matrix, code=int(code))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"ctmil attention"
    with atomic_path(path) as tmp:  # keeps the .nii.gz suffix nibabel reads the format from
        nib.save(img, str(tmp))
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# PNG overlays

