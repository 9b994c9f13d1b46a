"""Tiny bag files and their datalist CSV, as ``ctmil preprocess`` would write them (bag paths relative to the CSV)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from tests.train._bags import CHANNELS, TINY_NET, make_bags

#: 3 severe, 5 non-severe: two virtual bags per epoch balance the classes
LABELS = (1, 0, 0, 0, 1, 0, 1, 0)
#: the tiny network as ``#``-id overrides of ``network_def``
NET_OVERRIDES = {f"network_def#{k}": v for k, v in TINY_NET.items()}


def write_bag_datalist(root: Path, labels: Sequence[int] = LABELS, channels: int = CHANNELS) -> Path:
    """One 12-patch bag of ``channels`` (the default preprocessing's) per label under ``root/bags`` and
    ``root/datalist.csv`` (``case_id, bag, label``)."""
    (root / "bags").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, bag in enumerate(make_bags(labels, 1, channels=channels)):
        torch.save(bag, root / "bags" / f"{bag['case_id']}.pt")
        rows.append({"case_id": bag["case_id"], "bag": f"bags/{bag['case_id']}.pt", "label": int(labels[i])})
    pd.DataFrame(rows).to_csv(root / "datalist.csv", index=False)
    return root / "datalist.csv"
