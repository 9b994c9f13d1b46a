"""Classical lung masks as numpy functions: from Hounsfield units (3D) or from pre-windowed slice images (2D).

Both take an ``(S, H, W)`` slice stack; :class:`ctmil.transforms.LungMask` applies them to images in any layout.

The mask is built for cropping, so it is generous: dense consolidation and vessels inside the lungs are
filled in, and each slice is closed with a disk so that consolidation along the chest wall stays inside.

Consolidated lung is as dense as the chest wall, so no threshold tells the two apart, and a mask of air-dark
pixels ends where the aerated lung ends: in severe COVID-19 that cuts off the dependent (posterior) lung, which is
where the disease is (and peripheral consolidation along the side walls). :func:`extend_to_chest_wall` puts it
back: from the outer edges of the lungs, every row and column continues through tissue until the first bone (a
rib, the spine), which is the inner chest wall. A line that reaches the air outside the body first (an intercostal
space, the costal cartilage) is left as it was, so the growth never leaves the rib cage. docs/preprocessing.md
"Consolidated lung" measures it.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage as ndi

from ctmil.transforms.chest_wall import bool_filter, extend_to_chest_wall
from ctmil.io.slabs import per_slab

_INPLANE_6 = np.zeros((3, 3, 3), bool)
_INPLANE_6[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # 4-connectivity within each slice only


def _label6(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label(mask, generate_binary_structure(3, 1))``, the same labels in the same order, from
    connected-components-3d: about four times faster on the masks' working grids (bench/preprocess.py)."""
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask), connectivity=6, return_N=True)
    return labels, int(n)

#: The first bone that stops the chest-wall growth: HU, and the level of a lung-window slice image (about 120 HU in
#: ctmil's window of [-1350, 150] HU; lung windows saturate on bone).
BONE_HU = 150.0
BONE_LEVEL = 0.98
#: The defaults of the HU lung mask (each has this one home; preprocessing's settings of the same names): air/lung
#: below THRESHOLD_HU; the per-slice closing and the final dilation, in mm; whether the mask grows to the chest wall.
THRESHOLD_HU = -400.0
CLOSING_MM = 10.0
DILATE_MM = 4.0
CHEST_WALL = True


def _border_labels(labels: np.ndarray) -> np.ndarray:
    """Labels present on the in-plane border of a ``(S, H, W)`` label image."""
    return np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))


