"""``ctmil demo``: phantoms → a short CV of A and D → held-out evaluation and attention hit rate → ``report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctmil.cli.common import add_common, configs, parse_overrides

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``demo`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("demo", help="phantoms → short CV of A and D → held-out evaluation, attention hit rate → report.html "
                       "(what `make demo` runs)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over train.json + cv.json + demo.json, "
                   "e.g. paper.json")  # fmt: skip
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides of the demo config, e.g. max_epochs=2")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.demo import run_demo

    result = run_demo(args.out, overrides=parse_overrides(args.set), progress=not args.quiet, config=configs(args.config))
    print(Path(result["report"]).read_text())
    print(f"Demo finished in {result['seconds'] / 60:.1f} min. Open {result['html']} (the demo on one page); "
          f"cross-validation report, ROC plot and model: {Path(result['model']).parent}")
    return 0
