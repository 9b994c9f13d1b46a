"""What every ``ctmil`` subcommand shares: the usage error and exit codes, the options every command has
(:func:`add_common`), ``--set`` parsing, ``--config`` names, ``--device``, the inputs (:func:`given_inputs`), and the
checks made before any output (inputs, ``--out``, config ids, inputs without CT). The command modules of
:mod:`ctmil.cli` import these; no library package does."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
from pathlib import Path

__all__ = ["EXIT_PARTIAL", "EXIT_USAGE", "UsageError", "add_common", "add_implausible", "auto_device", "configs", "device_override", "existing",
           "given_inputs", "implausible", "log", "out_dir", "parse_overrides", "refuse_without_ct", "set_before_inputs", "validated",
           "writable_out"]

#: The command line's logger (what a command says about its outcome).
log = logging.getLogger("ctmil")


EXIT_USAGE, EXIT_PARTIAL = 2, 3


class UsageError(Exception):
    """A problem with what the user asked for; reported in one line with exit code 2."""


def parse_overrides(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs → config overrides. A value is read as MONAI's config files and bundle command lines read
    one: JSON (``false``, ``["A", "D"]``), else a Python literal (``False``, ``['A','D']``, ``None``), else the string
    itself (``$@x + 1`` expressions, ``@`` references, paths). A malformed pair is a one-line error naming it."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r} is not KEY=VALUE (e.g. --set max_epochs=5 'cv#settings=[\"A\",\"D\"]')")
        out[key] = _literal(value)
    return out


def _literal(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def set_before_inputs(argv: list[str]) -> list[str]:
    """``argv`` with the words after ``--set`` that are not ``KEY=VALUE`` but name an existing file or folder moved
    out of its reach (right after the subcommand, where no option can take them), so that
    ``ctmil train --set max_epochs=1 data.csv`` reads ``data.csv`` as the input it is. Any other word stays, and is
    then a one-line "not KEY=VALUE" error."""
    out, moved, in_set = [], [], False
    for word in argv:
        if word.startswith("-"):
            in_set = word == "--set"
            out.append(word)
        elif in_set and "=" not in word and Path(word).exists():
            moved.append(word)
        else:
            out.append(word)
    command = next((i for i, w in enumerate(out) if not w.startswith("-")), len(out) - 1)  # the subcommand
    return out[: command + 1] + moved + out[command + 1 :]


def auto_device(value: str | None) -> str:
    """``--device`` of every command: the one given, else ``cuda:0`` when CUDA is available, else ``cpu``."""
    if value:
        return value
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def device_override(value: str | None) -> dict:
    if not value:
        return {}
    from ctmil.infer.model_io import check_device

    return {"device": check_device(value)}  # the torch.device itself: the workflow builder takes objects


def existing(paths: list[str], what: str) -> list[str]:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"{what} not found: {missing[0]}")
    return [str(Path(p).resolve()) for p in paths]


def configs(names: list[str] | None) -> list[str]:
    """``--config`` files: paths, or the names of packaged configs (``paper.json``)."""
    from ctmil.bundle import config_dir

    out = []
    for name in names or []:
        if Path(name).is_file():
            out.append(str(Path(name).resolve()))
        elif (config_dir() / name).is_file():
            out.append(name)
        else:
            raise UsageError(f"config not found: {name} (a file, or one of the bundle's: "
                             f"{', '.join(sorted(p.name for p in config_dir().glob('*.json')))})")
    return out


def out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ctmil-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to --out {path}: {err.strerror or err}") from None
    return out.resolve()


def writable_out(path: str) -> Path:
    """``--out`` checked as :func:`out_dir` checks it, leaving nothing behind: an existing folder we may write in,
    or a path whose nearest existing parent takes a new folder (tried, then removed), for commands that must find
    their inputs usable before they create anything."""
    import tempfile

    out = Path(path).resolve()
    parent = next((p for p in (out, *out.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise UsageError(f"cannot write to --out {path}: not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ctmil-write-test-", dir=parent))
    except OSError as err:
        raise UsageError(f"cannot write to --out {path}: {err.strerror or err}") from None
    return out


def refuse_without_ct(cases: list[dict]) -> None:
    """A usage error (exit 2) when the inputs hold no CT at all, rather than a batch of one failed case; inputs where
    CT was found but is unusable stay failed cases (exit 3)."""
    from ctmil.io.discovery import no_ct_reason

    reason = no_ct_reason(cases)
    if reason:
        raise UsageError(reason)


def validated(files: list[str], overrides: dict) -> None:
    """Every override id exists in the configs (one line naming the first that does not), before any output."""
    from ctmil.bundle import check_override_ids, config_paths

    check_override_ids(config_paths(files), overrides)


def add_common(p: argparse.ArgumentParser, training: bool = False) -> None:
    """The options of every subcommand (``-q``, ``-v``), and of the training ones (``--epochs``, ``--device``,
    ``--config``, ``--set``)."""
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging, tracebacks")
    if training:
        p.add_argument("--epochs", type=int, help="override max_epochs")
        p.add_argument("--device", help="cpu or cuda[:N] (default: cuda:0 when available, else cpu)")
        p.add_argument("--config", nargs="*", metavar="JSON", help="more config files merged over the bundle's (MONAI ConfigParser)")
        p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides by MONAI id, e.g. max_epochs=5 'cv#n_folds=3'")


def given_inputs(args: argparse.Namespace, what: str = "input") -> list[str]:
    """The positional inputs, with ``--datalist`` as one more (every command takes both forms); one line when none."""
    given = [*(getattr(args, "inputs", None) or []), *([args.datalist] if getattr(args, "datalist", None) else [])]
    if isinstance(getattr(args, "inputs", None), str):  # cv: one optional DATALIST
        given = [args.inputs, *([args.datalist] if args.datalist else [])]
    if not given:
        raise UsageError(f"no {what} given: name it as the first argument (or with --datalist)")
    return existing(given, what)


def add_implausible(p: argparse.ArgumentParser) -> None:
    """``--allow-implausible-lungs`` (train, cv, preprocess, infer): read by :func:`implausible` and the library calls."""
    p.add_argument("--allow-implausible-lungs", action="store_true",
                   help="keep cases whose lung mask cannot be an adult's lungs (e.g. 16 mL: bowel gas), with the reason as a "
                   "warning; by default such a case fails")


def implausible(args: argparse.Namespace) -> dict:
    """The bundle override of ``--allow-implausible-lungs`` (nothing when not given: the config decides)."""
    return {"allow_implausible_lungs": True} if getattr(args, "allow_implausible_lungs", False) else {}
