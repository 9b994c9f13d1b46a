"""Per-slab threads (ctmil.io.slabs): slabs cover every slice once, in order, aligned; results do not depend on the
number of threads."""

from __future__ import annotations

import numpy as np
import pytest

from ctmil.io.slabs import MIN_SLAB, _bounds, per_slab, work_threads


@pytest.mark.parametrize("n, parts, align", [(141, 4, 1), (141, 4, 2), (71, 3, 2), (16, 2, 1), (9, 4, 3), (1, 4, 1), (100, 7, 5)])
def test_bounds_cover_every_slice_once_at_aligned_starts(n, parts, align):
    bounds = _bounds(n, parts, align)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a == b for (_, a), (b, _) in zip(bounds[:-1], bounds[1:]))  # contiguous, in order
    assert all(start % align == 0 and stop > start for start, stop in bounds)
    assert len(bounds) <= parts


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [5, MIN_SLAB * 2, 57])
def test_results_are_joined_in_order(threads, n):
    x = np.arange(n * 6).reshape(n, 2, 3)
    out = per_slab(lambda a: a * 2, [x], threads=threads)
    np.testing.assert_array_equal(out, x * 2)
    first, none = per_slab(lambda a, b: (a[:, 0] + b[:, 0], None), [x, x], threads=threads)
    np.testing.assert_array_equal(first, 2 * x[:, 0])
    assert none is None


def test_aligned_groups_stay_together():
    x = np.arange(41)
    out = per_slab(lambda a: a[::4], [x], align=4, threads=4)  # one item per group of 4 slices, as the mask's z grid
    np.testing.assert_array_equal(out, x[::4])


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("0", 1), (" 2 ", 2)])
def test_thread_count_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("CTMIL_THREADS", value)
    assert work_threads() == expected


def test_bad_thread_count_is_one_line(monkeypatch):
    monkeypatch.setenv("CTMIL_THREADS", "many")
    with pytest.raises(ValueError, match="CTMIL_THREADS must be a whole number, got 'many'"):
        work_threads()