def _drop_border_components(dark: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """Label ``dark`` and zero the components that touch the in-plane image border (outside air, couch gap)."""
    labels, n = ndi.label(dark, structure=structure)
    keep = np.ones(n + 1, bool)
    keep[_border_labels(labels)] = False
    keep[0] = False
    return np.where(keep[labels], labels, 0), n


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Per slice, fill every background region that does not touch the in-plane border (one labelling pass)."""
    background, n = ndi.label(~mask, structure=_INPLANE_6)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    outside[_border_labels(background)] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[background]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Per-slice dilation with a (2·radius+1)² square."""
    if radius <= 0:
        return mask
    for axis in (1, 2):
        mask = bool_filter(mask, radius, axis, "max")
    return mask


def _fill_and_close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Per slice: fill holes, close with a (2·radius+1)² square (separable max then min filters, on the slice padded
    by the square's size so that the closing sees no image edge), fill again."""
    mask = _fill_holes(mask)
    if radius > 0:
        size = 2 * radius + 1
        m = np.pad(mask, ((0, 0), (size, size), (size, size)))
        for axis in (1, 2):
            m = bool_filter(m, radius, axis, "max")
        for axis in (1, 2):
            m = bool_filter(m, radius, axis, "min")
        mask = _fill_holes(m[:, size:-size, size:-size])
    return mask


def _lung_labels(labels: np.ndarray, sizes: np.ndarray, dark: np.ndarray, min_fraction: float, lr_axis: int = 2) -> list[int]:
    """The enclosed air components that are lung: the largest, plus, when the largest lies on one side of the body
    only (lungs not joined through the trachea), the largest other one that is on the other side, at least
    ``min_fraction`` of the largest, and mostly within the largest's slices (bowel gas below the lungs is not a
    lung, however large). ``sizes`` are the voxel counts per label, zero for components that are not candidates;
    the body's sides are split along ``lr_axis`` of the ``(S, H, W)`` stack (2: columns)."""
    if lr_axis == 1:  # left-right runs along the rows: look at the slices transposed
        labels, dark = labels.transpose(0, 2, 1), dark.transpose(0, 2, 1)
    order = np.argsort(sizes)[::-1]
    first = int(order[0])
    tissue_cols = dark.shape[0] * dark.shape[1] - np.count_nonzero(dark, axis=(0, 1))  # (W,) tissue per column
    mid = float(tissue_cols @ np.arange(dark.shape[2]) / tissue_cols.sum()) if tissue_cols.any() else dark.shape[2] / 2
    left = int(np.ceil(mid))  # columns < mid

    def left_fraction(label: int) -> float:
        return np.count_nonzero(labels[:, :, :left] == label) / sizes[label]

    left_first = left_fraction(first)
    if 0.2 < left_first < 0.8:
        return [first]  # joined lungs
    boxes = ndi.find_objects(labels, max_label=int(order[: _SECOND_LUNG_TRIES + 1].max()))
    z0, z1 = boxes[first - 1][0].start, boxes[first - 1][0].stop
    for label in (int(v) for v in order[1 : _SECOND_LUNG_TRIES + 1]):
        if sizes[label] == 0 or sizes[label] < min_fraction * sizes[first]:  # 0: not a candidate (the background)
            break
        zs = boxes[label - 1][0]
        within = max(0, min(zs.stop, z1) - max(zs.start, z0)) / (zs.stop - zs.start)
        if within >= 0.5 and (left_first - 0.5) * (left_fraction(label) - 0.5) < 0:
            return [first, label]
    return [first]  # one lung only


_SECOND_LUNG_TRIES = 5  # the largest components after the first that may be the other lung


def _grow6(mask: np.ndarray) -> np.ndarray:
    """``mask`` dilated by one voxel along each axis (6-connectivity), without the cost of a general dilation."""
    out = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _segments_with(tissue: np.ndarray, stride: int, n: int, axis: int = -1) -> np.ndarray:
    """``n`` grid points along ``axis`` of ``tissue`` (the others kept): whether the full-resolution samples within
    half a grid step of each grid point ``k * stride`` (``[k·stride − stride//2, k·stride − stride//2 + stride)``)
    hold any. Along an outer axis the ORs read whole contiguous rows: no transposed copy is made."""
    axis = axis % tissue.ndim
    lead, length = stride // 2, tissue.shape[axis]

    def along(part: slice) -> tuple:
        return (slice(None),) * axis + (part,)

    shape = list(tissue.shape)
    shape[axis] = n * stride
    t = np.zeros(shape, np.uint8)
    body = tissue[along(slice(0, min(length, n * stride - lead)))].view(np.uint8)
    t[along(slice(lead, lead + body.shape[axis]))] = body
    out = t[along(slice(0, None, stride))].copy()
    for k in range(1, stride):  # a strided OR per offset: far faster than any() over a short axis
        out |= t[along(slice(k, None, stride))]
    return out.view(bool)


def _level(volume: np.ndarray, value: float | None):
    """``value`` as a scalar of an integer ``volume``'s dtype, rounded up: ``x >= level`` and ``x < level`` then
    compare integers, not every voxel converted to float64 (several times faster on int16 CT)."""
    if value is None or volume.dtype.kind not in "iu":
        return value
    info, level = np.iinfo(volume.dtype), int(np.ceil(value))
    if not info.min <= level <= info.max:  # no value of the dtype reaches it: compare as a float, correctly
        return float(value)
    return volume.dtype.type(level)


def _sample_grid(volume: np.ndarray, threshold_hu: float, bone_hu: float | None, stride: int, z_stride: int):
    """What :func:`lung_mask_hu` reads of the volume, in one pass over the grid's rows in every slice and the grid's
    columns in the grid's slices (about ``1 / stride + 1 / z_stride`` of it: a column read touches every row):

    * ``dark``: the working voxel is air when any of its samples is: the grid point in every slice of its slab, and
      the points half a step along its row (every slice) and its column (the grid slice). Point samples alone break
      lungs full of vessels or consolidation apart.
    * ``bone``: likewise at or above ``bone_hu`` (a rib is thinner than the grid: any sample of it counts).
    * ``rows`` ``(S', h, W)``: tissue at full resolution along the grid's rows in any slice of the slab; ``cols``
      ``(S', H, w)``: along the grid's columns in the grid slice. Every grid point of every slab slice is on a row,
      so the z line between two grid slices is checked too.
    """
    half = stride // 2
    c = volume[::z_stride, :, ::stride]
    cols = c >= threshold_hu
    solid = rows = bone = None  # solid: every sample is tissue (the working voxel is not dark)
    for dz in range(z_stride):
        r = volume[dz::z_stride, ::stride, :]
        r_tissue = r >= threshold_hu  # contiguous: sampling it is cheap
        points = [(r_tissue[:, :, ::stride], r[:, :, ::stride])]
        if stride > 1:
            points.append((r_tissue[:, :, half::stride], r[:, :, half::stride]))
            if dz == 0:
                points.append((cols[:, half::stride, :], c[:, half::stride, :]))
        if solid is None:  # the first grid point starts both
            solid, rows = points[0][0].copy(), r_tissue
            bone = points[0][1] >= bone_hu if bone_hu is not None else None
            points = points[1:]
        else:
            rows[: r.shape[0]] |= r_tissue
        for tissue, hu in points:
            n_s, n_h, n_w = tissue.shape
            solid[:n_s, :n_h, :n_w] &= tissue
            if bone is not None:
                bone[:n_s, :n_h, :n_w] |= hu >= bone_hu
    return ~solid, bone, rows, cols


def _outside_air(rows: np.ndarray, cols: np.ndarray, stride: int, shape: tuple[int, int, int]) -> np.ndarray:
    """The working voxels (``shape``) joined to the image border through air that no tissue crosses at full
    resolution, from the tissue along the grid's ``rows`` and ``cols`` (:func:`_sample_grid`).

    A working voxel is *clear* when the full-resolution row (in every slice of its slab) and column (in the grid
    slice) through its grid point, over one grid step, are all air. Neighbouring grid points are joined by a
    straight line that these segments cover, so a chain of clear voxels never crosses a tissue surface, however thin
    (one pixel of skin between a lung apex and the air outside stops it). The clear components touching the border
    are outside air.
    """
    h, w = shape[1], shape[2]

    def clear_of(r: np.ndarray, c: np.ndarray) -> np.ndarray:  # per working slice
        return ~_segments_with(r, stride, w) & ~_segments_with(c, stride, h, axis=1)

    clear = per_slab(clear_of, [rows, cols])
    labels, n = _label6(clear)
    is_border = np.zeros(n + 1, bool)
    is_border[_border_labels(labels)] = True
    is_border[0] = False
    return is_border[labels]


def _body_box(outside: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """All slices, and the rows and columns of what is not ``outside`` on any slice, grown by ``margin``."""
    inside = ~outside
    rows, cols = np.flatnonzero(inside.any(axis=(0, 2))), np.flatnonzero(inside.any(axis=(0, 1)))
    if rows.size == 0:
        return np.s_[:, :, :]
    h, w = outside.shape[1:]
    return np.s_[:, max(0, rows[0] - margin) : min(h, rows[-1] + 1 + margin), max(0, cols[0] - margin) : min(w, cols[-1] + 1 + margin)]


def lung_mask_hu(
    volume: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    threshold_hu: float = THRESHOLD_HU,
    min_component_fraction: float = 0.08,
    closing_mm: float = CLOSING_MM,
    dilate_mm: float = DILATE_MM,
    working_mm: float = 4.0,
    lr_axis: int = 2,
    bone_hu: float | None = BONE_HU,
    spike_mm: float = 4.0,
) -> tuple[np.ndarray, int]:
    """Lung mask of a HU slice stack, computed on a working grid of about ``working_mm``.

    In plane the grid takes every ``stride``-th row and column; along z every ``round(working_mm / dz)``-th
    slice (only when ``spacing`` is given), each slice then taking the mask of its slab.

    Args:
        volume: ``(S, H, W)`` Hounsfield units.
        spacing: ``(dz, dy, dx)`` mm; ``None`` assumes 1 mm pixels and keeps every slice.
        threshold_hu: air/lung below, tissue above.
        min_component_fraction: a second enclosed air component is the other lung when it lies on the other
            side of the body and its volume is at least this fraction of the largest one (drops bowel gas,
            keeps a heavily consolidated lung).
        closing_mm: radius of the per-slice closing that fills concavities left by consolidation.
        dilate_mm: final per-slice dilation: one working voxel (4 mm) by default, so that the boxes scaled up from
            the working grid hold the lung's last sub-grid pixels. The chest-wall growth keeps consolidation along
            the wall inside the box; before it existed, 8 mm of dilation did that job (``bone_hu=None,
            dilate_mm=8`` is the mask of then), and still does on images without bone-bright ribs.
        working_mm: pixel size (and slice spacing) the mask is computed at.
        lr_axis: the axis of ``volume`` running across the body, patient right to left or back (2: columns, as
            displayed; 1: rows), for the "other side of the body" test of a second lung.
        bone_hu: the lung grows outwards in plane through tissue to the first voxel at or above this (a rib, the
            spine), which brings back consolidated lung (:func:`extend_to_chest_wall`); ``None`` keeps the air-dark
            lung only (the mask before the chest-wall growth).
        spike_mm: radius of the opening that drops thin spikes of that growth (at least one working voxel).

    Returns:
        ``(mask, stride)``: boolean mask ``(S, ceil(H/stride), ceil(W/stride))`` on the in-plane grid
        ``volume[:, ::stride, ::stride]``, and that stride.
    """
    if lr_axis not in (1, 2):
        raise ValueError(f"lr_axis must be 1 (rows) or 2 (columns), got {lr_axis!r}")
    spacing = None if spacing is None else [float(v) for v in spacing]
    pixel = min(spacing[1:]) if spacing else 1.0
    stride = max(1, int(round(working_mm / pixel)))
    z_stride = max(1, int(round(working_mm / spacing[0]))) if spacing and spacing[0] > 0 else 1
    threshold, bone_level = _level(volume, threshold_hu), _level(volume, bone_hu)
    dark, bone, rows, cols = per_slab(lambda v: _sample_grid(v, threshold, bone_level, stride, z_stride), [volume], align=z_stride)
    # Sampling that generously lets air cross skin thinner than the grid (a lung apex under the skin of the neck), so
    # the lungs would join the air outside the body and be discarded with it, and bowel gas taken for lung. What is
    # outside is therefore decided at full resolution (_outside_air), and the voxels next to it are no candidates.
    outside = _outside_air(rows, cols, stride, dark.shape)
    closing, dilation = int(round(closing_mm / (pixel * stride))), int(round(dilate_mm / (pixel * stride)))
    box = _body_box(outside, closing + dilation + 1)  # everything below happens in the box of the body
    outside_full = outside
    dark, outside = dark[box], outside[box]
    near_outside = _grow6(outside)
    labels, n = _label6(dark & ~near_outside)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = _border_labels(labels)
    sizes[border] = 0  # air that still touches the edge (a body cut by the field of view)
    sizes[0] = 0
    full = np.zeros(outside_full.shape, bool)
    if not sizes.any():
        return full, stride
    lungs = _lung_labels(labels, sizes, dark, min_component_fraction, lr_axis)
    mask = labels == lungs[0]
    for label in lungs[1:]:
        mask |= labels == label
    if bone is not None:
        is_border = np.zeros(n + 1, bool)
        is_border[border] = True
        is_border[0] = False
        mask = extend_to_chest_wall(mask, bone[box], (dark & near_outside) | is_border[labels],
                                    spike_radius=max(1, int(round(spike_mm / (pixel * stride)))))
    lung_box = _body_box(~mask, closing + dilation + 1)  # the closing and dilation reach no further than this
    mask[lung_box] = per_slab(lambda m: _dilate(_fill_and_close(m, closing), dilation), [mask[lung_box]])  # per slice
    full[box] = mask
    if z_stride > 1:  # working slice k was built from slices k*z_stride .. k*z_stride+z_stride-1
        full = full[np.arange(volume.shape[0]) // z_stride]
    return full, stride


def lung_mask_windowed(
    volume: np.ndarray,
    threshold: float | None = None,
    min_area_fraction: float = 0.005,
    closing_fraction: float = 0.04,
    bone_level: float | None = BONE_LEVEL,
    second_fraction: float | None = 0.1,
    spike_fraction: float = 0.006,
) -> np.ndarray:
    """Lung mask of pre-windowed slice images (lung window, [0, 1]), slice by slice.

    Dark regions not connected to the image border are lung candidates; per slice the largest one covering at
    least ``min_area_fraction`` of the image is kept, and the second largest when it covers at least
    ``second_fraction`` of the largest (a lung whose aerated part consolidation has shrunk below
    ``min_area_fraction`` is still a lung; ``None``: when it too covers ``min_area_fraction``, as before the chest-wall growth).
    ``threshold`` defaults to Otsu's.

    Args:
        volume: ``(S, H, W)`` intensities in [0, 1].
        bone_level: the lung grows outwards through tissue to the first pixel at or above this (a lung window
            saturates on bone: 0.98 is about 120 HU in ctmil's window), which brings back consolidated lung
            (:func:`extend_to_chest_wall`); ``None`` keeps the dark lung only (the mask before the chest-wall growth).
        spike_fraction: radius of the opening that drops thin spikes of that growth, as a fraction of the image
            (at least one pixel).

    Returns:
        boolean mask ``(S, H, W)``.
    """
    from skimage.filters import threshold_otsu

    if threshold is None:  # Otsu inside the body: lungs vs soft tissue, not outside air vs the rest
        body = _fill_holes(volume > volume.min() + 0.05 * max(float(np.ptp(volume)), 1e-6))
        inside = volume[body]
        threshold = float(threshold_otsu(inside[:: max(1, inside.size // 200_000)])) if np.ptp(inside) > 0 else 0.5
    dark = volume < threshold
    inner, n = _drop_border_components(dark, _INPLANE_6)
    mask = np.zeros(volume.shape, bool)
    if n == 0:
        return mask
    min_area = min_area_fraction * volume.shape[1] * volume.shape[2]
    sizes = np.bincount(inner.ravel(), minlength=n + 1)
    for s in range(volume.shape[0]):
        labels = np.unique(inner[s])
        labels = labels[labels > 0]
        labels = labels[np.argsort(sizes[labels])[::-1][:2]]
        if labels.size and sizes[labels[0]] >= min_area:
            least = min_area if second_fraction is None else second_fraction * sizes[labels[0]]
            mask[s] = np.isin(inner[s], labels[sizes[labels] >= least])
    if bone_level is not None:
        spikes = max(1, int(round(spike_fraction * max(volume.shape[1:]))))
        mask = extend_to_chest_wall(mask, volume >= bone_level, dark & (inner == 0), spike_radius=spikes)
    radius = int(round(closing_fraction * max(volume.shape[1:])))
    return per_slab(lambda m: _fill_and_close(m, radius), [mask])  # per slice
