"""A run refuses to resume checkpoints made under other settings (issue 25 point 4), as ``ctmil train`` does, also
when it is the bundle's own ``python -m monai.bundle run``; ``resume_other_settings`` continues anyway."""

import json

import pytest

from ctmil.data.bags import BagDataset
from ctmil.train.handlers.checkpoint import SETTINGS_FILE
from tests.train._bags import CHANNELS, make_bags, one_thread, train_tiny  # noqa: F401  (fixture)


@pytest.fixture
def bags():
    return BagDataset(make_bags([0, 1, 0, 1], 1, channels=CHANNELS))


def test_other_settings_are_refused_and_resume_other_settings_continues(tmp_path, bags, one_thread):
    train_tiny(tmp_path, bags, max_epochs=1, use_virtual_bags=False)
    recorded = json.loads((tmp_path / "checkpoints" / SETTINGS_FILE).read_text())
    assert recorded["ssl"] == "absolute" and recorded["optimizer"]["lr"] == 1e-4
    train_tiny(tmp_path, bags, max_epochs=2, use_virtual_bags=False)  # more epochs, same settings: resumes
    with pytest.raises(RuntimeError) as raised:
        train_tiny(tmp_path, bags, max_epochs=3, use_virtual_bags=False, ssl="relative")
    cause = raised.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert "made under other settings (ssl: 'absolute' then, 'relative' now)" in str(cause)
    train_tiny(tmp_path, bags, max_epochs=3, use_virtual_bags=False, ssl="relative", resume_other_settings=True)
