"""``ctmil preprocess``: CT inputs → one bag file per case, ``manifest.csv``, ``datalist.csv`` and ``qc.html``."""

from __future__ import annotations

import argparse
import sys

from ctmil.words import plural

from ctmil.cli.common import EXIT_PARTIAL, UsageError, add_common, add_implausible, configs, existing, log, out_dir, parse_overrides, refuse_without_ct
from ctmil.keys import Columns

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``preprocess`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("preprocess", help="CT inputs → one bag file per case + manifest.csv")
    p.add_argument("inputs", nargs="+", help="export folders, NIfTI files, slice-image folders or datalist CSVs")
    p.add_argument("--out", required=True, help="output folder (bags/, manifest.csv, datalist.csv)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label columns")
    p.add_argument("--min-slices", type=int, default=None,
                   help="fewest slices of a usable DICOM series (default: the preprocessing setting min_slices, 8)")
    p.add_argument("--min-area-fraction", type=float, default=None,
                   help="keep slices whose lung area is at least this fraction of the largest (default: the preprocessing "
                        "setting min_area_fraction, 0.2)")
    p.add_argument("--keep-paths", action="store_true",
                   help="write absolute source paths to the manifest (default: relative to the input; folders are often named after patients)")
    p.add_argument("--no-montages", dest="montages", action="store_false",
                   help="skip the per-case QC montages (qc/*.png) in qc.html; measures and outlier flags are still written")
    p.add_argument("--config", nargs="*", metavar="JSON", help="config files whose 'preprocessing_args' section (as in train.json) "
                   "sets the preprocessing")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="preprocessing settings, e.g. max_slices=30 'window_hu=[-1000,400]'")
    add_implausible(p)
    add_common(p)
    p.set_defaults(func=run)
    return p


def _preprocessing_set(args: argparse.Namespace) -> dict:
    """``preprocess``'s ``--config`` files' ``preprocessing`` sections, then its ``--set`` pairs; every name must be a
    setting of :func:`ctmil.transforms.preprocessing_transforms` (one line naming the first that is not)."""
    from ctmil.transforms import preprocessing_settings

    from ctmil.bundle import config_paths

    from monai.bundle import ConfigParser

    settings: dict = {}
    for path in config_paths(configs(getattr(args, "config", None))):  # JSON or YAML, as MONAI reads configs
        config = ConfigParser.load_config_file(path)
        section = config.get("preprocessing_args") or {}
        settings.update({k: v for k, v in section.items() if not str(k).startswith("_")})  # "_target_": train.json's builder
        settings.update({k: v for k, v in config.items() if str(k).startswith("preprocessing_args#")})  # paper.json's form
    settings.update(parse_overrides(getattr(args, "set", None)))
    settings = {k.split("#", 1)[1] if k.startswith("preprocessing_args#") else k: v for k, v in settings.items()}
    try:
        preprocessing_settings(**settings)
    except TypeError as err:
        known = ", ".join(preprocessing_settings())
        raise UsageError(f"not a preprocessing setting: {str(err).split()[-1]} (they are: {known})") from None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def run(args: argparse.Namespace) -> int:
    from ctmil.transforms import preprocessing_settings
    from ctmil.bundle import read_labels
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.io.discovery import discover_cases

    inputs = existing(args.inputs, "input")
    labels = read_labels(existing([args.labels], "labels CSV")[0]) if args.labels else {}
    chosen = _preprocessing_set(args)  # checked before the inputs are read
    given = {k: v for k, v in (("min_slices", args.min_slices), ("min_area_fraction", args.min_area_fraction)) if v is not None}
    settings = preprocessing_settings(**{**given, "allow_implausible_lungs": args.allow_implausible_lungs, **chosen})
    cases = discover_cases(inputs, labels=labels, min_slices=settings["min_slices"],
                           progress=not args.quiet, keep_paths=args.keep_paths)
    refuse_without_ct(cases)
    out = out_dir(args.out)
    if labels and not any(c.get(Columns.LABEL) is not None for c in cases):
        print(f"warning: no case matched a label of {args.labels} (DICOM studies are matched by a study_uid column, "
              "other inputs by case_id); datalist.csv will be empty", file=sys.stderr)
    elif not labels and not any(c.get(Columns.LABEL) is not None for c in cases):
        print("warning: no case has a label (give --labels CSV with case_id or study_uid and label): datalist.csv, "
              "the list ctmil cv and train read, will be empty", file=sys.stderr)
    manifest = preprocess_cases(cases, out, settings=settings, progress=not args.quiet, montages=args.montages)
    failed = manifest[manifest[Columns.STATUS] == "failed"]
    log.info("%s: %d ok, %d cached, %d failed, %d flagged by QC; manifest: %s; QC report: %s", plural(len(manifest), "case"),
             (manifest[Columns.STATUS] == "ok").sum(), (manifest[Columns.STATUS] == "cached").sum(), len(failed),
             (manifest["qc_flags"] != "").sum(), out / "manifest.csv", out / "qc.html")
    for row in failed.itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    return EXIT_PARTIAL if len(failed) else 0
