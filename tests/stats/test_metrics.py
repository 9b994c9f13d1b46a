"""Metrics against hand-computed values and a brute-force AUC."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from ctmil.stats.metrics import binary_metrics, confusion_counts, roc_auc, roc_curve
from ctmil.train.metrics import BagMetrics


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed,n,levels", [(0, 10, None), (1, 37, None), (2, 40, 4), (3, 25, 2), (4, 60, 7)])
def test_auc_matches_pair_count(seed, n, levels):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels  # ties when levels is set
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(brute_force_auc(scores, labels))


@pytest.mark.parametrize(
    "scores,labels,expected",
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
        ([0.3, 0.6, 0.6, 0.9], [0, 0, 1, 1], 0.875),
    ],
)
def test_auc_hand_values(scores, labels, expected):
    assert roc_auc(scores, labels) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_auc_one_class_is_nan(labels):
    assert math.isnan(roc_auc([0.2] * len(labels), labels))


def test_binary_metrics_hand_computed():
    # threshold 0.5 (>= is positive): TP = 2 (0.9, 0.5), FN = 1 (0.4), TN = 3, FP = 1 (0.7)
    probs = [0.9, 0.5, 0.4, 0.7, 0.1, 0.2, 0.3]
    labels = [1, 1, 1, 0, 0, 0, 0]
    assert confusion_counts(probs, labels) == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    m = binary_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / (2 + 0.5 * 2))
    assert m["auc"] == pytest.approx(brute_force_auc(probs, labels))


def test_binary_metrics_undefined_are_nan_and_bad_labels_raise():
    m = binary_metrics([0.2, 0.3], [0, 0])
    assert math.isnan(m["sensitivity"]) and m["specificity"] == 1.0 and math.isnan(m["auc"])
    with pytest.raises(ValueError):
        binary_metrics([0.2, 0.3], [0, -1])


def test_roc_curve_points():
    fpr, tpr, thr = roc_curve([0.3, 0.6, 0.6, 0.9], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thr[0] == np.inf and thr[1:].tolist() == [0.9, 0.6, 0.3]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc([0.3, 0.6, 0.6, 0.9], [0, 0, 1, 1]))


def test_bag_metrics_on_an_engine():
    batches = [
        {"prob": torch.tensor([0.9, 0.2]), "label": torch.tensor([1.0, 0.0])},
        {"prob": torch.tensor([0.4]), "label": torch.tensor([1.0])},
    ]
    engine = Engine(lambda e, b: b)
    BagMetrics().attach(engine, "bag_metrics")
    engine.run(batches)
    expected = binary_metrics([0.9, 0.2, 0.4], [1, 0, 1])
    for name, value in expected.items():
        assert engine.state.metrics[name] == pytest.approx(value)
    assert engine.state.metrics["bag_metrics"]["auc"] == pytest.approx(1.0)
