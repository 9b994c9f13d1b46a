"""``ctmil infer``: CT studies (files, or pulled from a PACS) → ``predictions.csv``, attention maps and overlays, and
optionally DICOM results stored back in the PACS (docs/inference.md, docs/pacs.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctmil.cli.common import EXIT_PARTIAL, UsageError, add_common, add_implausible, auto_device, configs, existing, log, out_dir, parse_overrides, validated, writable_out
from ctmil.words import plural
from ctmil.keys import Columns

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``infer`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("infer", help="CT studies → predictions.csv, attention maps (NIfTI) and overlays (PNG)")
    p.add_argument("inputs", nargs="*", help="export folders, NIfTI files, slice-image folders or datalist CSVs (or --from a PACS)")
    p.add_argument("--model", required=True, help="model.pt (state dict or checkpoint, loaded weights-only)")
    p.add_argument("--allow-torchscript", action="store_true", help="also accept TorchScript models (programs: only ones you trust)")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, cases/<case_id>/...)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the calibrated probability (default: the one learnt with the model, else 0.5)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda:0 when available, else cpu)")
    p.add_argument("--top-slices", type=int, default=3, help="PNG overlays of the N most attended slices (default 3)")
    p.add_argument("--map-mode", choices=("bag", "slice"), default="bag", help="attention as is, or normalised per slice (paper Fig. 5)")
    p.add_argument("--no-maps", action="store_true", help="no attention NIfTI")
    p.add_argument("--no-overlays", action="store_true", help="no PNG overlays")
    p.add_argument("--features", action="store_true", help="also write bag feature vectors (features.npy, features.csv)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label")
    p.add_argument("--min-slices", type=int, default=None, help="default: the model's recorded setting, else 8")
    p.add_argument("--min-area-fraction", type=float, default=None, help="default: the model's recorded setting, else 0.2")
    add_implausible(p)
    p.add_argument("--keep-paths", action="store_true", help="absolute source paths in the outputs (default: relative to the input)")
    p.add_argument("--allow-input-mismatch", action="store_true",
                   help="predict inputs of another kind than the model was trained on (HU DICOM/NIfTI vs lung-window slice "
                   "images), with a warning in their row; by default they are refused before any work")
    p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over the bundle's inference.json")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of inference.json by MONAI id, e.g. options#top_slices=5")
    p.add_argument("--shard", metavar="I/N", help="only the cases of shard I of N (0 <= I < N, e.g. $SLURM_ARRAY_TASK_ID/4); "
                   "their table is predictions.shard-I-of-N.csv, joined by ctmil merge-predictions")
    p.add_argument("--with-study-uid", action="store_true",
                   help="add the StudyInstanceUID to predictions.csv, to join with clinical data (an identifier: off by default)")
    p.add_argument("--dicom", action="store_true",
                   help="also write each DICOM study's results as DICOM in that study: an SR (TID 1500), the attention "
                   "map as a Parametric Map and Secondary Capture overlays, under cases/<case>/dicom/ (docs/pacs.md)")
    p.add_argument("--from", dest="pull", nargs=2, metavar=("PROTOCOL", "ADDRESS"),
                   help="pull the studies from a PACS: 'dicomweb URL' or 'dimse AE@host:port' (into OUT/pulled/)")
    p.add_argument("--study", nargs="+", action="extend", default=[], metavar="UID",
                   help="with --from: only these StudyInstanceUIDs (default: every study with CT)")
    p.add_argument("--push", nargs=2, metavar=("PROTOCOL", "ADDRESS"),
                   help="store the DICOM results in the PACS, in each source study (implies --dicom): 'dicomweb URL' or "
                   "'dimse AE@host:port'; only what the PACS does not hold yet is sent")
    p.add_argument("--credentials", metavar="FILE",
                   help="DICOMweb credentials: a JSON file with user and password, or token (default: the environment's "
                   "CTMIL_DICOMWEB_USER/CTMIL_DICOMWEB_PASSWORD or CTMIL_DICOMWEB_TOKEN); never on the command line")
    p.add_argument("--ae-title", default="CTMIL", help="this end's AE title for DIMSE")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.bundle import read_labels
    from ctmil.infer.batch import run_inference
    from ctmil.infer.writer import InferenceOptions

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
    options = InferenceOptions(threshold=args.threshold, save_maps=not args.no_maps, save_overlays=not args.no_overlays,
                               save_features=args.features, top_slices=args.top_slices, map_mode=args.map_mode,
                               with_study_uid=args.with_study_uid, dicom=args.dicom or push is not None)
    predictions, n_failed = run_inference(  # makes --out only once the inputs are known to hold CT
        inputs, loaded, writable_out(args.out), options, device=auto_device(args.device), labels=labels,
        min_slices=args.min_slices, min_area_fraction=args.min_area_fraction,
        allow_implausible_lungs=args.allow_implausible_lungs, allow_input_mismatch=args.allow_input_mismatch,
        shard=shard, config=configs(args.config), overrides=parse_overrides(args.set), progress=not args.quiet,
        allow_torchscript=args.allow_torchscript, keep_paths=args.keep_paths)
    for row in predictions[predictions[Columns.STATUS] == "failed"].itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    if push is not None:
        from ctmil.pacs import push_files

        out = Path(args.out)
        files = {str(r.case_id): [out / p for p in str(r.dicom_paths).split(";")]
                 for r in predictions[predictions[Columns.STATUS] == "ok"].itertuples() if isinstance(r.dicom_paths, str) and r.dicom_paths}
        transfers += push_files(push, files, progress=not args.quiet)
        transfers += _not_pushed(predictions)
    if pull is not None or push is not None:
        return _pacs_report(transfers, args.out, predictions_failed=n_failed)
    if len(predictions) == 1 and not n_failed:  # one study: the answer on stdout
        row = predictions.iloc[0]
        label = "severe" if row[Columns.PREDICTION] == 1 else "non-severe"
        print(f"{row[Columns.CASE_ID]}: probability of severe {row[Columns.PROBABILITY]:.3f} -> {label} (threshold {row[Columns.THRESHOLD]:g})")
    return EXIT_PARTIAL if n_failed else 0


def _pacs_options(args: argparse.Namespace):
    """``(pull, push)`` PACS clients of ``--from``/``--push`` (``None`` when not given), checked before any work:
    addresses, credentials, and that there is something to predict."""
    from ctmil.pacs import connect, dicomweb_credentials, parse_address
    from ctmil.pacs.address import check_ae_title

    if args.study and not args.pull:
        raise UsageError("--study needs --from PROTOCOL ADDRESS (the PACS to pull the studies from)")
    if args.credentials and not Path(args.credentials).is_file():
        raise UsageError(f"credentials file not found: {args.credentials}")
    if any(given and given[0] == "dimse" for given in (args.pull, args.push)):
        try:
            check_ae_title(args.ae_title)
        except ValueError as err:
            raise UsageError(f"--ae-title: {err}") from None
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


def _not_pushed(predictions) -> list:
    """A failed push row for each DICOM study that was predicted but got no DICOM results (the reason is its warning)."""
    from ctmil.pacs import Transfer

    rows = []
    lacking = predictions[(predictions[Columns.STATUS] == "ok") & (predictions["input_kind"] == "dicom")]
    for r in lacking.itertuples():
        if not (isinstance(r.dicom_paths, str) and r.dicom_paths):
            reason = next((w.strip() for w in str(r.warning).split(";") if w.strip().startswith("no DICOM results")),
                          "no DICOM results were written")
            rows.append(Transfer(str(r.case_id), "push", "failed", error=reason))
    return rows


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
