"""Attention hit rate: lesion share per patch mapped back through the lung boxes, top-k hits against chance."""

from __future__ import annotations

import numpy as np
import pytest

from ctmil.evaluate.attention_hits import bag_hit_rate, hit_rates, key_instance_count, patch_lesion_fraction


def _case():
    """Two kept slices (1 and 3) of a 5 x 30 x 40 volume; box (0, 0, 30, 40) → cells of 10 x 10 pixels."""
    lesion = np.zeros((5, 30, 40), np.uint8)
    lesion[1, 0:10, 0:10] = 1  # slice 1, cell (0, 0): position 0, fully lesion
    lesion[3, 20:30, 35:40] = 1  # slice 3, cell (2, 3): position 11, half lesion
    boxes, kept = np.array([[0, 0, 30, 40], [0, 0, 30, 40]]), np.array([1, 3])
    slice_index, position = np.repeat(kept, 12), np.tile(np.arange(12), 2)
    return lesion, slice_index, position, boxes, kept


def test_lesion_fraction_per_patch():
    f = patch_lesion_fraction(*_case())
    expected = np.zeros(24)
    expected[0], expected[12 + 11] = 1.0, 0.5
    np.testing.assert_allclose(f, expected)


def test_boxes_offset_the_cells():
    lesion, slice_index, position, _, kept = _case()
    boxes = np.array([[0, 0, 15, 20], [15, 20, 30, 40]])  # quarter boxes: cells of 5 x 5 pixels
    f = patch_lesion_fraction(lesion, slice_index, position, boxes, kept)
    assert np.flatnonzero(f).tolist() == [0, 1, 4, 5, 12 + 7, 12 + 11] and (f[f > 0] == 1.0).all()


@pytest.mark.parametrize("attention,k,hit", [([0.9, 0.05, 0.05, 0.0], 1, 1.0), ([0.0, 0.1, 0.2, 0.7], 1, 0.0), ([0.4, 0.1, 0.5, 0.0], 2, 0.5)])
def test_bag_hit_rate_against_chance(attention, k, hit):
    covers = np.array([True, False, False, False])
    assert bag_hit_rate(attention, covers, k) == (hit, 0.25, k)


@pytest.mark.parametrize("n,expected", [(10, 1), (40, 1), (80, 2), (217, 5), (1296, 32)])
def test_key_instances_are_alpha_k(n, expected):
    assert key_instance_count(n) == expected


def test_cohort_summary_skips_cases_without_lesion():
    cases = [{"case_id": "a", "attention": [0.7, 0.1, 0.1, 0.1], "lesion_fraction": [0.5, 0, 0, 0]},
             {"case_id": "b", "attention": [0.1, 0.1, 0.1, 0.7], "lesion_fraction": [0.5, 0.5, 0, 0]},
             {"case_id": "none", "attention": [1.0, 0, 0, 0], "lesion_fraction": [0.05, 0, 0, 0]}]  # below 0.1
    table, summary = hit_rates(cases, min_fraction=0.1)
    assert table["case_id"].tolist() == ["a", "b"] and table["hit_rate"].tolist() == [1.0, 0.0]
    assert summary["hit_rate"] == 0.5 and summary["chance_rate"] == pytest.approx(0.375)
    assert summary["lift"] == pytest.approx(0.5 / 0.375) and summary["n_cases"] == 2


@pytest.mark.parametrize("call,match", [
    (lambda: patch_lesion_fraction(np.zeros((2, 4)), [0], [0], [[0, 0, 2, 2]], [0]), r"lesion \(S, H, W\)"),
    (lambda: patch_lesion_fraction(np.zeros((2, 4, 4)), [1], [0], [[0, 0, 2, 2]], [0]), "not among kept_slices"),
    (lambda: bag_hit_rate([0.5, 0.5], [True]), "equal, non-empty"),
])  # fmt: skip
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
