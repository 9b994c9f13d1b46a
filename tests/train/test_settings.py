"""The ablation settings are defined once (ctmil.train.settings) and every user of them reads that table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ctmil.evaluate.report_tables import DESCRIPTIONS, describe
from ctmil.train.settings import SETTINGS, setting_name

PACKAGE = Path(__file__).resolve().parents[2] / "ctmil"


@pytest.mark.parametrize("virtual, ssl, expected", [(False, "none", "A"), (True, "none", "B"), (False, "absolute", "C"),
                                                    (True, "absolute", "D"), (False, "relative", "C-rel"), (True, "relative", "D-rel")])
def test_a_runs_settings_name_the_table_row_that_trains_it(virtual, ssl, expected):
    assert setting_name(virtual, ssl) == expected
    row = SETTINGS[expected]
    assert row.virtual_bags == virtual and (row.ssl is None) == (ssl == "none")


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_reports_describe_every_setting_from_the_table(name):
    assert describe(name) == SETTINGS[name].description
    assert all(DESCRIPTIONS[k] == SETTINGS[k].description for k in "ABCD")


def test_no_second_home_for_the_settings_descriptions():
    """A description written anywhere else in the package would be a second table."""
    pattern = re.compile(r"MIL \+ (both|augmentation|self-supervision)\"")
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())]
    assert found == ["train/settings.py"], found
