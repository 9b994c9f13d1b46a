"""The ablation settings of paper Table IV, defined once (issue 20): what each letter trains, and what it is called.

``A`` MIL only, ``B`` + virtual bags (the paper's "augmentation"), ``C`` + self-supervision, ``D`` both; the ``-rel``
variants use the relative patch-location task (paper Table VI). ``ctmil cv`` trains each setting from this table,
the reports describe them from it, and ``train.json`` names a trained model's setting with :func:`setting_name`.
The quantitative baseline ``Q`` is not a training setting: it lives with its model (:mod:`ctmil.stats.quantitative`).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

__all__ = ["SETTINGS", "Setting", "setting_name"]


class Setting(NamedTuple):
    """One training setting: its description, whether virtual bags join training, and its SSL task (``None``: no
    SSL; ``"cv"``: the cross-validation's ``cv#ssl_task``; else the task)."""

    description: str
    virtual_bags: bool
    ssl: Optional[str]


#: setting -> (description, virtual bags, SSL task)
SETTINGS: Dict[str, Setting] = {
    "A": Setting("MIL only", False, None),
    "B": Setting("MIL + augmentation", True, None),
    "C": Setting("MIL + self-supervision", False, "cv"),
    "D": Setting("MIL + both", True, "cv"),
    "C-rel": Setting("MIL + self-supervision (relative patch location)", False, "relative"),
    "D-rel": Setting("MIL + both (relative patch location)", True, "relative"),
}


def setting_name(use_virtual_bags: bool, ssl: str) -> str:
    """The letter of a training run's settings (``ssl``: ``"none"``, ``"absolute"`` or ``"relative"``): ``"A"``..``"D"``,
    ``"C-rel"``/``"D-rel"`` for the relative task."""
    letter = "ABCD"[int(bool(use_virtual_bags)) + 2 * int(ssl != "none")]
    return letter + ("-rel" if ssl == "relative" else "")
