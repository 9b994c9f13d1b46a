"""The demo end to end on a tiny protocol: CV, the final model on held-out phantoms, the attention hit rate and
report.html (read back in a real Chromium where one is installed)."""

from __future__ import annotations

import pandas as pd
import pytest

from ctmil.demo import run_demo
from ctmil.report.html import external_references

TINY = {
    "max_epochs": 2, "train#virtual_bags#start_epoch": 1, "cv#n_folds": 2, "cv#n_repeats": 1,
    "network_def#feature_dim": 16, "network_def#attention_dim": 8, "network_def#ssl_hidden": 8,
    "demo#phantoms#n": 8, "demo#phantoms#shape": [24, 80, 80], "demo#phantoms#spacing": [10.0, 4.0, 4.0],
    "demo#phantoms#severe_fraction": 0.5, "demo#held_out#n": 4, "cv#calibration_fraction": 0.34,
}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, overrides=TINY, progress=False)


@pytest.mark.slow
def test_demo_outputs(demo):
    out, result = demo
    summary = result["report"].read_text()
    assert "Cross-validation on 8 phantoms" in summary and "4 held-out phantoms" in summary
    assert "chance" in summary and result["seconds"] > 0
    assert set(pd.read_csv(out / "cv" / "report.csv")["setting"]) == {"A", "D", "Q"}  # the quantitative baseline beside
    hits = pd.read_csv(out / "attention_hits.csv")
    assert len(hits) == result["hit_rate"]["n_cases"] >= 1  # severe held-out cases with a lesion patch
    assert ((hits["hit_rate"] >= 0) & (hits["hit_rate"] <= 1)).all() and (hits["chance_rate"] > 0).all()
    for name in ("cv/report.html", "cv/model.json", "held_out/metrics.csv", "held_out/report.html",
                 "held_out/inference/report.html", "report.html"):
        assert (out / name).is_file(), name
    assert external_references(result["html"].read_text()) == []


@pytest.mark.slow
def test_demo_page_in_chromium(demo):
    from tests.report._chromium import dom_cards, render, table_rows

    out, result = demo
    dom, _ = render(result["html"])
    assert [r[0] for r in table_rows(dom, "cv")] == ["A", "D", "Q"]
    metrics = [r[0] for r in table_rows(dom, "held-out")]
    assert "AUC" in metrics and "Threshold" in metrics
    assert len(table_rows(dom, "hits")) == result["hit_rate"]["n_cases"]
    predicted = set(pd.read_csv(out / "held_out" / "inference" / "predictions.csv")["case_id"])
    cards = dom_cards(dom)
    assert cards and {c["data-case-id"] for c in cards} <= predicted
