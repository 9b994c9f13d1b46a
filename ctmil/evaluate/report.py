"""The cross-validation report: a Table IV-style summary, t-tests on AUC and ROC curves.

How the numbers are made (see also ``docs/training.md``):

* **Per repeat, pooled out-of-fold.** For each setting and repeat, the out-of-fold predictions of all folds
  are pooled (every case predicted once, by the model that did not see it) and the five metrics are
  computed once on the pool (``repeat_metrics.csv``). Per-fold metrics are noisy with few positives per fold
  (AUC is undefined for a fold without positives); they are written too (``fold_metrics.csv``) but not
  averaged.
* **Mean ± SD over repeats** (sample SD, ``ddof=1``; ``nan`` with one repeat): ``report.csv``/``report.md``.
* **Two-sample t-tests** (``scipy.stats.ttest_ind``, equal variances, as the paper's "two-sample t-test")
  on the per-repeat AUCs of every pair of settings: ``ttests.csv``; ``nan`` with fewer than two repeats.
* ``roc.png``: one ROC curve per (setting, repeat) of the pooled predictions.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import pandas as pd
from scipy import stats

from ctmil.evaluate.metrics import METRIC_NAMES, binary_metrics, roc_curve

__all__ = ["metric_table", "plot_roc", "repeat_metrics", "fold_metrics", "summary_table", "ttests", "write_report"]

logger = logging.getLogger(__name__)

_DESCRIPTIONS = {"A": "MIL only", "B": "MIL + augmentation", "C": "MIL + self-supervision", "D": "MIL + both"}
_PREDICTION_COLUMNS = ("case_id", "setting", "repeat", "fold", "prob", "label")


def _check(predictions: pd.DataFrame) -> None:
    missing = [c for c in _PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions are missing columns {missing}.")


def metric_table(predictions: pd.DataFrame, by: List[str], threshold: float = 0.5) -> pd.DataFrame:
    """The five metrics (and the case counts) of each group of ``predictions`` grouped by ``by``."""
    _check(predictions)
    rows = []
    for key, part in predictions.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        m = binary_metrics(part["prob"].to_numpy(), part["label"].to_numpy(), threshold)
        rows.append({**dict(zip(by, key)), "n_cases": len(part), "n_positive": int(part["label"].sum()), **m})
    return pd.DataFrame(rows, columns=[*by, "n_cases", "n_positive", *METRIC_NAMES])


def repeat_metrics(predictions: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Metrics of the pooled out-of-fold predictions of each (setting, repeat)."""
    return metric_table(predictions, ["setting", "repeat"], threshold)


