"""The model card: ``model.json`` beside a model's weights (``model.pt`` → ``model.json``; any ``NAME.pt`` →
``NAME.json``), the one place it is found, read and written.

It records how to rebuild and use the model: the ``MILNet`` keyword arguments (``network``), the preprocessing
settings, the intensities it was trained on (``input``), the operating point (calibration and threshold), the density
fusion, the training settings and ctmil's version. ``ctmil.train.handlers.model_writer`` writes it when training ends;
``ctmil.infer.model_io`` reads it to load the model; the DICOM results hash it with the weights.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctmil.io.atomic import atomic_write_text

__all__ = ["card_path", "plain", "read_card", "write_card"]

logger = logging.getLogger(__name__)


def card_path(model_path: "str | os.PathLike[str]") -> Path:
    """Where the card of the model at ``model_path`` is: the same name with ``.json``."""
    return Path(model_path).with_suffix(".json")


def read_card(model_path: "str | os.PathLike[str]") -> dict:
    """The card of the model at ``model_path`` as a dict; ``{}`` when there is none, or (with a warning) when it cannot
    be read as a JSON object."""
    path = card_path(model_path)
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring unreadable %s", path.name)
        return {}
    return dict(card) if isinstance(card, Mapping) else {}


def plain(value: Any) -> Any:
    """``value`` as JSON-safe plain values (mappings and sequences kept, anything else as its text)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_card(model_path: "str | os.PathLike[str]", card: Mapping[str, Any]) -> Path:
    """Write the card of the model at ``model_path`` atomically (plain values, indented); returns its path."""
    return atomic_write_text(json.dumps(plain(dict(card)), indent=2), card_path(model_path))
