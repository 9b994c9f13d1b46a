"""``ctmil export``: ``model.pt`` → ONNX or TorchScript, checked for parity."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctmil.cli.common import add_common, existing, out_dir

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``export`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("export", help="model.pt → ONNX or TorchScript for deployment tools, checked for parity")
    p.add_argument("--model", required=True, help="model.pt written by ctmil train / cv (weights only)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                   help="default: from the --out extension (.onnx: onnx; .ts, .pt: torchscript); a mismatch is refused")
    p.add_argument("--out", required=True, help="output file (e.g. model.onnx, model.ts)")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.infer.export import export_format, export_model

    model = existing([args.model], "model file")[0]
    fmt = export_format(args.out, args.format)  # before any output
    out_dir(str(Path(args.out).parent))
    diff = export_model(model, args.out, fmt=fmt)
    print(f"{fmt} model written to {args.out} (max logit difference to PyTorch {diff:.1e})")
    return 0
