"""The quantitative baseline ``Q`` of ``ctmil cv``: the bag's lung-density features + a logistic regression.

What it is: the features of :func:`ctmil.transforms.density_vector` (24 density-histogram bins inside the lung
mask, the ground-glass and consolidation fractions, the lung volume) of each bag's ``meta["density"]``; columns
that are ``nan`` in every training case (the volume of slice-image inputs) are dropped, any other ``nan`` is an
error (nothing is imputed); then ``StandardScaler`` and an L2 ``LogisticRegression`` whose ``C`` is chosen from
:data:`C_GRID` inside each training set, by ROC AUC over :data:`INNER_FOLDS` stratified, patient-grouped inner
folds (:func:`ctmil.stats.folds.stratified_group_folds`, seeded by the run). Deterministic for a seed.

In ``ctmil cv`` (:mod:`ctmil.evaluate.cv`) ``Q`` runs on the deep settings' folds, holds back the same inner
validation cases of each fold, and learns its operating point on them with
:func:`ctmil.stats.operating_point.fit_operating_point`, as the deep runs' ``OperatingPointHandler`` does.

Why a logistic regression and not a random forest (measured 2026-12-07 with ``bench/quantitative.py`` on the
Per-COVID-19 sample preprocessed by ctmil: 73 patients, 23 severe, lung-window slice images, so no volume;
3 folds x 5 repeats of :func:`~ctmil.stats.folds.make_folds` with fold seeds 0 and 1; per fold, 20 % of the
training cases held back by ``split_cases`` with the run's seed, the model fitted on the rest, a Platt map and a
Youden threshold learnt on the held-back cases). "AUC, all training" is the model fitted on the whole training
folds; the other columns are at the learnt point. Pooled per repeat, mean ± SD over the 10 repeats:

==============================  ===============  ===============  ===============  ===============  ===============
model                           AUC, all train   AUC, held back   accuracy         sensitivity      specificity
==============================  ===============  ===============  ===============  ===============  ===============
RandomForest(500)               0.964 ± 0.007    0.963 ± 0.009    0.895 ± 0.044    0.857 ± 0.029    0.912 ± 0.065
LogisticRegression(C=0.01)      0.982 ± 0.007    0.975 ± 0.012    0.916 ± 0.033    0.861 ± 0.073    0.942 ± 0.038
LogisticRegression(C=0.1)       0.981 ± 0.009    0.972 ± 0.014    0.901 ± 0.035    0.848 ± 0.072    0.926 ± 0.049
LogisticRegression(C=1)         0.969 ± 0.019    0.958 ± 0.017    0.890 ± 0.035    0.839 ± 0.065    0.914 ± 0.057
LogisticRegression(C=10)        0.962 ± 0.025    0.955 ± 0.019    0.878 ± 0.045    0.848 ± 0.062    0.892 ± 0.073
Q: C by inner CV (this module)  0.975 ± 0.020    0.971 ± 0.013    0.914 ± 0.034    0.861 ± 0.073    0.938 ± 0.042
==============================  ===============  ===============  ===============  ===============  ===============

The strongly regularised regressions (C <= 0.1) beat the forest in every column but sensitivity (a tie).
Taking the best C of this table would tune Q on the cases it is scored on, so Q chooses C inside each training
set (last row; the forest, in the same pipeline, needs no scaler but is not hurt by it): still stronger than the
forest, and free to choose another C on larger cohorts or on HU inputs (which add the volume). With 73 cases the
rows differ by less than the DeLong CI of one AUC (about ± 0.03).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ctmil.stats.folds import stratified_group_folds
from ctmil.stats.operating_point import fit_operating_point
from ctmil.transforms import DENSITY_FEATURES, density_vector
from ctmil.keys import Columns

__all__ = ["C_GRID", "DESCRIPTION", "DropEmptyColumns", "INNER_FOLDS", "QUANTITATIVE", "density_features",
           "fit_baseline", "predict_fold"]  # fmt: skip

#: the setting name of the quantitative baseline in ``cv#settings`` and in the reports
QUANTITATIVE = "Q"
#: what ``Q`` is, as the reports show it
DESCRIPTION = "lung-density histogram + logistic regression (quantitative baseline)"
#: the inverse L2 strengths searched in each training set (ascending: on a tie the stronger regularisation wins)
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: inner folds of the search; fewer when a class has fewer patients, none (``FALLBACK_C``) below 2
INNER_FOLDS = 3
FALLBACK_C = 0.1

logger = logging.getLogger(__name__)


class DropEmptyColumns(TransformerMixin, BaseEstimator):
    """Drop the columns that are ``nan`` in every fitted row (``x: (N, F) -> (N, F_kept)``); any other ``nan`` is a
    ``ValueError`` (nothing is imputed)."""

    def fit(self, x, y=None) -> "DropEmptyColumns":
        x = np.asarray(x, dtype=np.float64)
        self.keep_ = ~np.isnan(x).all(axis=0)
        if not self.keep_.any():
            raise ValueError("every density feature is nan")
        self.transform(x)
        return self

    def transform(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)[:, self.keep_]
        if np.isnan(x).any():
            rows, cols = np.nonzero(np.isnan(x))
            names = np.asarray(self.get_feature_names_out())[np.unique(cols)]
            raise ValueError(f"density feature(s) {', '.join(map(str, names))} missing (nan) in {np.unique(rows).size} case(s)")
        return x

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        names = list(input_features) if input_features is not None else list(DENSITY_FEATURES)
        if len(names) != self.keep_.size:
            names = [f"x{i}" for i in range(self.keep_.size)]
        return np.asarray(names, dtype=object)[self.keep_]


def density_features(table: pd.DataFrame, load: Callable[[str], dict]) -> Tuple[Optional[pd.DataFrame], str]:
    """``(features, "")``: one row per case of ``table`` (``case_id, bag``), indexed by ``case_id``, columns
    :data:`~ctmil.transforms.DENSITY_FEATURES` of ``load(bag)["meta"]["density"]``; or ``(None, reason)`` when Q
    cannot run on these bags (some record no density, they mix HU and lung-window inputs, a feature is partly nan)."""
    rows, kinds, missing = [], [], []
    for case_id, path in zip(table[Columns.CASE_ID], table["bag"]):
        density = (load(path).get("meta") or {}).get("density")
        if not density:
            missing.append(str(case_id))
            continue
        try:
            rows.append(density_vector(density))
        except (KeyError, TypeError, ValueError) as err:
            return None, f"the density features of {case_id} are unusable ({err})"
        kinds.append(str(density.get("intensity", "?")))
    if missing:
        return None, (f"{len(missing)} of {len(table)} bags record no lung-density features (meta['density'], e.g. "
                      f"{missing[0]}): bags made before they were recorded; preprocess them again")  # fmt: skip
    if len(set(kinds)) > 1:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(pd.Series(kinds).value_counts().items()))
        return None, f"the bags mix intensity kinds ({counts}), whose density features are not comparable"
    index = pd.Index(table[Columns.CASE_ID].astype(str), name=Columns.CASE_ID)
    features = pd.DataFrame(np.stack(rows), index=index, columns=list(DENSITY_FEATURES))
    try:
        DropEmptyColumns().fit(features.to_numpy())
    except ValueError as err:
        return None, str(err)
    return features, ""


def _inner_splits(labels: np.ndarray, groups: Sequence, seed: int) -> Optional[list]:
    """``[(train rows, test rows)]`` of the C search, each side with both classes; ``None`` when too few patients."""
    per_class = [len(set(np.asarray(groups, dtype=str)[labels == c])) for c in (0, 1)]
    n = min(INNER_FOLDS, *per_class)
    if n < 2:
        return None
    folds = stratified_group_folds(labels.tolist(), list(groups), n, seed)
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n)]
    return splits if all(np.unique(labels[i]).size == 2 for s in splits for i in s) else None


def fit_baseline(features, labels, groups: Sequence, seed: int) -> Pipeline:
    """Q fitted on ``features: (N, F)`` and 0/1 ``labels: (N,)`` of patients ``groups``: the pipeline (empty
    columns dropped, scaler, logistic regression at the ``C`` of the seeded inner search), refitted on all ``N``.
    Cases of one class only (a tiny cohort's fold) give sklearn's ``DummyClassifier``: that class, whatever the case."""
    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if np.unique(y).size < 2:
        logger.warning("Q: the %d training cases are all of class %d; it predicts that class for every case", y.size, y[0])
        return Pipeline([("drop", DropEmptyColumns()), ("model", DummyClassifier(strategy="prior"))]).fit(x, y)
    pipe = Pipeline([("drop", DropEmptyColumns()), ("scale", StandardScaler()),
                     ("model", LogisticRegression(C=FALLBACK_C, max_iter=5000, random_state=seed))])  # fmt: skip
    splits = _inner_splits(y, groups, seed)
    if splits is None:
        return pipe.fit(x, y)
    search = GridSearchCV(pipe, {"model__C": list(C_GRID)}, scoring="roc_auc", cv=splits, refit=True, error_score="raise")
    return search.fit(x, y).best_estimator_


def predict_fold(features: pd.DataFrame, fit: pd.DataFrame, calibration: pd.DataFrame, test: pd.DataFrame, seed: int,
                 calibration_method: str = "platt", rule: str = "youden", target: Optional[float] = None,
                 fallback_threshold: float = 0.5) -> Tuple[pd.DataFrame, dict]:  # fmt: skip
    """One run of Q: fitted on the ``fit`` rows of a bag table (``case_id, label, patient``), its operating point
    learnt on the ``calibration`` rows (none: the fixed ``fallback_threshold``), the ``test`` rows predicted.

    Returns ``(case_id, raw_probability, label of the test rows, operating point)``; the point also records ``model`` (``C``).
    """
    model = fit_baseline(features.loc[fit[Columns.CASE_ID].astype(str)], fit[Columns.LABEL], fit["patient"].tolist(), seed)

    def prob(rows: pd.DataFrame) -> np.ndarray:  # P(severe) of the rows, (len(rows),)
        if not len(rows):
            return np.zeros(0)
        p = model.predict_proba(features.loc[rows[Columns.CASE_ID].astype(str)].to_numpy())
        classes = list(model.classes_)
        return p[:, classes.index(1)] if 1 in classes else np.zeros(len(rows))

    if rule == "prevalence" and target is None:  # as the deep runs' handler: every case it trained and calibrated on
        known = pd.concat([fit[Columns.LABEL], calibration[Columns.LABEL]]).astype(float)
        target = float(known.mean()) if 0 < known.sum() < len(known) else None
    point = fit_operating_point(prob(calibration), calibration[Columns.LABEL].to_numpy(), calibration_method, rule, target,
                                fallback_threshold, source="inner validation")  # fmt: skip
    estimator = model.named_steps["model"]
    point["model"] = {"name": type(estimator).__name__, "C": getattr(estimator, "C", None), "n_fit": len(fit)}
    return pd.DataFrame({Columns.CASE_ID: test[Columns.CASE_ID].astype(str).tolist(), Columns.RAW_PROBABILITY: prob(test),
                         Columns.LABEL: test[Columns.LABEL].astype(int).tolist()}), point  # fmt: skip
