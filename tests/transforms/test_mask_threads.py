"""The lung masks are the same, bit for bit, however many threads compute them, and the boolean min/max filters
they use equal scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ctmil.synthetic.chest import make_phantom
from ctmil.transforms.chest_wall import bool_filter
from ctmil.transforms.lung_masks import lung_mask_hu, lung_mask_windowed

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
