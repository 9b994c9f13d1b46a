"""The text of the cross-validation report: setting names, the paper's numbers and the markdown of ``report.md``.

:func:`render_markdown` turns the tables of :mod:`ctmil.evaluate.report` and
:mod:`ctmil.evaluate.report_comparisons` into ``report.md``: the summary (pooled per repeat), the per-fold table,
a Table IV-style table beside the paper's numbers, the paired comparisons, the crop shortcut check (when given) and,
in words, how each number was made.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ctmil.stats.metrics import METRIC_NAMES
from ctmil.stats.quantitative import DESCRIPTION as QUANTITATIVE_DESCRIPTION
from ctmil.stats.quantitative import QUANTITATIVE
from ctmil.evaluate.shortcut import measure_name, shortcut_warnings
from ctmil.train.settings import SETTINGS
from ctmil.keys import Columns

__all__ = ["DESCRIPTIONS", "PAPER_P_VALUES", "PAPER_RESULTS", "SHORTCUT_INTRO", "SHORTCUT_SKIPPED", "canonical_setting",
           "describe", "render_markdown", "shortcut_rows"]  # fmt: skip

#: Setting -> what it is (paper Sec. IV.E; ``Q``: ctmil's quantitative baseline, :mod:`ctmil.stats.quantitative`).
#: A relative-SSL variant is named ``<letter>-rel`` (see :func:`canonical_setting`).
#: what each setting is, as the reports name it: the training settings' table and the quantitative baseline
DESCRIPTIONS = {**{k: s.description for k, s in SETTINGS.items() if "-" not in k}, QUANTITATIVE: QUANTITATIVE_DESCRIPTION}

#: The paper's results, mean ± SD of (accuracy, sensitivity, specificity, F1, AUC), 10-fold CV repeated 5 times on
#: 229 patients. A-D: Table IV ("The results of the ablation study"); C-rel: Table VI ("Performance of different
#: pretext tasks"), row "Relative Patch Location" (MIL + the relative patch location task, no augmentation).
PAPER_RESULTS: Dict[str, Tuple[str, Tuple[Tuple[float, float], ...]]] = {
    "A": ("Table IV", ((0.908, 0.029), (0.740, 0.084), (0.954, 0.031), (0.776, 0.064), (0.932, 0.022))),
    "B": ("Table IV", ((0.942, 0.025), (0.916, 0.022), (0.949, 0.036), (0.874, 0.045), (0.971, 0.004))),
    "C": ("Table IV", ((0.937, 0.029), (0.844, 0.129), (0.963, 0.009), (0.850, 0.079), (0.964, 0.030))),
    "D": ("Table IV", ((0.958, 0.015), (0.936, 0.032), (0.964, 0.024), (0.895, 0.029), (0.981, 0.006))),
    "C-rel": ("Table VI", ((0.916, 0.004), (0.796, 0.114), (0.949, 0.032), (0.801, 0.024), (0.951, 0.014))),
}

#: The paper's p-values of its "two-sample t-test" on AUC (Sec. IV.E for A-D, Sec. IV.I.3 absolute vs relative).
PAPER_P_VALUES: Dict[frozenset, float] = {
    frozenset(("A", "B")): 0.015, frozenset(("A", "C")): 0.028, frozenset(("A", "D")): 0.006,
    frozenset(("B", "D")): 0.027, frozenset(("C", "D")): 0.007, frozenset(("C", "C-rel")): 0.041,
}  # fmt: skip

#: The text of the crop shortcut check (``report.md`` and ``report.html``).
SHORTCUT_INTRO = (
    "Does the lung box's size relative to the body tell severe from non-severe on its own? If it does, the model "
    "can learn box geometry instead of the lungs. Per case, the box's height and width as a share of the body's "
    "(mean over the kept slices); AUC of severe vs non-severe as it is (> 0.5: larger in severe cases) with its "
    "DeLong CI, and Spearman's ρ with the label. A measure whose CI excludes 0.5 is flagged."
)
SHORTCUT_SKIPPED = ("No bag records the crop box's share of the body (bags made before it was recorded): "
                    "the check was skipped.")  # fmt: skip

_METRIC_HEADER = "| Accuracy | Sensitivity | Specificity | F1-Score | AUC |"
_RELATIVE = re.compile(r"^([A-D])(?:[-_ ]?(rel|relative))?$", re.IGNORECASE)


def canonical_setting(setting: object) -> Optional[str]:
    """``"A"``..``"D"``, ``"<letter>-rel"`` or ``"Q"`` for a known setting name (``D-rel``, ``d_relative``, ...), else ``None``."""
    if str(setting).strip().upper() == QUANTITATIVE:
        return QUANTITATIVE
    match = _RELATIVE.match(str(setting).strip())
    if match is None:
        return None
    return match.group(1).upper() + ("-rel" if match.group(2) else "")


def describe(setting: object, descriptions: Optional[Mapping[str, str]] = None) -> str:
    """What ``setting`` is: ``descriptions[setting]`` when given, a known setting's description, else ``""``."""
    if descriptions and str(setting) in descriptions:
        return str(descriptions[str(setting)])
    name = canonical_setting(setting)
    if name is None:
        return ""
    return DESCRIPTIONS[name[0]] + (" (relative patch location)" if name.endswith("-rel") else "")


