"""Models and the patch storage dtype (issue 13 point 4): a model recorded before float16 patches existed is fed
float32 bags, as it was trained; prediction casts float16 patches exactly; both settings run end to end
(CT → bags → training → model.json → inference on the CT)."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctmil.data.bags import BagDataset
from ctmil.data.preprocess import preprocess_cases
from ctmil.infer.batch import run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.model_io import InferenceModel, load_model, recorded_preprocessing
from ctmil.io.discovery import discover_cases
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import write_nifti
from ctmil.train.handlers import save_model
from ctmil.transforms import PATCH_DTYPES, ToBagd, preprocessing_transforms
from ctmil.transforms.tiling import patch_dtype_of
from tests.conftest import simple_chest
from tests.train._bags import TINY_NET, one_thread, train_tiny  # noqa: F401

LEGACY = {"min_area_fraction": 0.2, "spatial_size": [180, 240]}  # a record from before issue 12
ISSUE_12 = {**LEGACY, "window_hu": [-1350.0, 150.0], "max_slices": 18, "slab_mm": None}  # before issue 13


def _chain_dtype(settings: dict) -> torch.dtype:
    chain = preprocessing_transforms(**settings)
    return patch_dtype_of(next(t for t in chain.transforms if isinstance(t, ToBagd)).patch_dtype)


@pytest.mark.parametrize("record, expected", [
    (LEGACY, "float32"), (ISSUE_12, "float32"), ({**ISSUE_12, "patch_dtype": "float16"}, "float16"),
    ({**ISSUE_12, "patch_dtype": "float32"}, "float32"),
])
def test_the_recorded_patch_dtype_is_applied(tmp_path, record, expected):
    path = save_model(MILNet(**TINY_NET), tmp_path, info={"preprocessing": record})
    assert load_model(path).preprocessing["patch_dtype"] == expected
    settings = recorded_preprocessing(path)
    assert settings["patch_dtype"] == expected and _chain_dtype(settings) == PATCH_DTYPES[expected]


@pytest.mark.parametrize("network, patch_norm", [({}, "minmax"), ({"in_channels": 2, "attention_channels": 1}, "both")])
def test_a_bare_state_dict_gets_the_defaults_and_its_channels(tmp_path, network, patch_norm):
    """Weights alone record no preprocessing: today's defaults, with the normalisation that gives the weights' channels."""
    torch.save(MILNet(**TINY_NET, **network).state_dict(), tmp_path / "weights.pt")
    settings = recorded_preprocessing(tmp_path / "weights.pt")
    assert settings == {"patch_norm": patch_norm} and _chain_dtype(settings) == torch.float16


class _LogitsOnly(nn.Module):
    """A model with a ``forward`` only (the ``logits`` strategy): float32 weights, so float16 inputs would fail."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, K, 1, P, P) -> (B, 1)
        return self.conv(x.flatten(0, 1)).mean().reshape(1, 1)


@pytest.mark.parametrize("network", ["milnet", "torchscript", "logits"])
def test_predict_casts_float16_patches_exactly(network):
    torch.manual_seed(0)
    module = {"milnet": lambda: MILNet(**TINY_NET), "torchscript": lambda: torch.jit.script(MILNet(**TINY_NET)),
              "logits": _LogitsOnly}[network]()
    model = InferenceModel.wrap(module)
    patches = torch.rand(24, 1, 60, 60, generator=torch.Generator().manual_seed(1))
    half, upcast, full = (model.predict(p) for p in (patches.half(), patches.half().float(), patches))
    assert half.logit == upcast.logit and half.probability == upcast.probability
    assert half.logit == pytest.approx(full.logit, abs=1e-3)
    if half.attention is not None:
        assert (half.attention == upcast.attention).all()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small NIfTI CTs (two with a consolidation, labelled severe) as discovered cases."""
    root = tmp_path_factory.mktemp("cohort")
    for i in range(4):
        write_nifti(simple_chest(n_slices=12, lesion=bool(i % 2)).astype(np.int16), (5.0, 1.5, 1.5), root / f"ct{i}.nii.gz")
    cases = discover_cases([root], labels={f"ct{i}": float(i % 2) for i in range(4)})
    assert sorted(c["case_id"] for c in cases) == ["ct0", "ct1", "ct2", "ct3"]
    return root, cases


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("patch_dtype", ["float32", "float16"])
def test_each_patch_dtype_runs_end_to_end(tmp_path, cohort, patch_dtype):
    root, cases = cohort
    manifest = preprocess_cases(cases, tmp_path / "pre", settings={"patch_dtype": patch_dtype}, progress=False, montages=False)
    assert set(manifest["status"]) == {"ok"}
    data = BagDataset(manifest["bag_path"].tolist(), labels=manifest["label"].astype(float).tolist(),
                      case_ids=manifest["case_id"].tolist())
    assert all(data[i]["patches"].dtype == PATCH_DTYPES[patch_dtype] for i in range(len(data)))
    train_tiny(tmp_path / "model", data, **{"preprocessing_args#patch_dtype": patch_dtype})
    model = tmp_path / "model" / "model.pt"
    assert json.loads(model.with_suffix(".json").read_text())["preprocessing"]["patch_dtype"] == patch_dtype
    table, n_failed = run_inference([root / "ct1.nii.gz"], model, tmp_path / "out", InferenceOptions(save_maps=False, save_overlays=False), progress=False)
    assert n_failed == 0 and list(table["status"]) == ["ok"]
    expected = load_model(model).predict_bag(data[data.index_of("ct1")]).probability  # the training bag (and its density)
    assert float(table["probability"][0]) == pytest.approx(expected, abs=6e-7)  # written rounded to 6 decimals
