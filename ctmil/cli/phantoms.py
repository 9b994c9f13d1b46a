"""``ctmil phantoms``: a synthetic chest-CT cohort (DICOM, NIfTI, ``labels.csv``)."""

from __future__ import annotations

import argparse
from ctmil.words import plural

from ctmil.cli.common import add_common, log, out_dir
from ctmil.keys import Columns

__all__ = ['add_parser', 'run']

def add_parser(sub: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``phantoms`` on the ``ctmil`` subcommands ``sub``."""
    p = sub.add_parser("phantoms", help="write a synthetic chest-CT cohort (DICOM, NIfTI, labels.csv)")
    p.add_argument("--out", required=True, help="output folder (dicom/, nifti/, labels.csv)")
    p.add_argument("--n", type=int, default=16, help="number of cases (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort (default 0)")
    add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ctmil.synthetic.phantoms import generate_cohort

    table = generate_cohort(out_dir(args.out), n=args.n, seed=args.seed)
    log.info("wrote %s (%d severe) to %s", plural(len(table), "phantom"), int(table[Columns.LABEL].sum()), args.out)
    return 0
