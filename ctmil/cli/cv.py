"""``ctmil cv``: stratified, patient-grouped k-fold cross-validation of the ablation settings → a report."""

from __future__ import annotations

import argparse
import sys

from ctmil.cli.common import EXIT_PARTIAL, UsageError, add_common, add_implausible, configs, device_override, given_inputs, implausible, out_dir, parse_overrides, validated

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``cv`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("cv", help="stratified, patient-grouped k-fold CV of the ablation settings → report")
    p.add_argument("inputs", nargs="?", metavar="DATALIST", help="the datalist (as --datalist)")
    p.add_argument("--datalist", help="CSV with case_id, bag, label[, patient] (ctmil preprocess writes one), "
                   "or with case_id, image, label[, patient] (CT files, preprocessed into OUT/bags first)")
    p.add_argument("--out", required=True, help="output folder (report.md/.csv, predictions, folds, roc.png, model)")
    p.add_argument("--restart", action="store_true", help="discard an --out made from another config or datalist")
    p.add_argument("--seed", type=int, help="root seed of the folds, initialisations and data order (default 0)")
    add_implausible(p)
    add_common(p, training=True)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.evaluate.cv import run_cv

    overrides = {"progress": False, **implausible(args), **device_override(args.device), **parse_overrides(args.set)}
    for key, value in (("max_epochs", args.epochs), ("seed", args.seed)):
        if value is not None:
            overrides[key] = value
    files = ["train.json", "cv.json", *configs(args.config)]
    datalists = given_inputs(args, "datalist")
    if len(datalists) > 1:
        raise UsageError("ctmil cv takes one datalist")
    datalist = datalists[0]
    validated(files, overrides)
    out = out_dir(args.out)
    run_cv(datalist, out, files=files, overrides=overrides, progress=not args.quiet, restart=args.restart)
    print((out / "report.md").read_text())
    manifest = out / "bags" / "manifest.csv"
    if manifest.exists():
        import pandas as pd

        failed = pd.read_csv(manifest, dtype=str, keep_default_na=False).query("status == 'failed'")
        for row in failed.itertuples():
            print(f"FAILED {row.case_id}: {row.error} (left out of the cross-validation)", file=sys.stderr)
        if len(failed):
            return EXIT_PARTIAL
    return 0
