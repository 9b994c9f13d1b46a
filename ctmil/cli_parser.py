"""The subcommands and options of the ``ctmil`` command line (the commands themselves are in :mod:`ctmil.cli`)."""

from __future__ import annotations

import argparse
from types import ModuleType


def add_subcommands(parser: argparse.ArgumentParser, cli: ModuleType) -> None:
    """Add every subcommand to ``parser``; each calls ``cli.cmd_<name>``."""
    sub = _Described(parser.add_subparsers(dest="command", required=True))
    common = cli._common

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
    p.add_argument("--allow-implausible-lungs", action="store_true",
                   help="keep cases whose lung mask cannot be an adult's lungs (e.g. 16 mL: bowel gas), with the reason as a "
                   "warning; by default such a case fails")
    common(p, training=True)
    p.set_defaults(func=cli.cmd_train)

    p = sub.add_parser("cv", help="stratified, patient-grouped k-fold CV of the ablation settings → report")
    p.add_argument("inputs", nargs="?", metavar="DATALIST", help="the datalist (as --datalist)")
    p.add_argument("--datalist", help="CSV with case_id, bag, label[, patient] (ctmil preprocess writes one), "
                   "or with case_id, image, label[, patient] (CT files, preprocessed into OUT/bags first)")
    p.add_argument("--out", required=True, help="output folder (report.md/.csv, predictions, folds, roc.png, model)")
    p.add_argument("--restart", action="store_true", help="discard an --out made from another config or datalist")
    p.add_argument("--seed", type=int, help="root seed of the folds, initialisations and data order (default 0)")
    p.add_argument("--allow-implausible-lungs", action="store_true",
                   help="keep cases whose lung mask cannot be an adult's lungs (e.g. 16 mL: bowel gas), with the reason as a "
                   "warning; by default such a case fails")
    common(p, training=True)
    p.set_defaults(func=cli.cmd_cv)

    p = sub.add_parser("demo", help="phantoms → short CV of A and D → held-out evaluation, attention hit rate → report.html "
                       "(what `make demo` runs)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over train.json + cv.json + demo.json, "
                   "e.g. paper.json")  # fmt: skip
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of the demo config, e.g. max_epochs=2")
    common(p)
    p.set_defaults(func=cli.cmd_demo)

    p = sub.add_parser("preprocess", help="CT inputs → one bag file per case + manifest.csv")
    p.add_argument("inputs", nargs="+", help="export folders, NIfTI files, slice-image folders or datalist CSVs")
    p.add_argument("--out", required=True, help="output folder (bags/, manifest.csv, datalist.csv)")
    p.add_argument("--labels", help="CSV with case_id (or study_uid) and label columns")
    p.add_argument("--min-slices", type=int, default=8, help="fewest slices of a usable DICOM series (default 8)")
    p.add_argument("--min-area-fraction", type=float, default=0.2,
                   help="keep slices whose lung area is at least this fraction of the largest (default 0.2)")
    p.add_argument("--keep-paths", action="store_true",
                   help="write absolute source paths to the manifest (default: relative to the input; folders are often named after patients)")
    p.add_argument("--no-montages", dest="montages", action="store_false",
                   help="skip the per-case QC montages (qc/*.png) in qc.html; measures and outlier flags are still written")
    p.add_argument("--config", nargs="*", metavar="JSON", help="config files whose 'preprocessing' section (as in train.json) "
                   "sets the preprocessing")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="preprocessing settings, e.g. max_slices=30 'window_hu=[-1000,400]'")
    p.add_argument("--allow-implausible-lungs", action="store_true",
                   help="keep cases whose lung mask cannot be an adult's lungs (e.g. 16 mL: bowel gas), with the reason as a "
                   "warning; by default such a case fails")
    common(p)
    p.set_defaults(func=cli.cmd_preprocess)

    p = sub.add_parser("phantoms", help="write a synthetic chest-CT cohort (DICOM, NIfTI, labels.csv)")
    p.add_argument("--out", required=True, help="output folder (dicom/, nifti/, labels.csv)")
    p.add_argument("--n", type=int, default=16, help="number of cases (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort (default 0)")
    common(p)
    p.set_defaults(func=cli.cmd_phantoms)

    p = sub.add_parser("export", help="model.pt → ONNX or TorchScript for deployment tools, checked for parity")
    p.add_argument("--model", required=True, help="model.pt written by ctmil train / cv (weights only)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="default: from the --out extension (.onnx: onnx; .ts, .pt: torchscript); a mismatch is refused")
    p.add_argument("--out", required=True, help="output file (e.g. model.onnx, model.ts)")
    common(p)
    p.set_defaults(func=cli.cmd_export)

    p = sub.add_parser("merge-predictions", help="join the shard tables of ctmil infer --shard into predictions.csv and report.html")
    p.add_argument("out", metavar="OUT", help="the --out the shards wrote into")
    common(p)
    p.set_defaults(func=cli.cmd_merge_predictions)

    from ctmil.cli_evaluate import add_parser as add_evaluate

    add_evaluate(sub, common)
    _add_infer(sub, cli, common)


class _Described:
    """``add_subparsers()``'s action whose ``add_parser(help=...)`` also gives the subcommand's ``--help`` page that
    line as its description, and shows the options' defaults (:class:`_DefaultsFormatter`)."""

    def __init__(self, action: "argparse._SubParsersAction") -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", (kwargs.get("help") or "").replace("%%", "%") or None)
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        return self.action.add_parser(name, **kwargs)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help lines end with ``(default: X)`` when an option has a default worth saying and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        quiet = action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0  # flags: the default is implied
        if quiet or "default" in text or action.option_strings == []:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _add_infer(sub: "argparse._SubParsersAction", cli: ModuleType, common) -> None:
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
    p.add_argument("--allow-implausible-lungs", action="store_true",
                   help="keep cases whose lung mask cannot be an adult's lungs (e.g. 16 mL: bowel gas), with the reason as a "
                   "warning; by default such a case fails")
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
    common(p)
    p.set_defaults(func=cli.cmd_infer)
