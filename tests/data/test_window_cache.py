"""The window and slice-sampling settings reach the bag cache key and the model's record (issue 12 points 1-2):
bags made under another setting are not reused, and inference applies the setting training recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from ctmil.bundle import build_workflow
from ctmil.data.preprocess import cache_key
from ctmil.infer.model_io import recorded_preprocessing
from ctmil.transforms import WindowHUd, preprocessing_settings, preprocessing_transforms
from ctmil.transforms.sampling import SampleSlicesd
from tests.bundle._datalist import NET_OVERRIDES, write_bag_datalist

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil" / "configs"
WINDOW = [-1000.0, 400.0]  # not the default lung window


@pytest.fixture
def case(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"not read: only size and mtime enter the key")
    return {"image": str(path), "label": 1.0}


@pytest.mark.parametrize(
    "changed",
    [{"window_hu": None}, {"window_hu": (-1000.0, 400.0)}, {"max_slices": None}, {"max_slices": 8}, {"slab_mm": 5.0}],
)
def test_cache_key_changes_with_each_new_setting(case, changed):
    base = preprocessing_settings()
    assert cache_key(case, base) != cache_key(case, {**base, **changed})


def test_cache_key_follows_the_effective_settings(case):
    """ctmil preprocess passes only some settings: the key is that of the full settings, defaults included."""
    assert cache_key(case, {"min_slices": 8}) == cache_key(case, preprocessing_settings(min_slices=8))


def test_cache_key_changes_with_the_preprocessing_revision(case, monkeypatch):
    """An algorithm change with the same settings (issue 23's lung mask) must not reuse the bags made before it."""
    import ctmil.data.preprocess as preprocess

    before = cache_key(case, {})
    monkeypatch.setattr(preprocess, "PREPROCESSING_REVISION", preprocess.PREPROCESSING_REVISION + 1)
    assert cache_key(case, {}) != before


def test_preprocessing_settings_fill_the_defaults():
    full = preprocessing_settings(min_slices=4)
    assert full["window_hu"] == [-1350.0, 150.0] and full["max_slices"] == 18 and full["slab_mm"] is None
    assert full["min_slices"] == 4 and preprocessing_settings(max_slices=None)["max_slices"] is None
    assert "image_key" not in full and json.loads(json.dumps(full)) == full
    with pytest.raises(TypeError):
        preprocessing_settings(window=(0, 1))


def _chain_settings(chain) -> dict:
    window = next(t for t in chain.transforms if isinstance(t, WindowHUd)).windower.window_hu
    sampler = next(t for t in chain.transforms if isinstance(t, SampleSlicesd)).sampler
    return {"window_hu": window, "max_slices": sampler.max_slices, "slab_mm": sampler.slab_mm}


def test_inference_applies_the_window_training_recorded(tmp_path):
    """train.json with a non-default window and slice bound → model.json → inference.json's ``@preprocessing``."""
    bags = write_bag_datalist(tmp_path / "bags")
    overrides = {"preprocessing_args#window_hu": WINDOW, "preprocessing_args#max_slices": 6, "preprocessing_args#slab_mm": 5.0}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            workflow = ConfigWorkflow(
                config_file=str(CONFIGS / "train.json"), workflow_type="train", datalist=str(bags), bundle_root=str(tmp_path),
                device="$torch.device('cpu')", max_epochs=1, val_fraction=0.25, val_interval=0, tensorboard=False,
                **NET_OVERRIDES, **overrides,
            )
            workflow.initialize()
            workflow.run()
            workflow.finalize()
    finally:
        torch.set_num_threads(threads)
    model = tmp_path / "models" / "model.pt"
    record = json.loads(model.with_suffix(".json").read_text())["preprocessing"]
    assert record["window_hu"] == WINDOW and record["max_slices"] == 6 and record["slab_mm"] == 5.0
    recorded = recorded_preprocessing(model)
    assert tuple(recorded["window_hu"]) == tuple(WINDOW) and recorded["max_slices"] == 6
    inference = build_workflow(["inference.json"], {"ckpt_path": str(model), "output_dir": str(tmp_path / "out"), "inputs": []},
                               workflow_type="infer")
    applied = _chain_settings(inference.parser.get_parsed_content("preprocessing"))
    assert applied == {"window_hu": tuple(WINDOW), "max_slices": 6, "slab_mm": 5.0}
    assert _chain_settings(preprocessing_transforms())["window_hu"] != applied["window_hu"]  # not the defaults


def test_a_bag_says_how_it_was_made(tmp_path):
    """Beside the cache key's hash, the bag records its effective settings and the preprocessing revision."""
    from ctmil.data.preprocess import preprocess_cases
    from ctmil.synthetic.phantoms import make_phantom, write_nifti
    from ctmil.transforms.compose import PREPROCESSING_REVISION

    vol, _, info = make_phantom(0, shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))
    nifti = write_nifti(vol, info["spacing"], tmp_path / "c.nii.gz")
    manifest = preprocess_cases([{"case_id": "c", "image": str(nifti)}], tmp_path / "out", settings={"max_slices": 8},
                                progress=False, montages=False)
    recorded = torch.load(manifest.loc[0, "bag_path"], weights_only=True)["meta"]["preprocessing"]
    assert recorded == {**json.loads(json.dumps(preprocessing_settings(max_slices=8))), "revision": PREPROCESSING_REVISION}
    assert recorded["window_hu"] == [-1350.0, 150.0] and recorded["max_slices"] == 8
