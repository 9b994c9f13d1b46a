"""``report.html`` of ``ctmil cv`` and ``ctmil evaluate``: the same numbers as ``report.md`` / ``evaluation.md``, as
one self-contained page (:class:`ctmil.report.html.HtmlReport`: tables, inline ROC and reliability plots, no network).

Table ids (stable, for tests and tools): CV ``summary``, ``learnt``, ``per-fold``, ``table-iv``, ``comparisons``,
``shortcut`` (its warnings are paragraphs of class ``ctmil-warning``);
evaluate ``metrics``, ``predictions``, ``failed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ctmil.stats.metrics import METRIC_NAMES
from ctmil.evaluate.report_tables import (
    PAPER_P_VALUES, PAPER_RESULTS, SHORTCUT_INTRO, SHORTCUT_SKIPPED, canonical_setting, describe, shortcut_rows,
)  # fmt: skip
from ctmil.evaluate.shortcut import shortcut_warnings
from ctmil.report.html import HtmlReport
from ctmil.keys import Columns

__all__ = ["write_cv_html", "write_evaluate_html"]

_LABELS = {"accuracy": "Accuracy", "sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F1", "auc": "AUC"}
PathLike = "str | os.PathLike[str]"


def _pm(mean: float, sd: float = float("nan")) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def _p(p: float) -> str:
    return "n/a" if not np.isfinite(p) else ("< 1e-4" if p < 1e-4 else f"{p:.3g}")


def _setting_rows(summary: pd.DataFrame, suffix: str = "", descriptions=None, extra=None) -> pd.DataFrame:
    rows = []
    for _, row in summary.iterrows():
        cells = {"Setting": f"({row[Columns.SETTING]}) {describe(row[Columns.SETTING], descriptions)}".strip()}
        cells.update({_LABELS[m]: _pm(row[f"{m}{suffix}_mean"], row[f"{m}{suffix}_sd"]) for m in METRIC_NAMES})
        if extra:
            cells.update(extra(row))
        rows.append(cells)
    return pd.DataFrame(rows)


def _table_iv(summary: pd.DataFrame, descriptions) -> pd.DataFrame:
    ours = {str(s): r for s, r in zip(summary[Columns.SETTING], summary.to_dict("records"))}
    rows = []
    for name in sorted(set(ours) | {"A", "B", "C", "D"}):
        row = ours.get(name)
        label = f"({name}) {describe(name, descriptions)}".strip()
        rows.append({"Setting": label, "Source": "ctmil",
                     **{_LABELS[m]: "not run" if row is None else _pm(row[f"{m}_mean"], row[f"{m}_sd"]) for m in METRIC_NAMES}})
        paper = PAPER_RESULTS.get(canonical_setting(name) or "")
        rows.append({"Setting": label, "Source": f"paper ({paper[0]})" if paper else "paper",
                     **{_LABELS[m]: _pm(*paper[1][i]) if paper else "—" for i, m in enumerate(METRIC_NAMES)}})
    return pd.DataFrame(rows)


def _comparisons(tests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, t in tests.iterrows():
        paper = PAPER_P_VALUES.get(frozenset((canonical_setting(t["setting_a"]), canonical_setting(t["setting_b"]))), float("nan"))
        rows.append({
            "Comparison": f"({t['setting_b']}) vs ({t['setting_a']})", "ΔAUC": f"{t['difference']:+.3f}",
            "paired t over repeats: p": _p(t["p_value"]), "corrected resampled t: p": _p(t["nb_p_value"]),
            "bootstrap CI of ΔAUC": "n/a" if not np.isfinite(t["boot_lower"]) else f"[{t['boot_lower']:+.3f}, {t['boot_upper']:+.3f}]",
            "paper p": "—" if np.isnan(paper) else _p(paper),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _shortcut(page: HtmlReport, check: pd.DataFrame) -> None:
    page.heading("Crop shortcut check", id="h-shortcut")
    if not len(check):
        page.paragraph(SHORTCUT_SKIPPED)
        return
    page.paragraph(SHORTCUT_INTRO)
    for warning in shortcut_warnings(check):
        page.paragraph(warning, css_class="ctmil-warning")
    page.table(shortcut_rows(check), id="shortcut")


def write_cv_html(out_dir: PathLike, summary: pd.DataFrame, tests: pd.DataFrame, ctx: Mapping[str, object],
                  learnt: Optional[pd.DataFrame] = None, descriptions=None,
                  shortcut: Optional[pd.DataFrame] = None) -> Path:  # fmt: skip
    """``out_dir/report.html`` of a cross-validation (the tables of ``report.md`` and ``roc.png``; the crop
    shortcut check of :func:`~ctmil.evaluate.shortcut.shortcut_check` when ``shortcut`` is given)."""
    out = Path(out_dir)
    page = HtmlReport("ctmil cross-validation report")
    page.paragraph(f"{ctx['n_repeats']} repeat(s) of {ctx['n_folds']}-fold stratified, patient-grouped cross-validation, "
                   f"{ctx['n_cases']} cases ({ctx['n_positive']} severe). Mean ± SD over repeats of the metrics of "
                   "the pooled out-of-fold predictions; report.md tells how every number was made.")  # fmt: skip
    page.heading(f"At the fixed threshold {ctx[Columns.THRESHOLD]}", id="h-summary")
    ci = lambda r: {"AUC 95% CI (DeLong)": "n/a" if not np.isfinite(r["auc_delong_lower"]) else  # noqa: E731
                    f"[{r['auc_delong_lower']:.3f}, {r['auc_delong_upper']:.3f}]"}
    page.table(_setting_rows(summary, descriptions=descriptions, extra=ci), id="summary")
    page.heading("At the operating point learnt on training data", id="h-learnt")
    if learnt is None:
        page.paragraph("No operating point was learnt (cv#calibration_fraction 0).")
    else:
        page.paragraph("Each run fitted a calibration map and a threshold on inner validation cases held back from its "
                       "training folds (never its test fold) and applied both to its test fold; AUC ranks the "
                       "calibrated probabilities.")  # fmt: skip
        thr = lambda r: {Columns.THRESHOLD: _pm(r["threshold_mean"], r["threshold_sd"])}  # noqa: E731
        page.table(_setting_rows(learnt, descriptions=descriptions, extra=thr), id="learnt")
    page.heading("Per fold: mean ± SD over test folds", id="h-folds")
    page.table(_setting_rows(summary, "_fold", descriptions), id="per-fold")
    page.heading("Ablation (Table IV) beside the paper", id="h-table-iv")
    page.table(_table_iv(summary, descriptions), id="table-iv")
    page.heading("Paired comparisons of AUC", id="h-comparisons")
    if len(tests):
        page.table(_comparisons(tests), id="comparisons")
    else:
        page.paragraph("Only one setting: no comparison.")
    if shortcut is not None:
        _shortcut(page, shortcut)
    if (out / "roc.png").is_file():
        page.heading("ROC curves", id="h-roc").image(out / "roc.png", alt="out-of-fold ROC curves", width=480)
    return page.write(out / "report.html")


def write_evaluate_html(out_dir: PathLike, metrics: pd.DataFrame, predictions: pd.DataFrame, failed: pd.DataFrame,
                        context: str, labels: Mapping[str, str]) -> Path:  # fmt: skip
    """``out_dir/report.html`` of a held-out evaluation: metrics with CIs, ROC, reliability, the cases."""
    out = Path(out_dir)
    page = HtmlReport("ctmil held-out evaluation")
    page.paragraph(context)
    shown = pd.DataFrame({
        "Metric": [labels.get(m, m) for m in metrics["metric"]],
        "Estimate": [f"{v:.3f}" if np.isfinite(v) else "n/a" for v in metrics["estimate"]],
        "95% CI": ["–" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.3f}, {hi:.3f}]"
                   for lo, hi in zip(metrics["lower"], metrics["upper"])],
        "Method": metrics["method"],
    })  # fmt: skip
    page.heading("Metrics", id="h-metrics").table(shown, id="metrics")
    for name, alt in (("roc.png", "ROC curve"), ("reliability.png", "reliability diagram")):
        if (out / name).is_file():
            page.image(out / name, alt=alt, width=420)
    page.heading("Cases", id="h-cases").table(predictions, id="predictions", float_format="{:.3f}")
    if len(failed):
        page.heading("Cases that could not be predicted", id="h-failed").table(failed, id="failed")
    return page.write(out / "report.html")
