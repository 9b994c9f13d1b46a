"""The model knows what it was trained on (issue 25 point 4): model.json records the training bags' intensity (HU or
lung-window slice images), and inference refuses the other kind with one line before any work, unless
``--allow-input-mismatch``, which predicts it with a warning in its row."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ctmil.cli import main
from ctmil.data.bags import BagDataset
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.run_checks import check_input_intensity
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.train.handlers import save_model
from ctmil.train.handlers.model_writer import trained_intensities
from tests.train._bags import CHANNELS, TINY_NET, make_bags, one_thread, train_tiny  # noqa: F401  (fixture)

GEOMETRY = dict(shape=(16, 64, 64), spacing=(10.0, 5.0, 5.0))


def with_intensity(bags, intensity):
    return [{**b, "meta": {"intensity": intensity}} for b in bags]


@pytest.mark.parametrize("intensities, expected", [(["hu"] * 3, ["hu"]), (["windowed", "hu", "hu"], ["hu", "windowed"]),
                                                   ([None] * 3, [])])
def test_trained_intensities(intensities, expected):
    bags = [{**b, "meta": {"intensity": i}} for b, i in zip(make_bags([0, 1, 0]), intensities)]
    assert trained_intensities(bags) == expected


def test_training_records_the_intensity_in_model_json(tmp_path, one_thread):
    train_tiny(tmp_path, BagDataset(with_intensity(make_bags([0, 1, 0, 1], channels=CHANNELS), "windowed")), max_epochs=1)
    assert json.loads((tmp_path / "model.json").read_text())["input"] == {"intensity": ["windowed"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    vol, _, info = make_phantom(0, **GEOMETRY)
    write_nifti(vol, info["spacing"], root / "ct.nii.gz")
    (root / "png").mkdir()
    for s, image in enumerate(np.clip((vol.astype(np.float32) + 1350) / 1500, 0, 1)):
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "png" / f"s{s:02d}.png")
    return root


@pytest.mark.parametrize("trained_on, name, refused", [
    (("windowed",), "ct.nii.gz", True), (("hu",), "png", True), (("hu",), "ct.nii.gz", False), (("windowed",), "png", False),
    (("hu", "windowed"), "png", False), ((), "png", False),  # a model from before the record: not checked
])
def test_check_input_intensity(inputs, trained_on, name, refused):
    cases = [{"case_id": "c", "image": str(inputs / name)}]
    if refused:
        with pytest.raises(ValueError, match="^c: input is .* but the model was trained on .*--allow-input-mismatch"):
            check_input_intensity(cases, trained_on)
        check_input_intensity(cases, trained_on, allow=True)
        assert "but the model was trained on" in cases[0]["warning"]
    else:
        check_input_intensity(cases, trained_on)
        assert "warning" not in cases[0]


@pytest.fixture(scope="module")
def windowed_model(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(MILNet(**TINY_NET), tmp_path_factory.mktemp("m"), info={"input": {"intensity": ["windowed"]}})


def test_infer_refuses_hu_for_a_slice_image_model_before_work(tmp_path, inputs, windowed_model, capsys):
    code = main(["infer", str(inputs / "ct.nii.gz"), "--model", str(windowed_model), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "but the model was trained on lung-window slice images" in err[0]
    assert not (tmp_path / "o" / "predictions.csv").exists()


def test_allow_input_mismatch_predicts_with_the_warning(tmp_path, inputs, windowed_model):
    predictions, n_failed = run_inference([inputs / "ct.nii.gz"], windowed_model, tmp_path / "o", InferenceOptions(save_maps=False, save_overlays=False),
                                          progress=False, allow_input_mismatch=True)
    row = predictions.iloc[0]
    assert n_failed == 0 and row["status"] == "ok" and row["warning"].count("input is Hounsfield units") == 1


def test_the_bundles_inference_config_refuses_a_mismatch_too(tmp_path, inputs, windowed_model):
    """``python -m monai.bundle run --config_file inference.json`` checks through its ``checked_cases``."""
    from ctmil.bundle import build_workflow

    overrides = {"ckpt_path": str(windowed_model), "inputs": [str(inputs / "ct.nii.gz")], "output_dir": str(tmp_path / "o"),
                 "device": "$torch.device('cpu')", **{f"network_def#{k}": v for k, v in TINY_NET.items()}}
    workflow = build_workflow(["inference.json"], overrides, workflow_type="infer")
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps what a config expression raised
        workflow.parser.get_parsed_content("checked_cases")
    assert "but the model was trained on lung-window slice images" in str(raised.value.__cause__)
