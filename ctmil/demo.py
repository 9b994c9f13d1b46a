"""The end-to-end demo: phantom cohort → bags → cross-validation of settings A, D and Q → final model (D) → held-out
evaluation with confidence intervals → attention hit rate → ``report.html``.

All settings are ordinary bundle config: ``train.json`` + ``cv.json`` + ``demo.json`` (``demo#phantoms`` describes
the training cohort, ``demo#held_out`` a second cohort the final model never saw, ``demo#hit_rate`` how the
attention hit rate is counted; the rest shortens the protocol). Nothing about the run is fixed in code.

Outputs under ``out_dir``: ``phantoms/`` and ``held_out_phantoms/`` (DICOM; the held-out ones with lesion masks),
``cv/`` (:func:`ctmil.evaluate.cv.run_cv`), ``held_out/`` (:func:`ctmil.evaluate.held_out.evaluate_model`, with
its inference outputs and overlays in ``held_out/inference``), ``attention_hits.csv``, ``summary.md`` and
``report.html`` (the demo on one page).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from monai.bundle import ConfigParser

from ctmil.bundle import check_override_ids, config_files, config_paths
from ctmil.io.atomic import atomic_write_csv
from ctmil.evaluate.attention_hits import hit_rates, patch_lesion_fraction
from ctmil.evaluate.cv import run_cv
from ctmil.evaluate.held_out import METRIC_LABELS, evaluate_model
from ctmil.infer.batch import CaseDataset
from ctmil.infer.model_io import load_model
from ctmil.io.readers import load_nifti
from ctmil.transforms import preprocessing_transforms
from ctmil.transforms.load import LoadCT
from ctmil.report.html import GalleryItem, HtmlReport
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.keys import Columns

logger = logging.getLogger(__name__)
DEMO_FILES = ("train.json", "cv.json", "demo.json")
_SHOWN = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def _cohort(out: Path, spec: dict, progress: bool, masks: bool = False) -> pd.DataFrame:
    return generate_cohort(out, n=spec["n"], seed=spec["seed"], formats=("dicom",), shape=spec["shape"], spacing=spec["spacing"],
                           severe_fraction=spec["severe_fraction"], write_masks=masks, progress=progress)  # fmt: skip


def attention_hits(model_path: Path, cohort_dir: Path, table: pd.DataFrame, min_fraction: float, alpha: float) -> tuple:
    """Per severe held-out case: its bag (the model's recorded preprocessing), attention, and lesion share per patch."""
    model = load_model(model_path)
    severe = table[table[Columns.LABEL] == 1]
    cases = [{Columns.CASE_ID: r.case_id, "image": str(cohort_dir / r.dicom_dir), Columns.LABEL: 1.0, "source": r.dicom_dir}
             for r in severe.itertuples()]  # fmt: skip
    dataset = CaseDataset(cases, preprocessing_transforms(**model.preprocessing))
    reader = LoadCT().nifti_reader
    found = []
    for i, row in enumerate(severe.itertuples()):
        bag = dataset[i]["bag"]
        if bag is None:
            continue
        lesion = np.asarray(load_nifti(str(cohort_dir / row.lesion_mask_path), reader)[0])
        fraction = patch_lesion_fraction(lesion, bag["slice_index"], bag["position"], bag["boxes"], bag["kept_slices"])
        found.append({Columns.CASE_ID: row.case_id, "attention": model.predict_bag(bag).attention, "lesion_fraction": fraction})
    return hit_rates(found, min_fraction=min_fraction, alpha=alpha)


def _cv_table(cv_dir: Path) -> pd.DataFrame:
    learnt = cv_dir / "report_learnt_threshold.csv"
    frame = pd.read_csv(learnt if learnt.is_file() else cv_dir / "report.csv")
    rows = [{Columns.SETTING: r[Columns.SETTING], **{METRIC_LABELS[m]: f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sd']:.3f}" for m in _SHOWN[:-1]},
             "AUC (pooled)": f"{r['auc_mean']:.3f} ± {r['auc_sd']:.3f}", "AUC per fold": f"{r['auc_fold_mean']:.3f} ± {r['auc_fold_sd']:.3f}"}
            for _, r in frame.iterrows()]  # fmt: skip
    return pd.DataFrame(rows)


def _comparison(cv_dir: Path, first: str = "A", second: str = "D") -> str:
    """One sentence: ``second`` against ``first`` on AUC, per fold (Nadeau-Bengio) and pooled (bootstrap CI)."""
    tests, folds = cv_dir / "ttests.csv", cv_dir / "fold_metrics.csv"
    if not (tests.is_file() and folds.is_file()):
        return ""
    t = pd.read_csv(tests)
    t = t[(t["metric"] == "auc") & (t["setting_a"] == first) & (t["setting_b"] == second)]
    f = pd.read_csv(folds).groupby(Columns.SETTING)["auc"].mean()
    if t.empty or first not in f or second not in f:
        return ""
    r = t.iloc[0]
    return (f"{second} against {first}: AUC per test fold {f[second]:.3f} vs {f[first]:.3f} (Δ {f[second] - f[first]:+.3f}, "
            f"Nadeau–Bengio p = {r['nb_p_value']:.2f} over {int(r['n_splits'])} folds × repeats); raw probabilities pooled "
            f"over the folds Δ {r['difference']:+.3f} (bootstrap 95% CI [{r['boot_lower']:+.3f}, {r['boot_upper']:+.3f}]). A fold's AUC "
            "does not depend on its calibration map; a pooled AUC also mixes the folds' probability scales.")


def _held_out_table(metrics: pd.DataFrame) -> pd.DataFrame:
    part = metrics[metrics["metric"].isin([*_SHOWN, "pr_auc", "brier", "ece", Columns.THRESHOLD])]
    return pd.DataFrame({"metric": [METRIC_LABELS[m] for m in part["metric"]],
                         "estimate": [f"{v:.3f}" for v in part["estimate"]],
                         "95% CI": ["–" if not np.isfinite(lo) else f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(part["lower"], part["upper"])]})  # fmt: skip


def _summary_md(cv: pd.DataFrame, comparison: str, held: pd.DataFrame, hits: dict, n_train: int, n_held: int,
                seconds: float) -> str:  # fmt: skip
    def md(frame: pd.DataFrame) -> str:
        head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
        return head + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False))

    return (f"# ctmil demo\n\n## Cross-validation on {n_train} phantoms, at the threshold learnt on training data\n\n"
            f"{md(cv)}\n{comparison}\n\n## Final model (setting D) on {n_held} held-out phantoms it never saw\n\n{md(held)}\n"
            f"## Does attention find the lesions?\n\nTop-{'⌊αK⌋'} attention patches of the severe held-out cases "
            f"that cover a lesion: **{hits['hit_rate']:.1%}** (chance: {hits['chance_rate']:.1%}, "
            f"{hits['lift']:.1f}× chance; {hits['n_cases']} cases).\n\nWall time {seconds / 60:.1f} min. "
            "The whole demo on one page: report.html.\n")  # fmt: skip


