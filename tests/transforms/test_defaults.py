"""Each preprocessing default has one home: a named constant beside the code that uses it, which every signature
(and ``train.json``, through ``preprocessing_settings``) takes it from. A second literal of the same default fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ctmil
from ctmil.transforms import preprocessing_settings

ROOT = Path(ctmil.__file__).parent
DEFAULTS = {k: v for k, v in preprocessing_settings().items() if k != "allow_implausible_lungs"}  # a run option, off


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def literal_defaults(source: str) -> list[tuple[int, str, object]]:
    """``(line, parameter, value)`` of every parameter default of ``source`` written as a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            for arg, default in pairs:
                if default is None:
                    continue
                try:
                    found.append((default.lineno, arg.arg, ast.literal_eval(default)))
                except ValueError:
                    continue  # a name: the constant
    return found


def second_homes(source: str) -> list[str]:
    return [f"{line}: {name}={value!r}" for line, name, value in literal_defaults(source)
            if name in DEFAULTS and DEFAULTS[name] is not None and _plain(value) == DEFAULTS[name]]  # fmt: skip


def test_no_signature_writes_a_preprocessing_default_again():
    found = [f"{path.relative_to(ROOT.parent)}:{hit}" for path in sorted(ROOT.rglob("*.py")) for hit in second_homes(path.read_text(encoding="utf-8"))]
    assert not found, "take these defaults from their named constant:\n" + "\n".join(found)


@pytest.mark.parametrize("source, hits", [
    ("def f(min_slices: int = 8): pass", 1),
    ("def f(*, spatial_size=(180, 240)): pass", 1),
    ("def f(min_slices=MIN_SLICES, max_slices=None): pass", 0),
    ("def f(min_slices=1): pass", 0),  # another default of the same name is another setting
])
def test_the_check_finds_a_literal_default(source, hits):
    assert len(second_homes(source)) == hits


def test_the_cli_help_names_the_defaults_it_leaves_to_preprocessing():
    from ctmil.cli.main import build_parser

    text = " ".join(build_parser()._subparsers._group_actions[0].choices["preprocess"].format_help().split())
    assert f"min_slices, {DEFAULTS['min_slices']})" in text and f"min_area_fraction, {DEFAULTS['min_area_fraction']})" in text
