"""The ``ctmil`` entry point: the parser of every subcommand (one module each in :mod:`ctmil.cli`), logging, and the
one-line errors and exit codes every command shares."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings

from ctmil import __version__
from ctmil.cli import cv, demo, evaluate, export, infer, merge, phantoms, preprocess, train
from ctmil.cli.common import EXIT_USAGE, UsageError, set_before_inputs

__all__ = ["COMMANDS", "build_parser", "main", "quiet_third_parties"]

#: The subcommands, in the order ``ctmil --help`` lists them: each module has ``add_parser(sub)`` and ``run(args)``.
COMMANDS = (train, cv, demo, preprocess, phantoms, export, merge, evaluate, infer)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctmil", description="COVID-19 severity from chest CT with attention MIL (MONAI-based).")
    parser.add_argument("--version", action="version", version=f"ctmil {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = _Described(parser.add_subparsers(dest="command", required=True))
    for command in COMMANDS:
        command.add_parser(sub)
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
