"""Repeated, stratified, patient-grouped folds (paper Sec. IV.C: stratified 10-fold CV repeated 5 times).

:func:`stratified_group_folds` is deterministic for a seed and never splits a patient across folds; it follows
scikit-learn's ``StratifiedGroupKFold(shuffle=True)`` greedy rule but is seeded by ctmil so that every setting
of a repeat gets exactly the same folds (scikit-learn's shuffles depend on its own RNG use).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
from ctmil.keys import Columns

__all__ = ["make_folds", "run_seed", "stratified_group_folds"]

logger = logging.getLogger(__name__)


def stratified_group_folds(labels: Sequence[int], groups: Sequence[Any], n_folds: int, seed: int) -> np.ndarray:
    """Assign each sample a fold in ``0..n_folds-1``; all samples of a group share a fold.

    Greedy, like scikit-learn's ``StratifiedGroupKFold(shuffle=True)``: groups are visited in a seeded random
    order, larger groups first, and each goes to the fold that keeps every class's share across folds most
    even (smallest mean over classes of the std of ``fold count / class total``); ties go to the fold with
    fewer samples, then the lower index. With one sample per group, fold counts of each class differ by at most one.
    """
    labels = np.asarray(labels)
    groups = np.asarray([str(g) for g in groups])
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError("labels and groups must be 1-D and of the same length.")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}.")
    classes, y = np.unique(labels, return_inverse=True)
    names, g = np.unique(groups, return_inverse=True)
    if names.size < n_folds:
        raise ValueError(f"{names.size} groups cannot fill {n_folds} folds.")
    counts = np.zeros((names.size, classes.size))  # (groups, classes)
    np.add.at(counts, (g, y), 1)
    totals = counts.sum(axis=0)  # (classes,)
    order = np.random.default_rng(seed).permutation(names.size)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((n_folds, classes.size))  # (folds, classes)
    group_fold = np.empty(names.size, dtype=int)
    for grp in order:
        best_key, best = None, -1
        for f in range(n_folds):
            fold_counts[f] += counts[grp]
            key = (round(float((fold_counts / totals).std(axis=0).mean()), 12), fold_counts[f].sum(), f)
            fold_counts[f] -= counts[grp]
            if best_key is None or key < best_key:
                best_key, best = key, f
        fold_counts[best] += counts[grp]
        group_fold[grp] = best
    return group_fold[g]


def run_seed(*parts: int) -> int:
    """A seed derived from ``parts`` (e.g. ``(seed, repeat, fold)``), stable across platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def make_folds(datalist: pd.DataFrame, n_folds: int, n_repeats: int, seed: int) -> pd.DataFrame:
    """The fold manifest: one row per (repeat, case) with ``repeat, fold, case_id, patient, label``."""
    rows = []
    for r in range(n_repeats):
        folds = stratified_group_folds(datalist[Columns.LABEL].tolist(), datalist["patient"].tolist(), n_folds, run_seed(seed, r))
        rows.append(
            pd.DataFrame(
                {
                    Columns.REPEAT: r,
                    Columns.FOLD: folds,
                    Columns.CASE_ID: datalist[Columns.CASE_ID].values,
                    "patient": datalist["patient"].values,
                    Columns.LABEL: datalist[Columns.LABEL].values,
                }
            )
        )
    manifest = pd.concat(rows, ignore_index=True)
    for (r, f), part in manifest.groupby([Columns.REPEAT, Columns.FOLD]):
        if part[Columns.LABEL].nunique() < 2:
            logger.warning("repeat %d fold %d holds only one class (%d cases).", r, f, len(part))
    return manifest
