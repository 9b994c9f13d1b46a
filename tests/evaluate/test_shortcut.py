"""The crop shortcut check: its numbers against scipy / scikit-learn, its verdicts, bags without the measure, and
its section in the cross-validation report (written from predictions, nothing trained)."""

from __future__ import annotations

import html
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

import ctmil.data.bags as bags_module
import ctmil.evaluate.cv as cv_module
from ctmil.evaluate.cv import run_cv
from ctmil.evaluate.report import write_report
from ctmil.evaluate.report_tables import SHORTCUT_SKIPPED
from ctmil.evaluate.shortcut import CROP_MEASURES, read_crop_measures, shortcut_check, shortcut_warnings
from ctmil.stats.statistics import delong_auc_ci
from tests.train._bags import make_bag


def _cases(labels, **measures) -> pd.DataFrame:
    return pd.DataFrame({"case_id": [f"c{i:03d}" for i in range(len(labels))], "label": labels, **measures})


def _labels(n_severe: int, n_other: int) -> np.ndarray:
    return np.r_[np.ones(n_severe, int), np.zeros(n_other, int)]


@pytest.mark.parametrize("sign,direction,bigger", [(1.0, "higher", "larger"), (-1.0, "lower", "smaller")])
@pytest.mark.parametrize("n_severe,n_other,seed", [(30, 70, 0), (12, 48, 1)])
def test_a_measure_that_separates_the_classes_warns_either_way(sign, direction, bigger, n_severe, n_other, seed):
    rng = np.random.default_rng(seed)
    y = _labels(n_severe, n_other)
    height = 0.6 + sign * 0.2 * y + rng.normal(0, 0.03, y.size)
    row = shortcut_check(_cases(y, box_height_share=height)).set_index("measure").loc["box_height_share"]
    assert row["auc"] == pytest.approx(roc_auc_score(y, height))
    assert (row["auc"] > 0.97) if sign > 0 else (row["auc"] < 0.03)
    ci = delong_auc_ci(y, height)
    assert (row["auc_lower"], row["auc_upper"]) == pytest.approx((ci.lower, ci.upper))
    assert row["warn"] and row["direction"] == direction and row["separation_auc"] > 0.97
    assert (row["n_cases"], row["n_severe"], row["n_missing"]) == (y.size, n_severe, 0)
    expected = stats.spearmanr(height, y)
    assert row["spearman_rho"] == pytest.approx(expected.statistic) and np.sign(row["spearman_rho"]) == sign
    assert row["spearman_p"] == pytest.approx(expected.pvalue)
    (warning,) = shortcut_warnings(shortcut_check(_cases(y, box_height_share=height)))
    assert warning.startswith("Warning: the crop box's height share alone separates severe from non-severe (AUC ")
    assert f"{row['auc']:.2f} [{row['auc_lower']:.2f}, {row['auc_upper']:.2f}], {bigger} in severe cases" in warning
    assert warning.endswith("the model may learn box geometry instead of the lungs.")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_random_measure_on_200_balanced_cases_does_not_warn(seed):
    rng = np.random.default_rng(seed)
    y = rng.permutation(_labels(100, 100))
    check = shortcut_check(_cases(y, box_height_share=rng.uniform(0.5, 0.9, 200), box_width_share=rng.uniform(0.6, 1, 200)))
    assert check["measure"].tolist() == list(CROP_MEASURES)
    assert not check["warn"].any() and (check["auc_lower"] < 0.5).all() and (check["auc_upper"] > 0.5).all()
    assert shortcut_warnings(check) == []


