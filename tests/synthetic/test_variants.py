"""The anatomy variants of make_phantom (issue 23): a neck-to-abdomen field of view with the apices under the skin,
air trapped against the skin, a largely consolidated lung, a patient off centre; all off by default."""

import numpy as np
import pytest
from scipy import ndimage

from ctmil.synthetic.labels import LESION_LABELS, TISSUE_LABELS
from ctmil.synthetic.phantoms import make_phantom
from ctmil.synthetic.variants import SKIN_MM

GEOMETRY = dict(shape=(64, 160, 160), spacing=(4.0, 2.2, 2.2))


def border_air(hu_slice: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(hu_slice < -400)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


@pytest.fixture(scope="module")
def neck_to_abdomen():
    return make_phantom(2, field_of_view="neck_to_abdomen", **GEOMETRY)


def test_neck_to_abdomen_puts_abdomen_below_and_neck_above(neck_to_abdomen):
    vol, _, info = neck_to_abdomen
    first, last = info["lung_slices"]
    n = vol.shape[0]
    assert 0.28 * n <= first <= 0.42 * n and 0.72 * n <= last <= 0.88 * n
    tissue = info["tissue_map"]
    body = (tissue > 0) & (tissue != TISSUE_LABELS["couch"])
    mid, top = body[(first + last) // 2].sum(), body[min(n - 1, last + 3):].sum(axis=(1, 2))
    assert top.max() < 0.6 * mid  # the neck is narrower than the chest
    gas = (tissue == TISSUE_LABELS["gas"]).sum(axis=(1, 2))
    assert gas[:first].sum() > 20 * gas[first:].sum() + 50  # bowel and stomach gas below the lungs, none above


def test_neck_to_abdomen_apex_lies_under_the_skin(neck_to_abdomen):
    vol, _, info = neck_to_abdomen
    first, last = info["lung_slices"]
    lung, pixel = info["lung_mask"], max(info["spacing"][1:])
    nearest = []
    for s in range(first, last + 1):
        if lung[s].any():
            outside = border_air(vol[s])
            dist = ndimage.distance_transform_edt(~outside, sampling=info["spacing"][1:])
            nearest.append(dist[lung[s]].min())
    skin = max(SKIN_MM, 2 * pixel)
    assert min(nearest) <= skin + 1.5 * pixel  # some apex slice has the lung a skin's width from the air outside
    assert np.median(nearest) > 3 * skin  # the chest has its wall


def test_air_pockets_are_enclosed_air_outside_the_body():
    plain, _, _ = make_phantom(1, **GEOMETRY)
    vol, _, info = make_phantom(1, air_pockets=True, **GEOMETRY)
    s = (info["lung_slices"][0] + info["lung_slices"][1]) // 2
    enclosed = (vol[s] < -900) & ~border_air(vol[s]) & (info["tissue_map"][s] == TISSUE_LABELS["air"])
    assert enclosed.sum() * np.prod(info["spacing"][1:]) > 100  # mm², trapped between blanket and skin
    assert not ((plain[s] < -900) & ~border_air(plain[s]) & (info["tissue_map"][s] == TISSUE_LABELS["air"])).any()


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_consolidated_lung_consolidates_the_right_lung(fraction):
    _, lesion, info = make_phantom(0, severe=False, involvement=0.0, consolidated_lung=fraction, **GEOMETRY)
    lung = info["lung_mask"]
    right = lung & (np.arange(lung.shape[2]) < lung.shape[2] // 2)[None, None, :]  # patient right: low columns
    consolidated = (lesion == LESION_LABELS["consolidation"]) & lung
    share_right = consolidated[right].mean()
    assert share_right == pytest.approx(fraction, abs=0.12)
    assert consolidated[lung & ~right].mean() < 0.02


@pytest.mark.parametrize("offset", [(0.0, 40.0), (0.0, -40.0), (25.0, 0.0)])
def test_offset_moves_the_patient(offset):
    centre, moved = (make_phantom(5, offset_mm=o, **GEOMETRY)[2]["lung_mask"] for o in ((0.0, 0.0), offset))
    shift = (np.array(ndimage.center_of_mass(moved))[1:] - np.array(ndimage.center_of_mass(centre))[1:]) * GEOMETRY["spacing"][1:]
    assert shift == pytest.approx(np.array(offset) * np.array([1.0, 1.0]), abs=8.0)


def test_variants_off_give_the_phantom_of_before():
    """The variants draw nothing from the generator: with them off a seed's phantom is unchanged, and turning one on
    leaves the lungs where they were (only the field of view moves them)."""
    a = make_phantom(7, **GEOMETRY)
    b = make_phantom(7, field_of_view="chest", air_pockets=False, consolidated_lung=0.0, offset_mm=(0, 0), **GEOMETRY)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = make_phantom(7, air_pockets=True, **GEOMETRY)
    assert np.array_equal(a[2]["lung_mask"], c[2]["lung_mask"])


@pytest.mark.parametrize("bad", [dict(field_of_view="head"), dict(consolidated_lung=1.5), dict(offset_mm=(0, 200)),
                                 dict(offset_mm=(1.0,))])
def test_bad_variant_arguments_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="field_of_view|consolidated_lung|offset_mm"):
        make_phantom(0, **GEOMETRY, **bad)
