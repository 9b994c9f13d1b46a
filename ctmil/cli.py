"""The ``ctmil`` command line. Each subcommand turns its options into config overrides or arguments and calls
one library function; every training setting comes from the bundle's configs (``--set KEY=VALUE`` with MONAI
``#`` ids, e.g. ``--set max_epochs=5 train#virtual_bags#start_epoch=3``).

Exit codes: 0 success, 2 a usage or input error (one line on stderr, no traceback unless ``-v``), 3 partial
success (some cases failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

from ctmil import __version__
from ctmil.cli_common import (EXIT_PARTIAL, EXIT_USAGE, UsageError, auto_device, configs, device_override, existing, out_dir,
                              parse_overrides, refuse_without_ct, set_before_inputs, validated, writable_out)
from ctmil.words import plural

log = logging.getLogger("ctmil")


def _inputs(args: argparse.Namespace, what: str = "input") -> list[str]:
    """The positional inputs, with ``--datalist`` as one more (every command takes both forms); one line when none."""
    given = [*(getattr(args, "inputs", None) or []), *([args.datalist] if getattr(args, "datalist", None) else [])]
    if isinstance(getattr(args, "inputs", None), str):  # cv: one optional DATALIST
        given = [args.inputs, *([args.datalist] if args.datalist else [])]
    if not given:
        raise UsageError(f"no {what} given: name it as the first argument (or with --datalist)")
    return existing(given, what)


def _preprocessing_set(args: argparse.Namespace) -> dict:
    """``preprocess``'s ``--config`` files' ``preprocessing`` sections, then its ``--set`` pairs; every name must be a
    setting of :func:`ctmil.transforms.preprocessing_transforms` (one line naming the first that is not)."""
    from ctmil.transforms import preprocessing_settings

    from ctmil.bundle import config_paths

    from monai.bundle import ConfigParser

    settings: dict = {}
    for path in config_paths(configs(getattr(args, "config", None))):  # JSON or YAML, as MONAI reads configs
        settings.update(ConfigParser.load_config_file(path).get("preprocessing") or {})
    settings.update(parse_overrides(getattr(args, "set", None)))
    settings = {k.split("#", 1)[1] if k.startswith("preprocessing#") else k: v for k, v in settings.items()}
    try:
        preprocessing_settings(**settings)
    except TypeError as err:
        known = ", ".join(preprocessing_settings())
        raise UsageError(f"not a preprocessing setting: {str(err).split()[-1]} (they are: {known})") from None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def _refuse_ct_folders_without_ct(inputs: list[str], args: argparse.Namespace) -> None:
    """``train`` on CT folders or files (no datalist CSV): one line and exit 2 before any output when they hold no CT
    (discovery reads headers only)."""
    if any(str(p).lower().endswith(".csv") for p in inputs):
        return
    from ctmil.io.discovery import discover_cases

    refuse_without_ct(discover_cases(inputs, progress=False))


def _train_overrides(args: argparse.Namespace, out: Path) -> dict:
    inputs = _inputs(args)
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
    return {**overrides, **_implausible(args), **device_override(args.device), **parse_overrides(args.set)}


def _implausible(args: argparse.Namespace) -> dict:
    """The bundle override of ``--allow-implausible-lungs`` (nothing when not given: the config decides)."""
    return {"preprocessing#allow_implausible_lungs": True} if getattr(args, "allow_implausible_lungs", False) else {}


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


def cmd_train(args: argparse.Namespace) -> int:
    overrides = _train_overrides(args, Path(args.out).resolve())
    files = ["train.json", *configs(args.config)]
    validated(files, overrides)
    writable_out(args.out)
    _refuse_ct_folders_without_ct(_inputs(args), args)
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


def cmd_cv(args: argparse.Namespace) -> int:
    from ctmil.evaluate.cv import run_cv

    overrides = {"progress": False, **_implausible(args), **device_override(args.device), **parse_overrides(args.set)}
    for key, value in (("max_epochs", args.epochs), ("seed", args.seed)):
        if value is not None:
            overrides[key] = value
    files = ["train.json", "cv.json", *configs(args.config)]
    datalists = _inputs(args, "datalist")
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ctmil.demo import run_demo

    result = run_demo(args.out, overrides=parse_overrides(args.set), progress=not args.quiet, config=configs(args.config))
    print(Path(result["report"]).read_text())
    print(f"Demo finished in {result['seconds'] / 60:.1f} min. Open {result['html']} (the demo on one page); "
          f"cross-validation report, ROC plot and model: {Path(result['model']).parent}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ctmil.bundle import read_labels
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.io.discovery import discover_cases

    inputs = existing(args.inputs, "input")
    labels = read_labels(existing([args.labels], "labels CSV")[0]) if args.labels else {}
    chosen = _preprocessing_set(args)  # checked before the inputs are read
    cases = discover_cases(inputs, labels=labels, min_slices=chosen.get("min_slices", args.min_slices),
                           progress=not args.quiet, keep_paths=args.keep_paths)
    refuse_without_ct(cases)
    out = out_dir(args.out)
    if labels and not any(c.get("label") is not None for c in cases):
        print(f"warning: no case matched a label of {args.labels} (DICOM studies are matched by a study_uid column, "
              "other inputs by case_id); datalist.csv will be empty", file=sys.stderr)
    elif not labels and not any(c.get("label") is not None for c in cases):
        print("warning: no case has a label (give --labels CSV with case_id or study_uid and label): datalist.csv, "
              "the list ctmil cv and train read, will be empty", file=sys.stderr)
    settings = {"min_slices": args.min_slices, "min_area_fraction": args.min_area_fraction,
                "allow_implausible_lungs": args.allow_implausible_lungs, **chosen}
    manifest = preprocess_cases(cases, out, settings=settings, progress=not args.quiet, montages=args.montages)
    failed = manifest[manifest["status"] == "failed"]
    log.info("%s: %d ok, %d cached, %d failed, %d flagged by QC; manifest: %s; QC report: %s", plural(len(manifest), "case"),
             (manifest["status"] == "ok").sum(), (manifest["status"] == "cached").sum(), len(failed),
             (manifest["qc_flags"] != "").sum(), out / "manifest.csv", out / "qc.html")
    for row in failed.itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    return EXIT_PARTIAL if len(failed) else 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    from ctmil.synthetic.phantoms import generate_cohort

    table = generate_cohort(out_dir(args.out), n=args.n, seed=args.seed)
    log.info("wrote %s (%d severe) to %s", plural(len(table), "phantom"), int(table["label"].sum()), args.out)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from ctmil.bundle import read_labels
    from ctmil.infer.batch import run_inference

    from ctmil.infer.model_io import load_model
    from ctmil.infer.shards import parse_shard

    inputs = existing(args.inputs, "input")
    pull, push = _pacs_options(args)  # before any work
    existing([args.model], "model file")
    labels = read_labels(existing([args.labels], "labels CSV")[0]) if args.labels else {}
    shard = parse_shard(args.shard) if args.shard else None
    validated(["inference.json", *configs(args.config)], parse_overrides(args.set))  # before --out exists
    loaded = load_model(args.model, device=auto_device(args.device), allow_torchscript=args.allow_torchscript)  # before --out
    transfers = []
    if pull is not None:
        from ctmil.pacs import pull_studies

        pulled, transfers = pull_studies(pull, args.study, writable_out(args.out) / "pulled", progress=not args.quiet)
        inputs = [*inputs, *(str(p) for p in pulled)]
        if not inputs:
            return _pacs_report(transfers, args.out, predictions_failed=0)
    predictions, n_failed = run_inference(  # makes --out only once the inputs are known to hold CT
        inputs, loaded, writable_out(args.out), threshold=args.threshold, device=auto_device(args.device),
        save_maps=not args.no_maps, save_overlays=not args.no_overlays, save_features=args.features,
        top_slices=args.top_slices, map_mode=args.map_mode, labels=labels,
        min_slices=args.min_slices, min_area_fraction=args.min_area_fraction,
        allow_implausible_lungs=args.allow_implausible_lungs, allow_input_mismatch=args.allow_input_mismatch,
        shard=shard, config=configs(args.config), overrides=parse_overrides(args.set), progress=not args.quiet,
        allow_torchscript=args.allow_torchscript, keep_paths=args.keep_paths, with_study_uid=args.with_study_uid,
        dicom=args.dicom or push is not None)
    for row in predictions[predictions["status"] == "failed"].itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    if push is not None:
        from ctmil.pacs import push_files

        out = Path(args.out)
        files = {str(r.case_id): [out / p for p in str(r.dicom_paths).split(";")]
                 for r in predictions[predictions["status"] == "ok"].itertuples() if isinstance(r.dicom_paths, str) and r.dicom_paths}
        transfers += push_files(push, files, progress=not args.quiet)
    if pull is not None or push is not None:
        return _pacs_report(transfers, args.out, predictions_failed=n_failed)
    if len(predictions) == 1 and not n_failed:  # one study: the answer on stdout
        row = predictions.iloc[0]
        label = "severe" if row["prediction"] == 1 else "non-severe"
        print(f"{row['case_id']}: probability of severe {row['probability']:.3f} -> {label} (threshold {row['threshold']:g})")
    return EXIT_PARTIAL if n_failed else 0


def _pacs_options(args: argparse.Namespace):
    """``(pull, push)`` PACS clients of ``--from``/``--push`` (``None`` when not given), checked before any work:
    addresses, credentials, and that there is something to predict."""
    from ctmil.pacs import connect, dicomweb_credentials, parse_address

    if args.study and not args.pull:
        raise UsageError("--study needs --from PROTOCOL ADDRESS (the PACS to pull the studies from)")
    clients = []
    for option, given in (("--from", args.pull), ("--push", args.push)):
        if not given:
            clients.append(None)
            continue
        try:
            address = parse_address(*given)
            credentials = dicomweb_credentials(args.credentials) if address.kind == "dicomweb" else None
        except ValueError as err:
            raise UsageError(f"{option}: {err}") from None
        clients.append(connect(address, credentials, ae_title=args.ae_title))
    if not args.inputs and not args.pull:
        raise UsageError("give the CT to predict: input paths, or --from dicomweb URL / --from dimse AE@host:port")
    return clients[0], clients[1]


def _pacs_report(transfers: list, out: str, predictions_failed: int) -> int:
    """Write ``OUT/pacs.csv``, say each failed transfer in one line; exit 3 when anything failed."""
    from ctmil.pacs import write_transfer_table

    table = write_transfer_table(transfers, out_dir(out))
    failed = [t for t in transfers if t.status == "failed"]
    for t in failed:
        print(f"FAILED {t.case_id} ({t.direction}): {t.error}", file=sys.stderr)
    sent = sum(t.n_sent for t in transfers if t.direction == "push")
    held = sum(t.n_present for t in transfers if t.direction == "push")
    log.info("PACS: %s pulled, %s pushed (%d objects sent, %d already held), %d failed; %s",
             plural(sum(t.direction == "pull" and t.status != "failed" for t in transfers), "study", "studies"),
             plural(sum(t.direction == "push" and t.status == "ok" for t in transfers), "case"), sent, held, len(failed), table)
    return EXIT_PARTIAL if failed or predictions_failed else 0


def cmd_merge_predictions(args: argparse.Namespace) -> int:
    from ctmil.infer.shards import merge_shards

    out = existing([args.out], "--out of the shards")[0]
    merged = merge_shards(out)
    failed = merged[merged["status"] == "failed"]
    for row in failed.itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    log.info("%s merged (%d failed); predictions: %s", plural(len(merged), "case"), len(failed), Path(out) / "predictions.csv")
    return EXIT_PARTIAL if len(failed) else 0


def cmd_export(args: argparse.Namespace) -> int:
    from ctmil.infer.export import export_format, export_model

    model = existing([args.model], "model file")[0]
    fmt = export_format(args.out, args.format)  # before any output
    out_dir(str(Path(args.out).parent))
    diff = export_model(model, args.out, fmt=fmt)
    print(f"{fmt} model written to {args.out} (max logit difference to PyTorch {diff:.1e})")
    return 0


def _common(p: argparse.ArgumentParser, training: bool = False) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging, tracebacks")
    if training:
        p.add_argument("--epochs", type=int, help="override max_epochs")
        p.add_argument("--device", help="cpu or cuda[:N] (default: cuda:0 when available, else cpu)")
        p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over the bundle's (MONAI ConfigParser)")
        p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides by MONAI id, e.g. max_epochs=5 'cv#n_folds=3'")


def build_parser() -> argparse.ArgumentParser:
    from ctmil.cli_parser import add_subcommands

    parser = argparse.ArgumentParser(prog="ctmil", description="COVID-19 severity from chest CT with attention MIL (MONAI-based).")
    parser.add_argument("--version", action="version", version=f"ctmil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    add_subcommands(parser, sys.modules[__name__])
    return parser


def _user_error(err: BaseException, verbose: bool) -> int:
    """One line on stderr (the root cause of MONAI's wrapper errors too), the traceback only with ``-v``; exit 2."""
    if verbose:
        traceback.print_exc()
    first = lambda e: str(e).strip().strip("'").splitlines()[0] if str(e).strip() else type(e).__name__  # noqa: E731
    root = err
    while isinstance(root, RuntimeError) and root.__cause__ is not None:  # down to what the config item raised
        root = root.__cause__
    text = first(err) if root is err else first(root)
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USAGE


def quiet_third_parties() -> None:
    """Without ``-v``: no per-epoch lines from Ignite, and no notices from libraries about things the user cannot act
    on (MONAI's missing GPU DICOM decoder plugin, its fallback UserWarning, tracer warnings of an export); ctmil's
    own warnings stay."""
    logging.getLogger("ignite").setLevel(logging.WARNING)
    # "Engine run is terminating due to exception": the exception reaches main, which says what happened in one line
    logging.getLogger("ignite.engine.engine").setLevel(logging.CRITICAL)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    for name in ("dicomweb_client", "pynetdicom", "highdicom"):  # a line per request or association: ctmil says what matters
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"(monai|torch|ignite|pydicom|nibabel|onnx|onnxscript|skimage)(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(TracerWarning|Converting a tensor to a Python|torch\.jit).*")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    args = build_parser().parse_args(set_before_inputs(argv))
    quiet = bool(getattr(args, "quiet", False))
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO  # -q: warnings and errors only
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_third_parties()
    from ctmil.evaluate.cv import CVConfigError
    from ctmil.infer.model_io import ModelError
    from ctmil.pacs import PacsError

    try:
        return int(args.func(args) or 0)
    except (UsageError, CVConfigError, ModelError, FileNotFoundError, ValueError, KeyError) as err:
        return _user_error(err, verbose)
    except RuntimeError as err:  # MONAI wraps what a config item raised: a misspelt argument, too few cases ...
        if not str(err).startswith(("Failed to instantiate component", "Failed to evaluate ConfigExpression")):
            raise
        return _user_error(err, verbose)
    except PacsError as err:  # the PACS could not be searched at all: nothing was done
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
