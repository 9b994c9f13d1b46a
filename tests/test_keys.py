"""The column names have one home, ``ctmil.keys.Columns``: no module of ctmil spells one as a string."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ctmil
from ctmil.keys import Columns

NAMES = {value for name, value in vars(Columns).items() if name.isupper()}
ROOT = Path(ctmil.__file__).parent


def spelled(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every string constant of ``source`` that is a column name; the id given to a config
    parser's ``get_parsed_content`` is a config id (``threshold``), not a column, and is left out."""
    tree = ast.parse(source)
    config_ids = {id(call.args[0]) for call in ast.walk(tree)
                  if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "get_parsed_content" and call.args}  # fmt: skip
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES and id(node) not in config_ids]  # fmt: skip


def test_the_names_are_distinct_and_cover_the_prediction_tables():
    values = [value for name, value in vars(Columns).items() if name.isupper()]
    assert len(values) == len(set(values))
    assert {"case_id", "label", "raw_probability", "probability", "threshold", "prediction"} <= set(values)


def test_no_module_spells_a_column_name():
    found = [f"{path.relative_to(ROOT.parent)}:{line}: {name!r}" for path in sorted(ROOT.rglob("*.py")) if path != ROOT / "keys.py"
             for line, name in spelled(path.read_text(encoding="utf-8"))]  # fmt: skip
    assert not found, "spell column names as ctmil.keys.Columns.<NAME>:\n" + "\n".join(found)


@pytest.mark.parametrize("source", ['x = d["case_id"]', "y = f\"{row['label']}\"", 'cols = ("fold",)', "def f(key='probability'): pass"])
def test_the_check_finds_a_spelled_name(source):
    assert spelled(source)


@pytest.mark.parametrize("source", ['t = parser.get_parsed_content("threshold")', 'x = d[Columns.CASE_ID]', '"""the case_id column"""'])
def test_the_check_leaves_config_ids_keys_and_prose(source):
    assert not spelled(source)
