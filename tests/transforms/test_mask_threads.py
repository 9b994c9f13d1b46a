"""The lung masks are the same, bit for bit, however many threads compute them, and the boolean min/max filters
they use equal scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctmil.synthetic.chest import make_phantom
from ctmil.transforms.chest_wall import _grow_lines, bool_filter
from ctmil.transforms.lung_masks import _label6, _segments_with, lung_mask_hu, lung_mask_windowed

SPACING = (2.5, 2.7, 2.7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_do_not_depend_on_the_thread_count(monkeypatch, seed):
    vol, _, _ = make_phantom(seed, shape=(40, 112, 112), spacing=SPACING, severe=seed != 1)
    windowed = np.clip((vol.astype(np.float32) + 1350) / 1500, 0, 1)
    masks = {}
    for threads in ("1", "2", "5"):
        monkeypatch.setenv("CTMIL_THREADS", threads)
        masks[threads] = (lung_mask_hu(vol, SPACING)[0], lung_mask_windowed(windowed))
    assert masks["1"][0].any() and masks["1"][1].any()
    for threads in ("2", "5"):
        np.testing.assert_array_equal(masks[threads][0], masks["1"][0])
        np.testing.assert_array_equal(masks[threads][1], masks["1"][1])


def test_bool_filter_is_scipys_min_and_max_filter():
    rng = np.random.default_rng(0)
    for _ in range(400):
        shape = tuple(int(v) for v in rng.integers(1, 12, size=3))
        a = rng.random(shape) < rng.random()
        radius, axis = int(rng.integers(0, 6)), int(rng.integers(0, 3))
        for op, scipy_filter in (("min", ndi.minimum_filter1d), ("max", ndi.maximum_filter1d)):
            expected = scipy_filter(a.view(np.uint8), 2 * radius + 1, axis=axis, mode="constant", cval=0).astype(bool)
            np.testing.assert_array_equal(bool_filter(a, radius, axis, op), expected if radius else a)


@pytest.mark.parametrize("layout", ["random", "strided", "fortran"])
def test_label6_gives_scipys_labels(layout):
    """The 3D labelling from connected-components-3d numbers the components as scipy does (same order), on any
    memory layout, so which component is "the largest" or "touches the border" does not depend on the library."""
    rng = np.random.default_rng(3)
    structure = ndi.generate_binary_structure(3, 1)
    for _ in range(150):
        shape = tuple(int(v) for v in rng.integers(1, 14, size=3))
        a = rng.random(shape) < rng.random()
        if layout == "strided":
            a = np.repeat(a, 2, axis=2)[:, :, ::2]
        elif layout == "fortran":
            a = np.asfortranarray(a)
        labels, n = _label6(a)
        expected, m = ndi.label(a, structure=structure)
        assert n == m
        np.testing.assert_array_equal(labels, expected)


def _grow_lines_by_loop(mask, bone, outside, max_ratio, max_slice_ratio):
    """:func:`ctmil.transforms.chest_wall._grow_lines` written as its docstring reads, one line at a time."""
    out = np.zeros(mask.shape, bool)
    for s in range(mask.shape[0]):
        on_slice = np.flatnonzero(mask[s].any(axis=0))
        for i in range(mask.shape[1]):
            lung = np.flatnonzero(mask[s, i])
            if lung.size == 0:
                continue
            first, last = lung[0], lung[-1]
            limit = min(max_ratio * (last - first + 1), max_slice_ratio * (on_slice[-1] - on_slice[0] + 1))
            for steps, edge in ((range(last + 1, mask.shape[2]), last), (range(first - 1, -1, -1), first)):
                for p in steps:
                    if bone[s, i, p] or outside[s, i, p]:
                        if bone[s, i, p] and not outside[s, i, p] and abs(p - edge) - 1 <= limit:
                            out[s, i, min(p, edge) + 1 : max(p, edge)] = True
                        break
    return out


@pytest.mark.parametrize("seed", range(4))
def test_grow_lines_is_the_line_by_line_rule(seed):
    rng = np.random.default_rng(seed)
    for _ in range(250):
        shape = tuple(int(v) for v in rng.integers(1, 14, size=3))
        mask, bone, outside = (rng.random(shape) < rng.random() * f for f in (0.5, 0.3, 0.3))
        max_ratio, max_slice_ratio = float(rng.choice([0.5, 2.0, 8.0])), float(rng.choice([0.5, 2.0]))
        expected = _grow_lines_by_loop(mask, bone, outside, max_ratio, max_slice_ratio)
        np.testing.assert_array_equal(_grow_lines(mask, bone, outside, max_ratio, max_slice_ratio), expected)


@pytest.mark.parametrize("axis", [1, 2])
def test_segments_with_is_any_over_each_grid_window(axis):
    """Grid point ``k`` along ``axis`` is set when any sample in ``[k·s − s//2, k·s − s//2 + s)`` is."""
    rng = np.random.default_rng(axis)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 15, size=3))
        stride = int(rng.integers(1, 6))
        n = -(-shape[axis] // stride)
        tissue = rng.random(shape) < rng.random() * 0.4
        expected = np.stack(
            [np.take(tissue, range(max(0, k * stride - stride // 2), min(shape[axis], k * stride - stride // 2 + stride)), axis=axis).any(axis=axis)
             for k in range(n)], axis=axis)  # fmt: skip
        np.testing.assert_array_equal(_segments_with(tissue, stride, n, axis=axis), expected)
