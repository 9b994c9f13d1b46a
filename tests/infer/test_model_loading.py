"""Loading model files for inference: weights only, network settings from the weights and model.json, chunked
prediction equal to the network's own forward, clear one-line errors for bad files."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from ctmil.infer.model_io import ModelError, load_model
from ctmil.networks import MILNet



def _bag(k_slices=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(12 * k_slices, 1, 60, 60, generator=g)


@pytest.mark.parametrize("gated", [True, False])
def test_chunked_prediction_equals_forward_all(tmp_path, gated):
    torch.manual_seed(1)
    net = MILNet(gated=gated, attention_dim=32).eval()
    torch.save({"state_dict": net.state_dict(), "network": {"gated": gated, "attention_dim": 32}}, tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt", chunk_size=5)
    assert model.strategy == "parts" and model.network == {**model.network, "gated": gated, "attention_dim": 32}
    x = _bag(3)
    pred = model.predict(x)
    with torch.no_grad():
        ref = net.forward_all(x[None])
    assert pred.logit == pytest.approx(float(ref["logits"]), abs=1e-5)
    assert pred.probability == pytest.approx(float(torch.sigmoid(ref["logits"])), abs=1e-6)
    np.testing.assert_allclose(pred.attention, ref["attention"][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(pred.bag_features, ref["bag_features"][0].numpy(), atol=1e-5)


def test_network_kwargs_from_weights_and_sidecar(tmp_path):
    torch.manual_seed(2)
    net = MILNet(gated=False, attention_dim=16, ssl_hidden=32).eval()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "model.pt")  # DataParallel prefix
    model = load_model(tmp_path / "model.pt")
    assert model.network["gated"] is False and model.network["attention_dim"] == 16 and model.network["ssl_hidden"] == 32
    x = _bag(1)
    with torch.no_grad():
        assert model.predict(x).logit == pytest.approx(float(net(x[None])), abs=1e-5)
    (tmp_path / "model.json").write_text('{"network": {"dropout": 0.25}}')  # ctmil cv writes model.pt + model.json
    assert load_model(tmp_path / "model.pt").network["dropout"] == 0.25


def test_model_files_load_weights_only(tmp_path, monkeypatch):
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.save({"model": MILNet().state_dict(), "optimizer": {"state": {}}, "trainer": {"epoch": 3}}, tmp_path / "checkpoint_3.pt")
    assert load_model(tmp_path / "checkpoint_3.pt").strategy == "parts"  # an Ignite training checkpoint
    assert calls == [True]
    original_save = torch.save
    original_save(nn.Sequential(nn.Linear(2, 1)), tmp_path / "pickled.pt")  # a whole pickled module
    with pytest.raises(ModelError, match="pickled Python objects.*Sequential.*weights only"):
        load_model(tmp_path / "pickled.pt")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "not found"),
        (b"", "cannot read model file"),
        (b"definitely not a checkpoint" * 20, "cannot read model file"),
        ("truncated", "cannot read model file"),
        ("wrong_shape", "do not fit"),
        ("not_weights", "no weights found"),
    ],
)
def test_bad_model_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "m.pt"
    if content == "truncated":
        torch.save(MILNet().state_dict(), path)
        path.write_bytes(path.read_bytes()[: 5000])
    elif content == "wrong_shape":
        state = MILNet().state_dict()
        state["classifier.bias"] = torch.zeros(3)
        torch.save({"state_dict": state, "network": {}}, path)
    elif content == "not_weights":
        torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)
