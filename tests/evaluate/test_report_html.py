"""report.html of ``ctmil cv`` and ``ctmil evaluate``: self-contained, and rendered in a real headless Chromium the
page shows the tables (rows as in the CSVs) and the plots (decoded images of non-zero size)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctmil.stats.metrics import binary_metrics
from ctmil.evaluate.report import write_report
from ctmil.report.html import external_references
from tests.report._chromium import dom_images, render, screenshot_is_drawn, table_rows


def _predictions(n_repeats=2, n_cases=24, n_folds=3, seed=0):
    """Settings A and D with scores that separate the classes (D better); a learnt point per run at 0.45."""
    rng = np.random.default_rng(seed)
    rows = []
    for setting, shift in (("A", 0.15), ("D", 0.45)):
        for repeat in range(n_repeats):
            for i in range(n_cases):
                label = int(i % 3 == 0)
                prob = float(np.clip(0.25 + shift * label + rng.normal(0, 0.15), 0, 1))
                rows.append({"case_id": f"c{i:02d}", "setting": setting, "repeat": repeat, "fold": (i + repeat) % n_folds,
                             "raw_probability": prob, "label": label, "probability": prob, "prediction": int(prob >= 0.45),
                             "threshold": 0.45})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cv_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    predictions = _predictions()
    return out, predictions, write_report(out, predictions, n_resamples=100)


def test_cv_page_is_self_contained(cv_report):
    out, _, paths = cv_report
    text = paths["report_html"].read_text()
    assert external_references(text) == [] and "data:image/png;base64," in text
    for table in ('id="summary"', 'id="learnt"', 'id="per-fold"', 'id="table-iv"', 'id="comparisons"'):
        assert table in text


def test_cv_page_in_chromium_shows_the_tables_and_the_roc(cv_report):
    out, predictions, paths = cv_report
    dom, shot = render(paths["report_html"], out / "screenshot.png")
    summary = table_rows(dom, "summary")
    assert [r[0] for r in summary] == ["(A) MIL only", "(D) MIL + both"]
    report = pd.read_csv(paths["report_csv"]).set_index("setting")
    assert summary[1][5] == f"{report.loc['D', 'auc_mean']:.3f} ± {report.loc['D', 'auc_sd']:.3f}"
    learnt = table_rows(dom, "learnt")
    d = predictions[predictions.setting == "D"]
    sens = np.mean([binary_metrics(p["prediction"].astype(float), p["label"], 0.5)["sensitivity"] for _, p in d.groupby("repeat")])
    assert learnt[1][2].startswith(f"{sens:.3f}") and learnt[1][-1].startswith("0.450")
    comparison = table_rows(dom, "comparisons")
    assert len(comparison) == 1 and comparison[0][0] == "(D) vs (A)" and comparison[0][1].startswith("+")
    assert len(table_rows(dom, "table-iv")) == 8  # A-D, ctmil and paper rows
    images = dom_images(dom)
    assert len(images) == 1 and int(images[0]["data-natural-width"]) > 100 and images[0]["data-complete"] == "true"
    assert screenshot_is_drawn(shot)


def test_evaluate_page_in_chromium(tmp_path):
    from ctmil.evaluate.report_html import write_evaluate_html
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "roc.png")
    metrics = pd.DataFrame({"metric": ["auc", "threshold"], "estimate": [0.91, 0.4], "lower": [0.8, np.nan],
                            "upper": [0.97, np.nan], "method": ["bootstrap", "youden on inner validation"]})  # fmt: skip
    predictions = pd.DataFrame({"case_id": ["<b>x</b>", "y"], "probability": [0.9, 0.1], "prediction": [1, 0], "label": [1, 0]})
    failed = pd.DataFrame({"case_id": ["z"], "error": ["unreadable"]})
    path = write_evaluate_html(tmp_path, metrics, predictions, failed, "2 cases", {"auc": "AUC", "threshold": "Threshold"})
    dom, _ = render(path)
    assert table_rows(dom, "metrics") == [["AUC", "0.910", "[0.800, 0.970]", "bootstrap"],
                                          ["Threshold", "0.400", "–", "youden on inner validation"]]  # fmt: skip
    assert table_rows(dom, "predictions")[0][0] == "<b>x</b>"  # escaped text, not markup
    assert table_rows(dom, "failed") == [["z", "unreadable"]]
    assert len(dom_images(dom)) == 1
