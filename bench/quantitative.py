"""Which model for the quantitative baseline Q: random forest or logistic regression on the lung-density features.

Run: ``.venv/bin/python bench/quantitative.py --datalist BAGS.csv [--folds 3] [--repeats 5] [--seeds 0 1]``, with
``BAGS.csv`` a bag datalist written by ``ctmil preprocess`` (``case_id, bag, label[, patient]``), e.g. of the
Per-COVID-19 sample. Prints one Markdown table: per model, the pooled out-of-fold AUC of the model fitted on the
whole training folds, and, by ``ctmil cv``'s protocol for Q (20 % of the training folds held back by
``split_cases`` with the run's seed, the model fitted on the rest, a Platt map and a Youden threshold learnt on
the held-back cases), the AUC, accuracy, sensitivity and specificity at the learnt point. Mean ± SD over the
repeats of all fold seeds. The result is recorded in the docstring of :mod:`ctmil.stats.quantitative`.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ctmil.bundle import load_bag_datalist, split_cases
from ctmil.data.bags import load_bag
from ctmil.stats.folds import make_folds, run_seed
from ctmil.stats.metrics import binary_metrics, roc_auc
from ctmil.stats.operating_point import apply_operating_point, fit_operating_point
from ctmil.stats.quantitative import DropEmptyColumns, density_features, fit_baseline


def _pipeline(model):
    return lambda x, y, groups, seed: Pipeline([("drop", DropEmptyColumns()), ("scale", StandardScaler()), ("model", model(seed))]).fit(x, y)


CANDIDATES = {
    "RandomForest(500)": _pipeline(lambda s: RandomForestClassifier(500, random_state=s, n_jobs=2)),
    **{f"LogisticRegression(C={c:g})": _pipeline(lambda s, c=c: LogisticRegression(C=c, max_iter=5000, random_state=s))
       for c in (0.01, 0.1, 1.0, 10.0)},
    "Q: C by inner CV": fit_baseline,
}  # fmt: skip


def evaluate(fit, table: pd.DataFrame, x: pd.DataFrame, folds: int, repeats: int, seeds) -> dict:
    """The columns of one row: pooled per repeat, one value per (seed, repeat)."""
    y = table["label"].to_numpy()
    cols = {k: [] for k in ("AUC, all training", "AUC, held back", "accuracy", "sensitivity", "specificity")}
    for seed in seeds:
        manifest = make_folds(table, folds, repeats, seed)
        for r in range(repeats):
            fold = manifest[manifest["repeat"] == r].set_index("case_id").loc[table["case_id"], "fold"].to_numpy()
            raw, cal, decision = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
            for f in range(folds):
                test, s = fold == f, run_seed(seed, r, f)
                train = table[~test]
                raw[test] = fit(x.loc[train["case_id"]], train["label"], train["patient"], s).predict_proba(x.to_numpy()[test])[:, 1]
                inner, held = split_cases(train, 0.2, s)
                model = fit(x.loc[inner["case_id"]], inner["label"], inner["patient"], s)
                point = fit_operating_point(model.predict_proba(x.loc[held["case_id"]])[:, 1], held["label"], "platt", "youden")
                cal[test], decision[test] = apply_operating_point(point, model.predict_proba(x.to_numpy()[test])[:, 1])
            m = binary_metrics(decision, y, 0.5)
            cols["AUC, all training"].append(roc_auc(raw, y))
            cols["AUC, held back"].append(roc_auc(cal, y))
            for k in ("accuracy", "sensitivity", "specificity"):
                cols[k].append(m[k])
    return cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", required=True, help="a bag datalist (ctmil preprocess writes one)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fold seeds (make_folds)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    table = load_bag_datalist(args.datalist)
    x, reason = density_features(table, load_bag)
    if x is None:
        raise SystemExit(f"no density features: {reason}")
    print(f"{time.strftime('%Y-%m-%d')} | {args.datalist}: {len(table)} cases ({int(table['label'].sum())} severe), "
          f"{args.folds} folds x {args.repeats} repeats, fold seeds {args.seeds}; pooled per repeat, mean ± SD over repeats\n")
    print("| model | AUC, all training | AUC, held back | accuracy | sensitivity | specificity | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, fit in CANDIDATES.items():
        t0 = time.perf_counter()
        cols = evaluate(fit, table.reset_index(drop=True), x, args.folds, args.repeats, args.seeds)
        cells = " | ".join(f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" for v in cols.values())
        print(f"| {name} | {cells} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
