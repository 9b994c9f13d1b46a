"""The accuracy levers on the real Per-COVID-19 sample (docs/accuracy.md): each lever alone, then combinations.

    python docs/make_accuracy.py                       # every lever not run yet into out/accuracy, then the table
    python docs/make_accuracy.py --only base window    # some levers
    python docs/make_accuracy.py --table-only          # rewrite the table from the finished runs

Every lever is one ``ctmil cv`` (:func:`ctmil.evaluate.cv.run_cv`) of setting D (the default network; the quantitative
baseline Q runs once, lever `q`), on the same folds and seeds: the protocol of the accuracy issue, 3 folds x 1 repeat,
8 epochs with virtual bags from epoch 6, at most 18 slices per patient (``PROTOCOL``), plus the lever's
overrides. The table gives the pooled AUC of the calibrated out-of-fold predictions with its DeLong CI,
sensitivity and specificity at the operating point learnt on inner validation cases, and the wall minutes of the
run on this machine (2 cores, no GPU) with the load average at its end. A run that finished is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from make_results import datalist  # noqa: E402

PROTOCOL = {
    "max_epochs": 8,
    "train#virtual_bags#start_epoch": 6,
    "preprocessing_args#max_slices": 18,
    "cv#n_folds": 3,
    "cv#n_repeats": 1,
    "cv#settings": ["D"],
    "cv#final_model": "none",
}
#: The default before issue 19 closed: one min-max channel (attention follows: the default scores it on the min-max
#: channel only when there are two). The levers below were measured against it, so each names it: a lever reruns as
#: it was measured whatever today's default is.
MINMAX = {"preprocessing_args#patch_norm": "minmax"}
#: two channels with one attention encoder for both (the default's attention_channels 1 is the lever "attn")
SHARED_ATTENTION = {"network_def#attention_channels": None}
#: lever -> (what it changes, overrides over PROTOCOL)
LEVERS = {
    "q": ("the quantitative baseline Q alone (no deep training)", {"cv#settings": ["Q"]}),
    "fusion": ("the paper's network fused with the lung-density model (ctmil.networks.fusion; the default before two channels)", {**MINMAX}),
    "both_fusion": ("min-max and window as two channels, fused with the lung-density model",
                    {"preprocessing_args#patch_norm": "both", **SHARED_ATTENTION}),
    "both_fusion_attn": ("both channels + fusion, attention scored on the min-max channel only (a second encoder)",
                         {"preprocessing_args#patch_norm": "both", "network_def#attention_channels": 1}),
    "both_fusion_attn_r2": ("both channels + fusion, attention on the min-max channel, 2 repeats of 3 folds",
                            {"preprocessing_args#patch_norm": "both", "network_def#attention_channels": 1, "cv#n_repeats": 2, "cv#settings": ["D"]}),
    "default_r2": ("today's default as shipped (train.json, no lever override), 2 repeats of 3 folds", {"cv#n_repeats": 2, "cv#settings": ["D"]}),
    "fusion_r2": ("min-max + fusion and Q, 2 repeats of 3 folds (the second repeat on fresh folds)",
                  {**MINMAX, "cv#n_repeats": 2, "cv#settings": ["D", "Q"]}),
    "cosine": ("min-max + fusion + a cosine learning-rate schedule (1e-4 to 1e-6 over the epochs)", {**MINMAX, "lr_schedule": "cosine"}),
    "select_best": ("min-max + fusion + model selection: the epoch with the best inner-validation AUC",
                    {**MINMAX, "select_best": True, "val_interval": 1}),
    "augment": ("min-max + fusion + augmentation: patch flips and intensity jitter (MONAI random transforms)", {**MINMAX, "augment": True}),
    "base": ("the paper's network alone (corrected crop, per-patch min-max; the default before the fusion)", {**MINMAX, "density_fusion": False}),
    "old_crop": ("the crop before the chest-wall growth", {**MINMAX, "preprocessing_args#chest_wall": False, "density_fusion": False}),
    "window": ("lung window scaled over the volume instead of per-patch min-max", {"preprocessing_args#patch_norm": "window", "density_fusion": False}),
    "both": ("min-max and window as two channels", {"preprocessing_args#patch_norm": "both", **SHARED_ATTENTION, "density_fusion": False}),
    "epochs16": ("16 epochs (virtual bags from 12)", {**MINMAX, "max_epochs": 16, "train#virtual_bags#start_epoch": 12, "density_fusion": False}),
    "slices30": ("at most 30 slices per patient", {**MINMAX, "preprocessing_args#max_slices": 30, "density_fusion": False}),
    "hybrid": ("lung-density features beside the pooled embedding", {**MINMAX, "density_fusion": False, "network_def#n_density": 27}),
    "window_hybrid": ("window + hybrid", {"preprocessing_args#patch_norm": "window", "density_fusion": False, "network_def#n_density": 27}),
    "hybrid_gain": ("hybrid whose density branch learns 30x faster (gain 30)", {**MINMAX, "density_fusion": False, "network_def#n_density": 27,
                                                                               "network_def#density_gain": 30.0}),
    "window_hybrid_gain": ("window + hybrid, gain 30", {"preprocessing_args#patch_norm": "window", "density_fusion": False,
                                                        "network_def#n_density": 27, "network_def#density_gain": 30.0}),
    "both_hybrid_gain": ("both channels + hybrid, gain 30", {"preprocessing_args#patch_norm": "both", **SHARED_ATTENTION, "density_fusion": False,
                                                           "network_def#n_density": 27, "network_def#density_gain": 30.0}),
    "both_e16": ("min-max and window as two channels, 16 epochs (virtual bags from 12)",
                 {"preprocessing_args#patch_norm": "both", **SHARED_ATTENTION, "max_epochs": 16, "train#virtual_bags#start_epoch": 12,
                  "density_fusion": False}),
    "window_hybrid_gain_e16": ("window + hybrid, gain 30, 16 epochs (virtual bags from 12)",
                               {"preprocessing_args#patch_norm": "window", "density_fusion": False, "network_def#n_density": 27,
                                "network_def#density_gain": 30.0, "max_epochs": 16, "train#virtual_bags#start_epoch": 12}),
}


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def run(name: str, out: Path, data: Path) -> None:
    from ctmil.evaluate.cv import run_cv

    folder = out / name
    record = folder / "lever_run.json"
    if record.is_file():
        return
    overrides = {**PROTOCOL, **LEVERS[name][1]}
    start = time.perf_counter()
    run_cv(datalist(data, out), folder, overrides=overrides, progress=True)
    record.write_text(json.dumps({"minutes": (time.perf_counter() - start) / 60, "load": _load(), "overrides": overrides,
                                  "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))


def table(out: Path) -> str:
    rows = ["| lever | setting | AUC [95 % DeLong CI] | ΔAUC vs Q [95 % paired bootstrap CI] | sensitivity | specificity | "
            "minutes (load 1/5/15 at the end) |", "|---|---|---|---|---|---|---|"]
    for name, (what, _) in LEVERS.items():
        folder = out / name
        if not (folder / "lever_run.json").is_file():
            continue
        run_info = json.loads((folder / "lever_run.json").read_text())
        learnt = pd.read_csv(folder / "report_learnt_threshold.csv")
        fixed = pd.read_csv(folder / "report.csv").set_index("setting")
        for r in learnt.itertuples():
            ci = f"[{r.auc_delong_lower:.3f}, {r.auc_delong_upper:.3f}]" if hasattr(r, "auc_delong_lower") else \
                f"(at 0.5: [{fixed.loc[r.setting, 'auc_delong_lower']:.3f}, {fixed.loc[r.setting, 'auc_delong_upper']:.3f}])"
            rows.append(f"| `{name}`: {what} | {r.setting} | {r.auc_mean:.3f} {ci} | {_versus_q(out, folder, r.setting)} | "
                        f"{r.sensitivity_mean:.3f} | {r.specificity_mean:.3f} | {run_info['minutes']:.1f} ({run_info['load']}) |")
    fusion = _fusion(out)
    if fusion:
        rows.append(fusion)
    return "\n".join(rows)


def _versus_q(out: Path, folder: Path, setting: str) -> str:
    """ΔAUC of the lever's calibrated out-of-fold predictions minus Q's on the same cases and folds, repeat by
    repeat, with its paired bootstrap CI (2000 resamples, stratified, seed 0); Q is the lever's own when it ran Q,
    else that of a run with Q on the same folds (lever `q` for repeat 0, `fusion_r2` for both repeats). Empty for Q
    itself or without such a run."""
    from ctmil.evaluate.report import read_predictions
    from ctmil.stats.statistics import bootstrap_auc_difference

    if setting == "Q":
        return ""
    d = read_predictions(folder / "predictions.csv")
    sources = [d] + [read_predictions(p) for p in (out / "q" / "predictions.csv", out / "fusion_r2" / "predictions.csv") if p.is_file()]
    parts = []
    for r, rows in d[d["setting"] == setting].groupby("repeat"):
        a = rows.set_index("case_id")
        for source in sources:
            q = source[(source["setting"] == "Q") & (source["repeat"] == r)].set_index("case_id")
            if len(q) and set(q.index) == set(a.index) and (q.loc[a.index, "fold"] == a["fold"]).all():
                diff = bootstrap_auc_difference(a["label"].to_numpy(), a["probability"].to_numpy(), q.loc[a.index, "probability"].to_numpy())
                parts.append(f"{diff.difference:+.3f} [{diff.lower:+.3f}, {diff.upper:+.3f}]")
                break
        else:
            parts.append("(no Q on these folds)")
    return parts[0] if len(parts) == 1 else "; ".join(f"repeat {r}: {p}" for r, p in enumerate(parts))


def _fusion(out: Path) -> str:
    """A derived row: the mean of D's (``base``) and Q's (``q``) calibrated out-of-fold probabilities (same folds)."""
    from sklearn.metrics import roc_auc_score

    from ctmil.evaluate.report import read_predictions
    from ctmil.stats.statistics import delong_auc_ci

    paths = [out / "base" / "predictions.csv", out / "q" / "predictions.csv"]
    if not all(p.is_file() for p in paths):
        return ""
    d, q = (read_predictions(p).set_index("case_id") for p in paths)
    d, q = d[d["setting"] == "D"], q.loc[d.index]
    if not (d["fold"] == q["fold"]).all():
        return ""
    p = (d["probability"] + q["probability"]) / 2
    ci = delong_auc_ci(d["label"].to_numpy(), p.to_numpy())
    auc, lo, hi = roc_auc_score(d["label"], p), ci.lower, ci.upper
    return (f"| derived: mean of `base` D's and `q` Q's calibrated probabilities | D+Q | {auc:.3f} [{lo:.3f}, {hi:.3f}] | | "
            "(no threshold learnt) | | 0 |")


#: the levers whose threshold rules :func:`rule_table` compares
RULE_LEVERS = ("fusion_r2", "both_fusion", "both_fusion_attn_r2", "default_r2", "base")


def rule_table(out: Path) -> str:
    """Sensitivity and specificity of each repeat of :data:`RULE_LEVERS` at two thresholds on the same calibrated
    out-of-fold probabilities: the point the run learnt (its rule, Youden's J for runs made before the prevalence rule),
    and the severe fraction of each fold's training and calibration cases (the ``prevalence`` rule, recomputed
    exactly: the calibration map is the same, only the threshold differs, and training does not depend on it)."""
    from ctmil.evaluate.report import read_predictions

    rows = ["| lever | setting | repeat | learnt point: sensitivity / specificity | prevalence: sensitivity / specificity | prevalence |",
            "|---|---|---|---|---|---|"]
    for name in RULE_LEVERS:
        file = out / name / "predictions.csv"
        if not file.is_file():
            continue
        pred = read_predictions(file)
        for (setting, repeat), part in pred.groupby(["setting", "repeat"]):
            called, fractions = [], []
            for fold, test in part.groupby("fold"):
                fraction = float(part.loc[part["fold"] != fold, "label"].mean())
                called.append(test.assign(called=(test["probability"] >= fraction).astype(int)))
                fractions.append(fraction)
            both = pd.concat(called)
            y = both["label"].to_numpy()

            def rates(decision) -> str:
                d = decision.to_numpy()
                return f"{(d[y == 1] == 1).mean():.3f} / {(d[y == 0] == 0).mean():.3f}"

            rows.append(f"| `{name}` | {setting} | {repeat} | {rates(both['prediction'])} | {rates(both['called'])} | "
                        f"{min(fractions):.3f}–{max(fractions):.3f} |")
    return "\n".join(rows)


#: the levers drawn in docs/img/accuracy_roc.png (when their runs exist), with their labels
FIGURE_LEVERS = {"q": "Q: density histogram + logistic regression", "base": "the paper's network alone",
                 "fusion": "min-max network fused with the density model", "both_fusion": "two channels + fusion",
                 "both_fusion_attn": "default: two channels + fusion, attention on min-max"}


def figure(out: Path, path: Path) -> bool:
    """ROC curves of the pooled, calibrated out-of-fold predictions of :data:`FIGURE_LEVERS` into ``path``; ``False``
    when none of their runs exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    from ctmil.evaluate.report import read_predictions

    drawn = 0
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for name, label in FIGURE_LEVERS.items():
        file = out / name / "predictions.csv"
        if not file.is_file():
            continue
        pred = read_predictions(file)
        fpr, tpr, _ = roc_curve(pred["label"], pred["probability"])
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(pred['label'], pred['probability']):.3f})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("Per-COVID-19 sample, 73 patients, same 3 folds", fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "percovid_sample"), help="the Per-COVID-19 sample")
    parser.add_argument("--out", default=str(ROOT / "out" / "accuracy"))
    parser.add_argument("--only", nargs="*", choices=sorted(LEVERS), help="levers to run (default: all)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    if not args.table_only:
        if not (data / "labels.csv").is_file():
            raise SystemExit(f"no Per-COVID sample at {data} (labels.csv missing)")
        for name in args.only or LEVERS:
            run(name, out, data)
    print(table(out))
    print()
    print(rule_table(out))
    if figure(out, ROOT / "docs" / "img" / "accuracy_roc.png"):
        print("wrote docs/img/accuracy_roc.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
