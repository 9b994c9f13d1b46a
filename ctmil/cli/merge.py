"""``ctmil merge-predictions``: the shard tables of ``ctmil infer --shard`` → ``predictions.csv`` and ``report.html``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctmil.words import plural

from ctmil.cli.common import EXIT_PARTIAL, add_common, existing, log
from ctmil.keys import Columns

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``merge-predictions`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("merge-predictions", help="join the shard tables of ctmil infer --shard into predictions.csv and report.html")
    p.add_argument("out", metavar="OUT", help="the --out the shards wrote into")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.infer.shards import merge_shards

    out = existing([args.out], "--out of the shards")[0]
    merged = merge_shards(out)
    failed = merged[merged[Columns.STATUS] == "failed"]
    for row in failed.itertuples():
        print(f"FAILED {row.case_id}: {row.error}", file=sys.stderr)
    log.info("%s merged (%d failed); predictions: %s", plural(len(merged), "case"), len(failed), Path(out) / "predictions.csv")
    return EXIT_PARTIAL if len(failed) else 0
