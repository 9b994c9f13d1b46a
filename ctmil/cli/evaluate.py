"""``ctmil evaluate``: a trained model on held-out cases → metrics with CIs,
calibration, ROC and reliability plots.

The work is :func:`ctmil.evaluate.held_out.evaluate_model`; this module only turns the options into its arguments.
Exit codes as every ``ctmil`` command: 0, 2 (a usage or input error, e.g. not one labelled case of each class),
3 (some cases could not be predicted: ``FAILED <case>: <reason>`` lines on stderr).
"""

from __future__ import annotations

import argparse
import sys

from ctmil.cli.common import EXIT_PARTIAL, UsageError, add_common, auto_device, configs, existing, log, out_dir, parse_overrides, validated
from ctmil.keys import Columns

__all__ = ["add_parser", "run"]


def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("evaluate", help="a trained model on held-out cases → metrics with 95%% CIs, calibration, ROC and "
                       "reliability plots")  # fmt: skip
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="CT inputs: export folders, NIfTI files, slice-image folders or CT datalist CSVs")  # fmt: skip
    p.add_argument("--datalist", help="a bag datalist (case_id, bag, label; ctmil preprocess writes one) or a CT datalist")
    p.add_argument("--model", required=True, help="model.pt written by ctmil train / cv (weights only; model.json beside it)")
    p.add_argument("--out", required=True, help="output folder (evaluation.md, metrics.csv, predictions.csv, roc.png, "
                   "reliability.png; inference/ for CT inputs)")  # fmt: skip
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label, for cases the inputs give no label")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating threshold (default: the one recorded in model.json, else 0.5)")  # fmt: skip
    p.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda:0 when available, else cpu)")
    p.add_argument("--allow-input-mismatch", action="store_true",
                   help="evaluate inputs of another kind than the model was trained on (HU vs lung-window slice images)")
    p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over the bundle's inference.json + "
                   "evaluate.json (the evaluation workflow)")  # fmt: skip
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of that workflow by MONAI id, e.g. "
                   "options#top_slices=5")  # fmt: skip
    add_common(p, training=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; print the metrics table; list failed cases on stderr (exit 3 when there are any)."""
    from ctmil.evaluate.held_out import evaluate_model

    if bool(args.inputs) == bool(args.datalist):
        raise UsageError("give either CT inputs or --datalist CSV" + (", not both" if args.inputs else ""))
    inputs = existing(args.inputs, "input") if args.inputs else existing([args.datalist], "datalist")
    model = existing([args.model], "model file")[0]
    labels = existing([args.labels], "labels CSV")[0] if args.labels else None
    config, overrides = configs(args.config), parse_overrides(args.set)
    if config or overrides:
        validated(["inference.json", "evaluate.json", *config], overrides)  # before --out exists
    out = out_dir(args.out)
    result = evaluate_model(model, inputs, out, labels=labels, threshold=args.threshold, n_resamples=args.n_resamples,
                            seed=args.seed, device=auto_device(args.device), progress=not args.quiet,
                            allow_input_mismatch=args.allow_input_mismatch, config=config, overrides=overrides)  # fmt: skip
    print(f"{len(result['predictions'])} held-out cases; threshold {result[Columns.THRESHOLD]:.4g} ({result['threshold_source']})")
    print(result["table"])
    for row in result["failed"].itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    log.info("evaluation: %s", result["report"])
    return EXIT_PARTIAL if len(result["failed"]) else 0