def _report_html(out: Path, cv: pd.DataFrame, comparison: str, held: pd.DataFrame, hits_table: pd.DataFrame, hits: dict,
                 inference: Path, n_cards: int = 6) -> Path:  # fmt: skip
    page = HtmlReport("ctmil demo: severe vs non-severe on phantom CTs")
    page.heading("Cross-validation, at the threshold learnt on training data", id="h-cv").table(cv, id="cv")
    if comparison:
        page.paragraph(comparison)
    if (out / "cv" / "roc.png").is_file():
        page.image(out / "cv" / "roc.png", alt="cross-validation ROC", width=420)
    page.heading("Final model on held-out phantoms", id="h-held").table(held, id="held-out")
    page.heading("Attention hit rate", id="h-hits")
    page.paragraph(f"Share of the top-⌊αK⌋ attention patches of severe held-out cases that cover a lesion: "
                   f"{hits['hit_rate']:.1%}, against {hits['chance_rate']:.1%} for patches drawn at random.")
    page.table(hits_table, id="hits", float_format="{:.3f}")
    pred = pd.read_csv(inference / "predictions.csv", dtype={Columns.CASE_ID: str}).sort_values(Columns.PROBABILITY, ascending=False)
    items = []
    for row in pred.itertuples():
        for rel in str(getattr(row, "overlay_paths", "") or "").split(";")[:1]:
            if rel and rel != "nan" and (inference / rel).is_file() and len(items) < n_cards:
                items.append(GalleryItem(inference / rel, f"{row.case_id}: p(severe) = {row.probability:.2f}", case_id=row.case_id))
    page.heading("Where the model looked (held-out cases, most attended slice)", id="h-overlays").gallery(items, id="overlays", width=360)
    return page.write(out / "report.html")


def run_demo(out_dir: str | os.PathLike, overrides: dict | None = None, progress: bool = True,
             config: "Sequence[str | os.PathLike]" = ()) -> dict:
    """Run the demo into ``out_dir``; returns the paths of ``summary.md``, ``report.html``, the model, and the seconds.
    ``config``: more config files (paths, or names of the bundle's) merged over ``train.json + cv.json + demo.json``."""
    start = time.perf_counter()
    files = [*config_files(*DEMO_FILES), *config_paths(list(config))]
    check_override_ids(files, dict(overrides or {}))  # a misspelt key: before any phantom is drawn
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser.update(dict(overrides or {}))
    demo = parser.get_parsed_content("demo")
    out = Path(out_dir).resolve()
    logger.info("1/4 generating %d phantom CTs", demo["phantoms"]["n"])
    train = _cohort(out / "phantoms", demo["phantoms"], progress)
    logger.info("2/4 preprocessing and cross-validation")
    run_cv(out / "phantoms" / "labels.csv", out / "cv", files=files, overrides=dict(overrides or {}), progress=progress)
    logger.info("3/4 evaluating the final model on %d held-out phantoms", demo["held_out"]["n"])
    held_spec = {**demo["phantoms"], **demo["held_out"]}
    held = _cohort(out / "held_out_phantoms", held_spec, progress, masks=True)
    result = evaluate_model(out / "cv" / "model.pt", out / "held_out_phantoms" / "labels.csv", out / "held_out",
                            save_maps=True, progress=progress)  # fmt: skip
    logger.info("4/4 attention hit rate")
    hits_table, hits = attention_hits(out / "cv" / "model.pt", out / "held_out_phantoms", held,
                                      demo["hit_rate"]["min_fraction"], demo["hit_rate"]["alpha"])  # fmt: skip
    atomic_write_csv(hits_table, out / "attention_hits.csv")
    cv, comparison, held_table = _cv_table(out / "cv"), _comparison(out / "cv"), _held_out_table(result["metrics"])
    html = _report_html(out, cv, comparison, held_table, hits_table, hits, out / "held_out" / "inference")
    elapsed = time.perf_counter() - start
    (out / "summary.md").write_text(_summary_md(cv, comparison, held_table, hits, len(train), len(held), elapsed))
    (out / "cv" / "wall_time_seconds.txt").write_text(f"{elapsed:.1f}\n")
    return {"report": out / "summary.md", "html": html, "model": out / "cv" / "model.pt", "roc": out / "cv" / "roc.png",
            "hit_rate": hits, "seconds": elapsed}  # fmt: skip
