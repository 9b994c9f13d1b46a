"""Shared fixtures: a tiny analytic chest (HU) and the location of the real public samples."""

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def simple_chest(n_slices: int = 12, size: int = 96, lesion: bool = False) -> np.ndarray:
    """``(S, H, W)`` HU: air, an elliptical body, a couch, two lungs present in the middle slices only.

    Lung i occupies rows 30..70 and columns 14..44 (right) / 52..82 (left) at full size; the first and last
    two slices have none. With ``lesion`` a dense consolidation fills the lateral third of the right lung,
    touching the chest wall.
    """
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    vol = np.full((n_slices, size, size), -1000.0, np.float32)
    body = ((yy - c) / (size * 0.42)) ** 2 + ((xx - c) / (size * 0.47)) ** 2 <= 1
    vol[:, body] = 40.0
    vol[:, size - 4 : size - 2, 4:-4] = 300.0  # couch below the body, separated by air
    for s in range(2, n_slices - 2):
        shrink = 1.0 if 3 < s < n_slices - 4 else 0.6
        for x0 in (29, 67):
            lung = ((yy - 50) / (20 * shrink)) ** 2 + ((xx - x0) / (15 * shrink)) ** 2 <= 1
            vol[s, lung] = -850.0
        if lesion and 3 < s < n_slices - 4:
            vol[s, 35:66, 14:20] = np.where(vol[s, 35:66, 14:20] < -500, 20.0, vol[s, 35:66, 14:20])
    return vol


@pytest.fixture
def chest():
    return simple_chest()


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent (a user's fresh clone)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """``model.pt``: the state dict of a default ``MILNet`` seeded 0 (weights do not matter to what inference writes)."""
    import torch

    from ctmil.networks import MILNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(MILNet().state_dict(), path)
    return path
