"""What a phantom contains: tissue and lesion HU, where the lungs and the couch are, dtype, determinism, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ctmil.synthetic.phantoms import LESION_LABELS, TISSUE_LABELS, make_phantom
from tests.synthetic._helpers import SMALL, TINY


@pytest.mark.parametrize(
    "tissue, lo, hi",
    [
        ("air", -1010, -985),
        ("fat", -130, -70),
        ("soft", 20, 70),
        ("bone", 300, 1000),
        ("couch", 150, 300),
        ("airway", -1024, -700),
    ],
)
def test_tissue_hu_ranges(mild, tissue, lo, hi):
    vol, _, info = mild
    values = vol[info["tissue_map"] == TISSUE_LABELS[tissue]]
    assert values.size > 20
    assert lo <= np.median(values) <= hi


def test_lung_parenchyma_hu(mild):
    vol, lesion, info = mild
    values = vol[(info["tissue_map"] == TISSUE_LABELS["lung"]) & (lesion == 0)]
    assert -900 <= np.median(values) <= -750
    assert values.std() > 15  # textured, not flat


@pytest.mark.parametrize("kind, lo, hi", [("ggo", -600, -300), ("consolidation", -100, 40)])
def test_lesion_hu(severe, kind, lo, hi):
    vol, lesion, _ = severe
    values = vol[lesion == LESION_LABELS[kind]]
    assert values.size > 100
    assert lo <= np.median(values) <= hi


def test_lesions_inside_lungs(severe):
    _, lesion, info = severe
    assert np.all(info["lung_mask"][lesion > 0])
    assert info["lesion_voxels"] == np.count_nonzero(lesion)


def test_couch_separated_from_body_by_air(mild):
    _, _, info = mild
    tissue = info["tissue_map"][info["shape"][0] // 2]
    col = tissue[:, tissue.shape[1] // 2]  # anterior -> posterior through the midline
    body_rows = np.flatnonzero(np.isin(col, [TISSUE_LABELS[k] for k in ("fat", "soft", "bone")]))
    couch_rows = np.flatnonzero(col == TISSUE_LABELS["couch"])
    assert couch_rows.size and couch_rows.min() > body_rows.max() + 1
    assert np.all(col[body_rows.max() + 1 : couch_rows.min()] == TISSUE_LABELS["air"])


@pytest.mark.parametrize(
    "seed, geometry",
    [(0, {}), (1, SMALL), (2, TINY), (5, dict(shape=(30, 64, 80), spacing=(8.0, 5.4, 4.5)))],
)
def test_lungs_in_middle_not_at_ends(seed, geometry):
    vol, _, info = make_phantom(seed, **geometry)
    lung_area = info["lung_mask"].sum(axis=(1, 2))
    n_s = lung_area.size
    first, last = info["lung_slices"]
    assert first >= 2 and last <= n_s - 3
    assert np.all(lung_area[:2] == 0) and np.all(lung_area[-2:] == 0)
    assert lung_area[n_s // 2] > 0.04 * vol[0].size
    peak = lung_area.max()
    assert lung_area[first] < 0.7 * peak and lung_area[last] < 0.7 * peak  # small at base and apex
    # in HU too: inside the body, end slices have little low-density area compared with mid-chest
    body = np.isin(info["tissue_map"], [TISSUE_LABELS[k] for k in ("fat", "soft", "bone", "lung", "airway", "gas")])
    dark = ((vol < -500) & body).sum(axis=(1, 2))
    assert dark[[0, -1]].max() < 0.15 * dark[n_s // 2]


@pytest.mark.parametrize("seed", [0, 11])
def test_deterministic_per_seed(seed):
    a = make_phantom(seed, **SMALL)
    b = make_phantom(np.random.default_rng(seed), **SMALL)
    c = make_phantom(seed + 1, **SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2]["involvement"] == b[2]["involvement"]
    assert not np.array_equal(a[0], c[0])


def test_volume_dtype_and_range(mild):
    vol, lesion, info = mild
    assert vol.shape == lesion.shape == info["lung_mask"].shape == (48, 128, 128)
    assert vol.dtype == np.int16 and lesion.dtype == np.uint8
    assert vol.min() >= -1024 and vol.max() <= 3071
    vol_f, _, _ = make_phantom(3, severe=False, involvement=0.1, dtype=np.float32)
    assert vol_f.dtype == np.float32
    np.testing.assert_array_equal(np.rint(vol_f).astype(np.int16), vol)


def test_default_phantom_is_fast():
    make_phantom(0)  # warm-up (imports, FFT plans)
    start = time.perf_counter()
    make_phantom(1)
    assert time.perf_counter() - start < 2.0  # typically ~0.3 s; generous for a shared 2-core machine
