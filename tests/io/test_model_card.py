"""The model card (ctmil.io.model_card): beside the weights, read and written in one place."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ctmil.io.model_card import card_path, read_card, write_card

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model, card", [("out/model.pt", "out/model.json"), ("best.pt", "best.json"), ("m.ts", "m.json")])
def test_card_path(model, card):
    assert card_path(model) == Path(card)


def test_round_trip_and_what_cannot_be_read(tmp_path, caplog):
    model = tmp_path / "model.pt"
    assert read_card(model) == {}
    write_card(model, {"network": {"gated": True}, "threshold": 0.4, "path": tmp_path, "sizes": (1, 2)})
    assert read_card(model) == {"network": {"gated": True}, "threshold": 0.4, "path": str(tmp_path), "sizes": [1, 2]}
    card_path(model).write_text("[1, 2]")
    assert read_card(model) == {}
    card_path(model).write_text("{not json")
    assert read_card(model) == {} and "ignoring unreadable model.json" in caplog.text


def test_no_other_module_reads_or_writes_the_card():
    found = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "ctmil").rglob("*.py")) if p.name != "model_card.py"
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r'with_suffix\("\.json"\)|with_name\("model\.json"\)|/ "model\.json"', line)
             and re.search(r"model|sidecar|card", line)]  # (a QC record is another JSON beside another file)
    assert not found, found
    json.dumps({})  # the card is JSON: json is the one format