def fold_metrics(predictions: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Metrics of each (setting, repeat, fold) test fold."""
    return metric_table(predictions, ["setting", "repeat", "fold"], threshold)


def summary_table(per_repeat: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample SD over repeats per setting: ``setting, description, n_repeats, <metric>_mean, <metric>_sd``."""
    rows = []
    for setting, part in per_repeat.groupby("setting", sort=True):
        row: Dict[str, object] = {"setting": setting, "description": _DESCRIPTIONS.get(str(setting), ""),
                                  "n_repeats": len(part)}
        for m in METRIC_NAMES:
            values = part[m].to_numpy(dtype=float)
            row[f"{m}_mean"] = float(np.mean(values))
            row[f"{m}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def ttests(per_repeat: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Two-sample t-test of ``metric`` over repeats for every pair of settings."""
    rows = []
    settings = sorted(per_repeat["setting"].unique())
    for a, b in itertools.combinations(settings, 2):
        xa = per_repeat.loc[per_repeat["setting"] == a, metric].to_numpy(dtype=float)
        xb = per_repeat.loc[per_repeat["setting"] == b, metric].to_numpy(dtype=float)
        if len(xa) > 1 and len(xb) > 1 and np.isfinite(xa).all() and np.isfinite(xb).all():
            res = stats.ttest_ind(xb, xa)
            t, p = float(res.statistic), float(res.pvalue)
        else:
            t, p = float("nan"), float("nan")
        rows.append({"setting_a": a, "setting_b": b, "metric": metric, "mean_a": float(np.mean(xa)),
                     "mean_b": float(np.mean(xb)), "t": t, "p_value": p})
    return pd.DataFrame(rows, columns=["setting_a", "setting_b", "metric", "mean_a", "mean_b", "t", "p_value"])


def plot_roc(predictions: pd.DataFrame, path: Union[str, "os.PathLike[str]"]) -> None:
    """ROC curves of the pooled out-of-fold predictions, one per (setting, repeat), coloured by setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    per_repeat = repeat_metrics(predictions)
    for i, (setting, part) in enumerate(predictions.groupby("setting", sort=True)):
        aucs = per_repeat.loc[per_repeat["setting"] == setting, "auc"]
        label = f"{setting} {_DESCRIPTIONS.get(str(setting), '')} (AUC {aucs.mean():.3f})"
        for j, (_, rep) in enumerate(part.groupby("repeat", sort=True)):
            if rep["label"].nunique() < 2:
                continue
            fpr, tpr, _ = roc_curve(rep["prob"].to_numpy(), rep["label"].to_numpy())
            ax.step(fpr, tpr, where="post", color=colours[i % len(colours)], alpha=0.8 if j == 0 else 0.35,
                    label=label if j == 0 else None)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("Out-of-fold ROC, one curve per repeat")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def _markdown(summary: pd.DataFrame, tests: pd.DataFrame, n_repeats: int, n_folds: int, threshold: float) -> str:
    lines = [
        "# Cross-validation report",
        "",
        f"{n_repeats} repeat(s) of {n_folds}-fold stratified, patient-grouped cross-validation. "
        "Each repeat's metrics are computed on its pooled out-of-fold predictions "
        f"(threshold {threshold}); the table shows mean ± sample SD over repeats.",
        "",
        "| Method | Accuracy | Sensitivity | Specificity | F1-Score | AUC |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        cells = [_fmt(row[f"{m}_mean"], row[f"{m}_sd"]) for m in METRIC_NAMES]
        lines.append(f"| ({row['setting']}) {row['description']} | " + " | ".join(cells) + " |")
    lines += ["", "## Two-sample t-tests on AUC (over repeats)", ""]
    if len(tests) == 0:
        lines.append("Only one setting: no comparison.")
    else:
        lines += ["| Comparison | mean AUC | t | p |", "|---|---|---|---|"]
        for _, t in tests.iterrows():
            p = "n/a (needs ≥ 2 repeats)" if not np.isfinite(t["p_value"]) else f"{t['p_value']:.3g}"
            tt = "n/a" if not np.isfinite(t["t"]) else f"{t['t']:.3f}"
            lines.append(f"| ({t['setting_b']}) vs ({t['setting_a']}) | {t['mean_b']:.3f} vs {t['mean_a']:.3f} | {tt} | {p} |")
    lines += [
        "",
        "Files: `report.csv` (this table), `repeat_metrics.csv`, `fold_metrics.csv`, `ttests.csv`, "
        "`predictions.csv`, `folds.csv`, `roc.png`, `config.json`, `model.pt` + `model.json` (final model).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out_dir: Union[str, "os.PathLike[str]"], predictions: pd.DataFrame, threshold: float = 0.5
) -> Dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``repeat_metrics.csv``, ``fold_metrics.csv``, ``ttests.csv`` and
    ``roc.png`` into ``out_dir``; returns their paths by name."""
    _check(predictions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_repeat = repeat_metrics(predictions, threshold)
    per_fold = fold_metrics(predictions, threshold)
    summary = summary_table(per_repeat)
    tests = ttests(per_repeat)
    paths = {
        "report_csv": out / "report.csv",
        "report_md": out / "report.md",
        "repeat_metrics": out / "repeat_metrics.csv",
        "fold_metrics": out / "fold_metrics.csv",
        "ttests": out / "ttests.csv",
        "roc": out / "roc.png",
    }
    summary.to_csv(paths["report_csv"], index=False)
    per_repeat.to_csv(paths["repeat_metrics"], index=False)
    per_fold.to_csv(paths["fold_metrics"], index=False)
    tests.to_csv(paths["ttests"], index=False)
    n_folds = int(predictions["fold"].nunique())
    n_repeats = int(predictions["repeat"].nunique())
    paths["report_md"].write_text(_markdown(summary, tests, n_repeats, n_folds, threshold))
    plot_roc(predictions, paths["roc"])
    logger.info("report written to %s", out)
    return paths