@pytest.mark.parametrize("measures,expected", [
    ({}, []),                                                                         # no column at all
    ({"box_height_share": [np.nan] * 8, "box_width_share": [np.nan] * 8}, []),         # every value missing
    ({"box_height_share": [0.5, np.nan, 0.6, 0.7, np.nan, 0.4, 0.5, 0.6]}, [("box_height_share", 6, 2)]),
    ({"box_width_share": [0.9] * 8, "box_height_share": [np.nan] * 8}, [("box_width_share", 8, 0)]),
])  # fmt: skip
def test_missing_measures_are_skipped_and_missing_cases_counted(measures, expected):
    y = _labels(4, 4)
    check = shortcut_check(_cases(y, **measures))
    assert list(zip(check["measure"], check["n_cases"], check["n_missing"])) == expected


@pytest.mark.parametrize("labels,auc_defined", [([1, 0, 0, 0, 0], True), ([0, 0, 0, 0], False)])
def test_too_few_cases_of_a_class_give_no_ci_and_no_warning(labels, auc_defined):
    check = shortcut_check(_cases(labels, box_height_share=np.linspace(0.9, 0.5, len(labels))))
    row = check.iloc[0]
    assert np.isnan(row["auc_lower"]) and np.isnan(row["auc_upper"]) and not row["warn"]
    assert np.isfinite(row["auc"]) == auc_defined


@pytest.mark.parametrize("cases", [_cases([0, 1, 2], box_height_share=[0.5, 0.6, 0.7]),
                                   _cases([0, 1], box_height_share=[0.5, 0.6]).assign(case_id="same")])  # fmt: skip
def test_bad_tables_are_refused(cases):
    with pytest.raises(ValueError):
        shortcut_check(cases)


def test_measures_are_read_from_each_bag_and_absent_ones_are_nan():
    bags = {
        "a.pt": {"meta": {"crop": {"box_height_share": 0.8, "box_width_share": 0.7}}},
        "b.pt": {"meta": {"crop": {"box_height_share": torch.tensor(0.6)}}},  # no width
        "c.pt": {"meta": {"spatial_shape": [3, 4, 5]}},  # made before the key existed
        "d.pt": {"patches": None},  # no meta at all
        "e.pt": {"meta": {"crop": {"box_height_share": "n/a", "box_width_share": float("inf")}}},
    }
    table = pd.DataFrame({"case_id": list("abcde"), "bag": list(bags), "label": [1, 0, 1, 0, 1], "patient": list("abcde")})
    measures = read_crop_measures(table, bags.__getitem__)
    assert measures.columns.tolist() == ["case_id", "label", *CROP_MEASURES]
    assert measures["box_height_share"].tolist()[:2] == pytest.approx([0.8, 0.6])
    assert measures["box_height_share"].isna().tolist() == [False, False, True, True, True]
    assert measures["box_width_share"].isna().tolist() == [False, True, True, True, True]


