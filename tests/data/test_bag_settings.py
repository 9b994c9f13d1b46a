"""The preprocessing a bag records, and the refusal of bags made with other settings than a run's."""

from __future__ import annotations

import pytest
import torch

from ctmil.data.bag_settings import bag_preprocessing, check_bag_preprocessing
from ctmil.transforms import preprocessing_settings
from tests.train._bags import make_bag


def _bags(tmp_path, record: dict | None, n: int = 2) -> list:
    """``n`` bag files whose meta records ``record`` as ``ctmil preprocess`` writes it (``None``: no meta)."""
    paths = []
    for i in range(n):
        bag = make_bag(i, i % 2)
        if record is not None:
            bag["meta"] = {"preprocessing": record}
        torch.save(bag, tmp_path / f"b{i}.pt")
        paths.append(str(tmp_path / f"b{i}.pt"))
    return paths


@pytest.mark.parametrize("record, run, refused", [
    (preprocessing_settings(patch_norm="minmax"), {}, "patch_norm='minmax'"),  # one-channel bags, a two-channel run
    ({"min_slices": 8}, {}, "patch_norm='minmax'"),  # bags from before the setting existed: min-max, as they were made
    (preprocessing_settings(patch_norm="minmax", max_slices=9), {"max_slices": 9}, "patch_norm='minmax'"),
    (preprocessing_settings(patch_norm="minmax"), {"patch_norm": "minmax"}, None),  # the run asks for the bags' settings
    (preprocessing_settings(), {}, None),
    (preprocessing_settings(allow_implausible_lungs=True, min_slices=3), {}, None),  # a run option; which series are read
    (None, {}, None),  # bags made outside ctmil record nothing: taken as they are
])
def test_bags_made_with_other_preprocessing_are_refused(tmp_path, record, run, refused):
    """A bag datalist trains the network that the run's preprocessing settings build, and the model records those
    settings for inference: bags made otherwise are refused in one line that names the setting and the override."""
    bags, settings = _bags(tmp_path, record), preprocessing_settings(**run)
    if refused is None:
        check_bag_preprocessing(bags, settings)
        return
    with pytest.raises(ValueError, match=refused) as err:
        check_bag_preprocessing(bags, settings)
    assert "\n" not in str(err.value) and "preprocessing_args#patch_norm" in str(err.value)


@pytest.mark.parametrize("record, patch_norm", [
    (preprocessing_settings(), "both"),
    ({"min_slices": 8}, "minmax"),  # recorded before two channels: filled with the value of that day
    (None, None),
])
def test_a_bag_reads_back_the_settings_it_was_made_with(tmp_path, record, patch_norm):
    made = bag_preprocessing(_bags(tmp_path, record, n=1)[0])
    assert (made or {}).get("patch_norm") == patch_norm
    if made is not None:
        assert set(made) == set(preprocessing_settings())
    (tmp_path / "broken.pt").write_bytes(b"not a bag")
    assert bag_preprocessing(tmp_path / "broken.pt") is None and bag_preprocessing(tmp_path / "missing.pt") is None


def test_no_run_settings_or_no_bags_check_nothing(tmp_path):
    bags = _bags(tmp_path, preprocessing_settings(patch_norm="minmax"))
    check_bag_preprocessing(bags, None)
    check_bag_preprocessing([], preprocessing_settings())
    check_bag_preprocessing([str(tmp_path / "gone.pt")], preprocessing_settings())
