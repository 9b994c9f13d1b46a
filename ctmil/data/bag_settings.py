"""The preprocessing a bag file was made with, and the check that a run's bags were made with the run's settings.

``ctmil preprocess`` records its effective settings in each bag (``meta["preprocessing"]``). A run that trains on a
bag datalist builds its network, and records in ``model.json`` the preprocessing inference will use, from its own
settings: bags made otherwise would train one model and have another preprocessing recorded for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ctmil.transforms import preprocessing_settings
from ctmil.transforms.compose import RUN_OPTIONS, complete_recorded_preprocessing

__all__ = ["bag_preprocessing", "check_bag_preprocessing"]

#: settings that do not change a bag: the run's options, and min_slices, which picks the series read
NOT_IN_THE_BAG = (*RUN_OPTIONS, "min_slices")


def bag_preprocessing(path: "str | os.PathLike[str]") -> "dict | None":
    """Every preprocessing setting the bag at ``path`` was made with (:func:`preprocessing_settings` form), settings
    it predates at their old values; ``None`` for a bag that records none (made outside ctmil) or cannot be read
    (it fails where it is read, with its own error)."""
    try:
        recorded = (torch.load(path, map_location="cpu", weights_only=True).get("meta") or {}).get("preprocessing")
    except Exception:
        return None
    if not isinstance(recorded, Mapping):
        return None
    known = preprocessing_settings()
    return preprocessing_settings(**complete_recorded_preprocessing({k: v for k, v in recorded.items() if k in known}))


def check_bag_preprocessing(bags: Iterable["str | os.PathLike[str]"], preprocessing: Mapping[str, Any] | None) -> None:
    """Refuse, in one line, bags made with other preprocessing settings than the run's ``preprocessing``. The first
    bag file's record stands for all (``ctmil preprocess`` makes every bag of a run alike); bags that record none
    are taken as they are.

    Raises:
        ValueError: the settings that differ, both values, and the override that trains on the bags as they are.
    """
    first = next((Path(p) for p in bags if isinstance(p, (str, os.PathLike))), None)
    made = bag_preprocessing(first) if preprocessing is not None and first is not None and first.is_file() else None
    if made is None:
        return
    wanted = preprocessing_settings(**dict(preprocessing))
    differ = [k for k in wanted if k not in NOT_IN_THE_BAG and made[k] != wanted[k]]
    if differ:
        made_text = ", ".join(f"{k}={made[k]!r}" for k in differ)
        want_text = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
        raise ValueError(f"the bags of this datalist were made with {made_text}, this run's preprocessing has {want_text}: "
                         f"train with the bags' settings ({', '.join(f'preprocessing_args#{k}' for k in differ)}) or preprocess the CT again")