# ------------------------------------------------------------------------------------------------ the report
def _predictions(n_cases=12, n_folds=3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = [int(i % 3 == 0) for i in range(n_cases)]
    return pd.DataFrame({"case_id": [f"c{i:03d}" for i in range(n_cases)], "setting": "A", "repeat": 0,
                         "fold": [i % n_folds for i in range(n_cases)], "label": labels,
                         "raw_probability": np.clip(0.3 + 0.3 * np.array(labels) + rng.normal(0, 0.2, n_cases), 0, 1)})  # fmt: skip


def _texts(paths):
    return paths["report_md"].read_text(), html.unescape(paths["report_html"].read_text())


def test_the_report_shows_the_check_and_its_warning(tmp_path):
    y = _labels(6, 14)
    check = shortcut_check(_cases(y, box_height_share=0.5 + 0.2 * y + np.linspace(0, 0.05, 20),
                                  box_width_share=np.tile([0.7, 0.8], 10)))  # fmt: skip
    paths = write_report(tmp_path, _predictions(), n_resamples=50, shortcut=check)
    md, page = _texts(paths)
    (warning,) = shortcut_warnings(check)
    assert "## Crop shortcut check" in md and f"**{warning}**" in md
    assert md.index("## Crop shortcut check") < md.index("## How these numbers were made")
    assert "| Measure | Cases (severe) | AUC [95% CI] | Spearman ρ | Verdict |" in md
    assert "| crop box's height share | 20 (6) | 1.000 [1.000, 1.000] | " in md and "separates the classes |" in md
    width = check.set_index("measure").loc["box_width_share"]
    assert f"| crop box's width share | 20 (6) | {width['auc']:.3f} [{width['auc_lower']:.3f}, " in md
    assert "no evidence of separation |" in md
    assert 'id="shortcut"' in page and "Crop shortcut check" in page and f'<p class="ctmil-warning">{warning}</p>' in page
    assert pd.read_csv(paths["shortcut_check"])["warn"].tolist() == [True, False]


def test_the_report_says_when_no_bag_has_the_measure_and_omits_a_check_not_given(tmp_path):
    empty = shortcut_check(_cases(_labels(4, 8)))
    md, page = _texts(write_report(tmp_path / "empty", _predictions(), n_resamples=50, shortcut=empty))
    assert f"## Crop shortcut check\n\n{SHORTCUT_SKIPPED}\n" in md and SHORTCUT_SKIPPED in page
    assert "Warning:" not in md and 'id="shortcut"' not in page
    paths = write_report(tmp_path / "none", _predictions(), n_resamples=50)
    md, page = _texts(paths)
    assert "Crop shortcut check" not in md and "Crop shortcut check" not in page and "shortcut_check" not in paths


def test_run_cv_checks_the_bags_once_and_logs_the_warning(tmp_path, monkeypatch, caplog):
    """Finished runs on disk: run_cv trains nothing, reads the crop measures of the 6 bags and reports them."""
    labels = [1, 1, 0, 0, 0, 0]
    for i, label in enumerate(labels):
        bag = {**make_bag(i, label), "meta": {"crop": {"box_height_share": 0.5 + 0.3 * label + 0.01 * i}}}
        torch.save(bag, tmp_path / f"case{i}.pt")
    pd.DataFrame({"case_id": [f"case{i}" for i in range(6)], "bag": [f"case{i}.pt" for i in range(6)],
                  "label": labels}).to_csv(tmp_path / "datalist.csv", index=False)  # fmt: skip
    out = tmp_path / "out"
    for f in (0, 1):
        run_dir = out / "runs" / "A" / f"r0_f{f}"
        run_dir.mkdir(parents=True)
        cases = [i for i in range(6) if i % 2 == f]
        pd.DataFrame({"case_id": [f"case{i}" for i in cases], "setting": "A", "repeat": 0, "fold": f,
                      "raw_probability": [0.2 + 0.1 * i for i in cases], "label": [labels[i] for i in cases]}
                     ).to_csv(run_dir / "predictions.csv", index=False)  # fmt: skip
    reads = []
    monkeypatch.setattr(cv_module, "_train", lambda *a, **k: pytest.fail("finished runs must not train"))
    real_load = bags_module.load_bag
    monkeypatch.setattr(bags_module, "load_bag", lambda path: reads.append(path) or real_load(path))
    # Q reads the bags too (and is skipped: they record no density): the check, Q and training share one read each
    overrides = {"cv#n_folds": 2, "cv#n_repeats": 1, "cv#settings": ["A", "Q"], "cv#final_model": "none"}
    with caplog.at_level(logging.WARNING):
        run_cv(tmp_path / "datalist.csv", out, files=("train.json", "cv.json", "demo.json"), overrides=overrides,
               progress=False)  # fmt: skip
    assert len(reads) == 6
    warnings = [r.getMessage() for r in caplog.records if r.name == "ctmil.evaluate.shortcut" and r.levelno == logging.WARNING]
    assert any(w.startswith("Warning: the crop box's height share alone separates") for w in warnings)
    md = (out / "report.md").read_text()
    assert "| crop box's height share | 6 (2) | 1.000 [1.000, 1.000] |" in md and "**Warning: the crop box's" in md
    assert "width share" not in md  # no bag records it