def _label(setting: object, descriptions: Optional[Mapping[str, str]]) -> str:
    return f"({setting}) {describe(setting, descriptions)}".strip()


def _fmt(mean: float, sd: float = float("nan")) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "< 1e-4" if p < 1e-4 else f"{p:.3g}"


def _summary_section(summary: pd.DataFrame, level: float, descriptions) -> List[str]:
    lines = [
        "## Summary at the fixed threshold: pooled out-of-fold predictions per repeat, mean ± SD over repeats",
        "",
        f"| Method {_METRIC_HEADER} AUC {level:.0%} CI (DeLong) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        cells = [_fmt(row[f"{m}_mean"], row[f"{m}_sd"]) for m in METRIC_NAMES]
        lo, hi = row["auc_delong_lower"], row["auc_delong_upper"]
        cells.append(f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "n/a")
        lines.append(f"| {_label(row[Columns.SETTING], descriptions)} | " + " | ".join(cells) + " |")
    return lines


def _fitted_lines(learnt: pd.DataFrame, descriptions) -> List[str]:
    """What each setting's runs did: the map and threshold fitted, or the fixed threshold kept (said, never implied)."""
    if "runs_fitted" not in learnt:
        return []
    out = []
    for _, row in learnt.iterrows():
        fitted, runs = int(row["runs_fitted"]), int(row["runs"])
        if fitted < runs:
            out.append(f"- {_label(row[Columns.SETTING], descriptions)}: {fitted} of {runs} runs fitted a map and a threshold; "
                       f"{runs - fitted} kept the fixed threshold (their inner validation cases lacked a class).")
        else:
            out.append(f"- {_label(row[Columns.SETTING], descriptions)}: all {runs} runs fitted a map and a threshold.")
    return out + [""]


def _learnt_section(learnt: Optional[pd.DataFrame], descriptions) -> List[str]:
    lines = ["## At the operating point learnt on training data", ""]
    if learnt is None:
        return lines + ["No operating point was learnt (`cv#calibration_fraction` 0): every run used the fixed threshold."]
    lines += [
        "Each run fits a Platt/isotonic map and a threshold on its inner validation cases (held back from its "
        "training folds, never its test fold) and applies both to its test fold. AUC ranks the calibrated "
        "probabilities (each map keeps the order within its fold and puts the folds' models on one scale).",
        "",
        *_fitted_lines(learnt, descriptions),
        f"| Method {_METRIC_HEADER} threshold (mean ± SD over runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, row in learnt.iterrows():
        cells = [_fmt(row[f"{m}_mean"], row[f"{m}_sd"]) for m in METRIC_NAMES]
        cells.append(_fmt(row["threshold_mean"], row["threshold_sd"]))
        lines.append(f"| {_label(row[Columns.SETTING], descriptions)} | " + " | ".join(cells) + " |")
    return lines


def _fold_section(summary: pd.DataFrame, descriptions) -> List[str]:
    lines = [
        "## Per fold: mean ± SD over the test folds of all repeats",
        "",
        "| Method " + _METRIC_HEADER + " folds | folds without AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, row in summary.iterrows():
        cells = [_fmt(row[f"{m}_fold_mean"], row[f"{m}_fold_sd"]) for m in METRIC_NAMES]
        skipped = int(row["n_folds"] - row["auc_fold_n"])
        lines.append(f"| {_label(row[Columns.SETTING], descriptions)} | " + " | ".join(cells) + f" | {int(row['n_folds'])} | {skipped} |")
    return lines


def _table_iv_section(summary: pd.DataFrame, descriptions) -> List[str]:
    lines = [
        "## Table IV: ctmil beside the paper",
        "",
        "ctmil: pooled per repeat, mean ± SD over repeats (as the summary). Paper: Table IV (A-D) and Table VI "
        "(relative patch location, C-rel).",
        "",
        "| Method | Source " + _METRIC_HEADER,
        "|---|---|---|---|---|---|---|",
    ]
    ours = {str(s): row for s, row in zip(summary[Columns.SETTING], summary.to_dict("records"))}
    names = sorted(set(ours) | {"A", "B", "C", "D"})
    for name in names:
        row = ours.get(name)
        cells = ["not run"] * 5 if row is None else [_fmt(row[f"{m}_mean"], row[f"{m}_sd"]) for m in METRIC_NAMES]
        lines.append(f"| {_label(name, descriptions)} | ctmil | " + " | ".join(cells) + " |")
        paper = PAPER_RESULTS.get(canonical_setting(name) or "")
        if paper is None:
            lines.append("| | paper | " + " | ".join(["not in the paper"] + ["—"] * 4) + " |")
        else:
            lines.append(f"| | paper ({paper[0]}) | " + " | ".join(_fmt(m, s) for m, s in paper[1]) + " |")
    return lines


def _comparison_section(tests: pd.DataFrame, level: float) -> List[str]:
    lines = ["## Paired comparisons of AUC (b − a)", ""]
    if len(tests) == 0:
        return lines + ["Only one setting: no comparison."]
    lines += [
        f"| Comparison (b vs a) | mean AUC b vs a | ΔAUC | paired t over repeats | corrected resampled t over "
        f"folds × repeats | {level:.0%} bootstrap CI of ΔAUC | paper p |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, t in tests.iterrows():
        paired = "n/a (needs ≥ 2 repeats)" if not np.isfinite(t["p_value"]) else (
            f"t = {t['t']:.2f} (df {t['df']:.0f}), p = {_p(t['p_value'])}")
        corrected = "n/a (needs ≥ 2 folds with AUC)" if not np.isfinite(t["nb_p_value"]) else (
            f"t = {t['nb_t']:.2f} (df {t['nb_df']:.0f}), p = {_p(t['nb_p_value'])}")
        ci = "n/a" if not np.isfinite(t["boot_lower"]) else f"[{t['boot_lower']:+.3f}, {t['boot_upper']:+.3f}]"
        key = frozenset((canonical_setting(t["setting_a"]), canonical_setting(t["setting_b"])))
        paper = PAPER_P_VALUES.get(key, float("nan"))
        lines.append(
            f"| ({t['setting_b']}) vs ({t['setting_a']}) | {_fmt(t['mean_b'])} vs {_fmt(t['mean_a'])} | "
            f"{t['difference']:+.3f} | {paired} | {corrected} | {ci} | {'—' if np.isnan(paper) else _p(paper)} |"
        )
    return lines


def shortcut_rows(check: pd.DataFrame) -> pd.DataFrame:
    """The crop shortcut check (:func:`~ctmil.evaluate.shortcut.shortcut_check`) as display text, one row per
    measure: ``Measure, Cases (severe), AUC [CI], Spearman ρ, Verdict``."""
    auc = f"AUC [{float(check['level'].iloc[0]) if len(check) else 0.95:.0%} CI]"
    rows = []
    for row in check.to_dict("records"):
        cases = f"{row['n_cases']} ({row['n_severe']})" + (f", {row['n_missing']} without it" if row["n_missing"] else "")
        if np.isfinite(row["auc_lower"]):
            ci = f"{_fmt(row['auc'])} [{row['auc_lower']:.3f}, {row['auc_upper']:.3f}]"
            verdict = "separates the classes" if row["warn"] else "no evidence of separation"
        else:
            ci, verdict = _fmt(row["auc"]), "n/a (needs ≥ 2 cases of each class)"
        rows.append({"Measure": measure_name(row["measure"]).removeprefix("the "), "Cases (severe)": cases, auc: ci,
                     "Spearman ρ": _fmt(row["spearman_rho"]), "Verdict": verdict})  # fmt: skip
    return pd.DataFrame(rows, columns=["Measure", "Cases (severe)", auc, "Spearman ρ", "Verdict"])


def _shortcut_section(check: pd.DataFrame) -> List[str]:
    lines = ["## Crop shortcut check", ""]
    if not len(check):
        return lines + [SHORTCUT_SKIPPED]
    lines += [SHORTCUT_INTRO, ""]
    for warning in shortcut_warnings(check):
        lines += [f"**{warning}**", ""]
    table = shortcut_rows(check)
    lines += ["| " + " | ".join(table.columns) + " |", "|---" * len(table.columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in table.itertuples(index=False)]


def _quantitative_line(settings) -> List[str]:
    """What ``Q`` is and how it is compared, when it ran."""
    if QUANTITATIVE not in {canonical_setting(s) for s in settings}:
        return []
    return [f"* **({QUANTITATIVE}) {QUANTITATIVE_DESCRIPTION}.** Per run, the bags' lung-density features (histogram "
            "inside the lung mask, ground-glass and consolidation fractions, lung volume) and a logistic regression whose "
            "C is chosen by inner cross-validation on the run's training cases: the same folds, the same held-back inner "
            "validation cases and the same operating-point fit as the deep settings. In the paired comparisons it is a "
            "and each deep setting b, so ΔAUC > 0 means the deep setting ranks the cases better than the baseline."]


def _methods_section(ctx: Mapping[str, object], tests: pd.DataFrame) -> List[str]:
    r, k, n, lvl = ctx["n_repeats"], ctx["n_folds"], ctx["n_cases"], ctx["level"]
    sizes = ""
    if len(tests) and np.isfinite(tests["n_test"]).any():
        sizes = f" (here n_test = {tests['n_test'].iloc[0]:.0f}, n_train = {tests['n_train'].iloc[0]:.0f})"
    return [
        "## How these numbers were made",
        "",
        f"* **Protocol.** {r} repeat(s) of {k}-fold stratified, patient-grouped cross-validation of {n} cases "
        f"({ctx['n_positive']} severe). In each repeat every case is predicted once, by the model that did not see it; "
        "all settings of a repeat use the same folds and, per fold, the same seed, so settings are paired. "
        f"A case is called severe when its probability is ≥ {ctx[Columns.THRESHOLD]}.",
        f"* **Pooled per repeat** (summary, Table IV, `repeat_metrics.csv`): the out-of-fold predictions of the {k} "
        f"folds of a repeat are pooled ({n} cases) and each metric is computed once on the pool; the tables give the "
        f"mean ± sample SD (ddof 1) over the {r} repeat(s) (no SD with one repeat).",
        f"* **AUC CI (DeLong).** For each repeat, the {lvl:.0%} CI of its pooled AUC from DeLong's variance (normal "
        "approximation, clipped to [0, 1]; needs ≥ 2 cases of each class). The summary gives the mean over repeats "
        "of the lower and of the upper bound: the uncertainty of one repeat's AUC, not of the mean over repeats.",
        f"* **Per fold** (`fold_metrics.csv`): each metric on each of the {k} × {r} test folds (about {n / k:.0f} "
        "cases each), then mean ± SD (ddof 1) over the folds where it is defined. A fold of one class has no AUC "
        "(and no sensitivity or no specificity); it is skipped and counted in the last column.",
        f"* **Paired t-test over repeats** (`scipy.stats.ttest_rel`): the per-repeat pooled AUC differences "
        f"AUC_b − AUC_a, n = {r} repeat(s), df = n − 1; needs ≥ 2 repeats.",
        "* **Corrected resampled t-test** (Nadeau & Bengio 2003) over folds × repeats: the per-fold AUC differences "
        "of the J folds where AUC is defined, t = mean / sqrt((1 / J + n_test / n_train) · s²), df = J − 1, with "
        f"n_test and n_train the mean test and training fold sizes{sizes}. The n_test / n_train term accounts for "
        "the overlapping training sets, which make a plain one-sample t-test over folds far too liberal.",
        f"* **Bootstrap CI of ΔAUC.** Per repeat, on its pooled out-of-fold predictions: {ctx['n_resamples']} "
        "stratified resamples of the cases, each resampled case carrying both settings' scores (paired), and the "
        f"percentile {lvl:.0%} interval. The table gives the mean over repeats of the difference and of each "
        "bound (a typical repeat's interval); `auc_differences.csv` has every repeat's interval and DeLong's test "
        "for two correlated ROC curves.",
        "* **Paper.** The paper's ± SD is not stated to be over folds or repeats, and its p-values come from a "
        "two-sample (unpaired) t-test on AUC. No correction for multiple comparisons is applied here or there.",
    ]


def render_markdown(summary: pd.DataFrame, tests: pd.DataFrame, ctx: Mapping[str, object],
                    descriptions: Optional[Mapping[str, str]] = None, learnt: Optional[pd.DataFrame] = None,
                    shortcut: Optional[pd.DataFrame] = None) -> str:  # fmt: skip
    """``report.md`` from the summary (:func:`~ctmil.evaluate.report.summary_table`), the paired comparisons
    (:func:`~ctmil.evaluate.report_comparisons.paired_comparisons`) and ``ctx`` (``n_repeats, n_folds, n_cases,
    n_positive, threshold, level, n_resamples``) and, where runs learnt an operating point, its summary ``learnt``
    (:func:`~ctmil.evaluate.report.learnt_summary`); with ``shortcut``
    (:func:`~ctmil.evaluate.shortcut.shortcut_check`), a "Crop shortcut check" section (none without it)."""
    sections: Sequence[List[str]] = (
        ["# Cross-validation report", "",
         f"{ctx['n_repeats']} repeat(s) of {ctx['n_folds']}-fold stratified, patient-grouped cross-validation, "
         f"{ctx['n_cases']} cases ({ctx['n_positive']} severe), threshold {ctx[Columns.THRESHOLD]}. "
         "How each number was made is told at the end."],
        _summary_section(summary, float(ctx["level"]), descriptions),
        _learnt_section(learnt, descriptions),
        _fold_section(summary, descriptions),
        _table_iv_section(summary, descriptions),
        _comparison_section(tests, float(ctx["level"])),
        *([] if shortcut is None else [_shortcut_section(shortcut)]),
        _methods_section(ctx, tests) + _quantitative_line(summary[Columns.SETTING]),
        ["Files: `report.csv` (summary and per-fold tables), `repeat_metrics.csv`, `fold_metrics.csv`, `ttests.csv` "
         "(paired comparisons), `auc_differences.csv` (per repeat), `report_learnt_threshold.csv` (at the learnt operating "
         "point), `shortcut_check.csv` (crop shortcut check), `predictions.csv`, `folds.csv`, `roc.png`, "
         "`config.json`, `model.pt` + `model.json` (final model)."],
    )  # fmt: skip
    return "\n\n".join("\n".join(s) for s in sections) + "\n"
