"""The ``ctmil`` command line. Each subcommand parses its arguments here and calls one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ctmil import __version__


def _labels_from_csv(path: str | None) -> dict[str, float]:
    if not path:
        return {}
    import pandas as pd

    table = pd.read_csv(path)
    if "label" not in table.columns:
        raise SystemExit(f"error: {path} has no 'label' column")
    keys = [c for c in ("case_id", "study_uid") if c in table.columns]
    if not keys:
        raise SystemExit(f"error: {path} needs a 'case_id' or 'study_uid' column")
    labels = {}
    for key in keys:
        labels.update({str(k): float(v) for k, v in zip(table[key], table["label"]) if not pd.isna(v)})
    return labels


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ctmil.io.discovery import discover_cases
    from ctmil.data.preprocess import preprocess_cases

    cases = discover_cases(args.inputs, labels=_labels_from_csv(args.labels), min_slices=args.min_slices, progress=not args.quiet)
    if not cases:
        raise SystemExit("error: no cases found in the inputs")
    settings = {"min_slices": args.min_slices, "min_area_fraction": args.min_area_fraction}
    manifest = preprocess_cases(cases, args.out, settings=settings, progress=not args.quiet)
    failed = manifest[manifest["status"] == "failed"]
    logging.getLogger("ctmil").info(
        "%d cases: %d ok, %d cached, %d failed; manifest: %s", len(manifest), (manifest["status"] == "ok").sum(),
        (manifest["status"] == "cached").sum(), len(failed), Path(args.out) / "manifest.csv",
    )
    for row in failed.itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    return 3 if len(failed) else 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    from ctmil.synthetic.phantoms import generate_cohort

    table = generate_cohort(args.out, n=args.n, seed=args.seed)
    logging.getLogger("ctmil").info("wrote %d phantoms (%d severe) to %s", len(table), int(table["label"].sum()), args.out)
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from ctmil.infer.batch import run_inference
    from ctmil.infer.model_io import ModelError

    try:
        predictions, n_failed = run_inference(
            args.inputs, args.model, args.out, threshold=args.threshold, device=args.device,
            save_maps=not args.no_maps, save_overlays=not args.no_overlays, save_features=args.features,
            top_slices=args.top_slices, map_mode=args.map_mode, labels=_labels_from_csv(args.labels),
            min_slices=args.min_slices, min_area_fraction=args.min_area_fraction, progress=not args.quiet)
    except (ModelError, ValueError) as err:  # bad model file, bad options, no inputs
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in predictions[predictions["status"] == "failed"].itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    logging.getLogger("ctmil").info("%d studies, %d failed; predictions: %s", len(predictions), n_failed, Path(args.out) / "predictions.csv")
    return 3 if n_failed else 0


def _overrides(pairs: list[str] | None) -> dict:
    """``key=value`` pairs (dotted keys, JSON values) → a dict for the config loaders."""
    import json

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: override {pair!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_cv(args: argparse.Namespace) -> int:
    from ctmil.evaluate.cv import run_cv_from_config

    import pandas as pd

    config = args.config or str(Path(__file__).resolve().parents[1] / "bundles" / "covid19_severity_mil" / "configs" / "cv.json")
    datalist = args.datalist
    if "bag" not in pd.read_csv(datalist, nrows=0).columns:  # a datalist of CT files: preprocess it first
        from ctmil.io.discovery import read_datalist
        from ctmil.data.preprocess import preprocess_cases

        manifest = preprocess_cases(read_datalist(datalist), Path(args.out) / "bags", progress=True)
        for row in manifest[manifest["status"] == "failed"].itertuples():
            print(f"FAILED {row.case_id}: {row.error} (left out of the cross-validation)", file=sys.stderr)
        datalist = Path(args.out) / "bags" / "datalist.csv"
    run_cv_from_config(config, datalist, args.out, overrides=_overrides(args.set))
    print((Path(args.out) / "report.md").read_text())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ctmil.demo import run_demo

    result = run_demo(args.out, config=args.config, overrides=_overrides(args.set), progress=not args.quiet)
    print(Path(result["report"]).read_text())
    print(f"Demo finished in {result['seconds'] / 60:.1f} min. Report, ROC plot and model: {Path(result['report']).parent}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctmil", description="COVID-19 severity from chest CT with attention MIL (MONAI-based).")
    parser.add_argument("--version", action="version", version=f"ctmil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="CT inputs → one bag file per case + manifest.csv")
    p.add_argument("inputs", nargs="+", help="export folders, NIfTI files, slice-image folders or datalist CSVs")
    p.add_argument("--out", required=True, help="output folder (bags/, manifest.csv)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label columns")
    p.add_argument("--min-slices", type=int, default=8, help="fewest slices of a usable DICOM series (default 8)")
    p.add_argument("--min-area-fraction", type=float, default=0.2, help="keep slices whose lung area is at least this fraction of the largest (default 0.2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("phantoms", help="write a synthetic chest-CT cohort (DICOM, NIfTI, labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=16, help="number of cases (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("cv", help="stratified, patient-grouped k-fold CV of the ablation settings → report")
    p.add_argument("--datalist", required=True, help="CSV with case_id, bag, label[, patient] (ctmil preprocess writes one), "
                   "or with case_id, image, label[, patient] (CT files, preprocessed into OUT/bags first)")
    p.add_argument("--out", required=True, help="output folder (report.md/.csv, predictions, folds, roc.png, model)")
    p.add_argument("--config", help="CV config JSON (default: the bundle's configs/cv.json, the paper's protocol)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5 cv.settings='[\"A\",\"D\"]'")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("infer", help="CT studies → predictions.csv, attention maps (NIfTI) and overlays (PNG)")
    p.add_argument("inputs", nargs="+", help="export folders, NIfTI files, slice-image folders or datalist CSVs")
    p.add_argument("--model", required=True, help="state dict / checkpoint (.pt, loaded weights-only) or TorchScript")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, cases/<case_id>/...)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--top-slices", type=int, default=3, help="PNG overlays of the N most attended slices")
    p.add_argument("--map-mode", choices=("bag", "slice"), default="bag", help="attention as is, or normalised per slice (paper Fig. 5)")
    p.add_argument("--no-maps", action="store_true", help="no attention NIfTI")
    p.add_argument("--no-overlays", action="store_true", help="no PNG overlays")
    p.add_argument("--features", action="store_true", help="also write bag feature vectors (features.npy, features.csv)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label")
    p.add_argument("--min-slices", type=int, default=None, help="default: the model's recorded setting, else 8")
    p.add_argument("--min-area-fraction", type=float, default=None, help="default: the model's recorded setting, else 0.2")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("demo", help="phantoms → bags → short CV of settings A and D → report (what `make demo` runs)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--config", help="demo config JSON (default: the bundle's configs/demo.json)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of the CV config, e.g. train.epochs=2")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
