"""``ctmil train``: one model on every labelled case (optional validation split) → ``OUT/model.pt``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctmil.cli.common import UsageError, add_common, add_implausible, configs, device_override, existing, given_inputs, implausible, log, out_dir, parse_overrides, refuse_without_ct, validated, writable_out

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``train`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("train", help="train one model on every labelled case (optional validation split) → OUT/model.pt")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="a datalist CSV (of bags, or of CT files), export folders or NIfTI files")
    p.add_argument("--datalist", help="the same as a datalist INPUT (as ctmil cv and evaluate take it)")
    p.add_argument("--out", required=True, help="output folder (model.pt, model.json, checkpoints/, tensorboard/, bags/)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label, for folder inputs")
    p.add_argument("--val-fraction", type=float, help="share of cases held out for validation (default 0.2; 0: none)")
    p.add_argument("--seed", type=int, help="seed of the initialisation, data order and split (default 0)")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes (gloo on CPU, nccl on GPUs; default 1)")
    p.add_argument("--model-dir", help="where model.pt/model.json go (default: --out), e.g. a bundle's models/ folder")
    p.add_argument("--restart", action="store_true", help="discard the checkpoints of an --out made from other settings")
    add_implausible(p)
    add_common(p, training=True)
    p.set_defaults(func=run)
    return p


def _refuse_ct_folders_without_ct(inputs: list[str], args: argparse.Namespace) -> None:
    """``train`` on CT folders or files (no datalist CSV): one line and exit 2 before any output when they hold no CT
    (discovery reads headers only)."""
    if any(str(p).lower().endswith(".csv") for p in inputs):
        return
    from ctmil.io.discovery import discover_cases

    refuse_without_ct(discover_cases(inputs, progress=False))


def _train_overrides(args: argparse.Namespace, out: Path) -> dict:
    inputs = given_inputs(args)
    overrides = {
        "datalist": inputs[0] if len(inputs) == 1 else inputs,
        "bundle_root": str(out), "ckpt_dir": str(out), "output_dir": str(out), "cache_dir": str(out / "bags"),
        "progress": not args.quiet, "log_epochs": not args.quiet,
    }
    if getattr(args, "labels", None):
        overrides["labels"] = existing([args.labels], "labels CSV")[0]
    if getattr(args, "model_dir", None):
        overrides["ckpt_dir"] = str(Path(args.model_dir).resolve())  # made once everything is validated
    for key, value in (("max_epochs", args.epochs), ("seed", args.seed), ("val_fraction", getattr(args, "val_fraction", None))):
        if value is not None:
            overrides[key] = value
    return {**overrides, **implausible(args), **device_override(args.device), **parse_overrides(args.set)}


def _check_train_out(out: Path, files: list[str], overrides: dict, restart: bool) -> None:
    """A run resumes from ``out/checkpoints`` only when it was made from the same configs and settings (more
    epochs may be asked for); otherwise refuse, or with ``--restart`` discard the old checkpoints."""
    import shutil

    record = json.loads(json.dumps({"files": files, "overrides": {k: v for k, v in overrides.items()
                                                                   if k not in ("max_epochs", "progress", "log_epochs")}}, default=str))
    path = out / "train_config.json"
    if path.exists() and (out / "checkpoints").is_dir() and json.loads(path.read_text()) != record:
        if not restart:
            raise UsageError(f"{out} holds a run made from other settings; use another --out, or --restart to discard it")
        shutil.rmtree(out / "checkpoints")
    path.write_text(json.dumps(record, indent=2))


def run(args: argparse.Namespace) -> int:
    overrides = _train_overrides(args, Path(args.out).resolve())
    files = ["train.json", *configs(args.config)]
    validated(files, overrides)
    writable_out(args.out)
    _refuse_ct_folders_without_ct(given_inputs(args), args)
    out = out_dir(args.out)
    if getattr(args, "model_dir", None):
        out_dir(args.model_dir)
    _check_train_out(out, files, overrides, args.restart)
    if args.nproc > 1:
        from ctmil.train.distributed import run_distributed

        run_distributed(files, overrides, args.nproc)
    else:
        from ctmil.bundle import build_workflow

        workflow = build_workflow(files, overrides)
        workflow.run()
        workflow.finalize()
    log.info("model: %s", Path(overrides["ckpt_dir"]) / "model.pt")
    return 0
