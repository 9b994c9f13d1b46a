import json

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import Classifier

from ctmil.networks import MILNet, pairs_for_batch
from ctmil.train.losses import MILSSLLoss
from tests.networks._bags import make_bag, pad_batch

OUT_KEYS = {"logits", "attention", "features", "bag_features", "ssl_abs", "ssl_rel"}


def _batch(bag_specs, fill=0.0):
    """bag_specs: list of (n_slices, dropped indices) -> padded batch with pairs."""
    bags = [make_bag(n, seed=i, drop=drop) for i, (n, drop) in enumerate(bag_specs)]
    batch = pad_batch(bags, fill=fill)
    batch["pairs"], batch["pair_labels"] = pairs_for_batch(batch["position"], batch["slice_index"])
    return bags, batch


SHAPE_CASES = [
    # (bag specs, 4-d input (B, K, H, W)?, use mask?)
    ([(1, ())], False, False),  # one bag, (1, 12, 1, 60, 60)
    ([(2, ())], True, False),  # one bag, (1, 24, 60, 60)
    ([(1, ()), (3, (4, 5)), (2, ())], False, True),  # padded batch of bags of sizes 12, 34, 24
    ([(2, (0,)), (1, ())], True, True),  # padded batch, 4-d input
    ([(1, ()), (1, ())], False, False),  # equal sizes, no mask needed
]


@pytest.mark.parametrize("specs,four_d,use_mask", SHAPE_CASES)
def test_shapes(specs, four_d, use_mask):
    torch.manual_seed(0)
    net = MILNet().eval()
    _, batch = _batch(specs)
    x = batch["patches"][:, :, 0] if four_d else batch["patches"]
    mask = batch["mask"] if use_mask else None
    b, k = batch["mask"].shape
    p = batch["pairs"].shape[1]
    with torch.no_grad():
        out = net.forward_all(x, mask, pairs=batch["pairs"])
        logits = net(x, mask)
        att = net.attention(x, mask)
    assert set(out) == OUT_KEYS
    expected = {
        "logits": (b, 1),
        "attention": (b, k),
        "features": (b, k, 512),
        "bag_features": (b, 512),
        "ssl_abs": (b, k, 12),
        "ssl_rel": (b, p, 8),
    }
    assert {key: tuple(v.shape) for key, v in out.items()} == expected
    torch.testing.assert_close(logits, out["logits"])
    torch.testing.assert_close(att, out["attention"])
    torch.testing.assert_close(out["attention"].sum(1), torch.ones(b))
    assert (out["attention"] >= 0).all()
    assert "ssl_rel" not in net.forward_all(x, mask)


def test_padding_is_invisible():
    """Padded instances get zero attention and zero features; padded content changes nothing; each row of a
    padded batch equals the same bag run alone, unpadded."""
    torch.manual_seed(0)
    net = MILNet().eval()
    specs = [(1, ()), (3, (7,)), (2, (12, 13))]
    bags, batch = _batch(specs, fill=0.0)
    _, batch_noise = _batch(specs, fill=float("nan"))  # NaN padding would poison any use of padded pixels
    mask = batch["mask"]
    with torch.no_grad():
        out = net.forward_all(batch["patches"], mask, batch["pairs"])
        out_noise = net.forward_all(batch_noise["patches"], mask, batch["pairs"])
        for key in OUT_KEYS:
            assert torch.equal(out[key], out_noise[key]), key
        assert torch.all(out["attention"][~mask] == 0)
        assert torch.all(out["features"][~mask] == 0)
        for i, bag in enumerate(bags):
            k = bag["patches"].shape[0]
            single = net.forward_all(bag["patches"][None], pairs=batch["pairs"][i : i + 1])
            torch.testing.assert_close(out["logits"][i], single["logits"][0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out["attention"][i, :k], single["attention"][0], atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(out["features"][i, :k], single["features"][0], atol=1e-5, rtol=1e-4)
            n_pairs = int((batch["pair_labels"][i] >= 0).sum())
            torch.testing.assert_close(
                out["ssl_rel"][i, :n_pairs], single["ssl_rel"][0, :n_pairs], atol=1e-5, rtol=1e-4
            )
        assert torch.all(out["ssl_rel"][batch["pair_labels"] < 0] == 0)


@pytest.mark.parametrize("gated", [True, False])
def test_gated_switch(gated):
    net = MILNet(gated=gated)
    assert net.pool.gated is gated
    assert isinstance(net.pool.u, nn.Linear) is gated
    n_gate = sum(p.numel() for p in net.pool.u.parameters())
    assert n_gate == (512 * 128 + 128 if gated else 0)


@pytest.mark.parametrize("ssl", ["absolute", "relative", "none"])
def test_every_parameter_gets_a_gradient(ssl):
    """Under the total loss every parameter gets a non-zero gradient, except the unused SSL head(s), which get none."""
    torch.manual_seed(0)
    net = MILNet(feature_dim=64, attention_dim=16, ssl_hidden=32)
    _, batch = _batch([(1, ()), (2, (3,))])
    batch["label"] = torch.tensor([1.0, 0.0])
    batch["is_virtual"] = torch.tensor([False, False])
    out = net.forward_all(batch["patches"], batch["mask"], batch["pairs"] if ssl == "relative" else None)
    MILSSLLoss(mu=0.3, ssl=ssl)(out, batch)["total"].backward()
    unused = {"absolute": ("ssl_heads.relative.",), "relative": ("ssl_heads.absolute.",), "none": ("ssl_heads.",)}[ssl]
    n_checked = 0
    for name, param in net.named_parameters():
        if name.startswith(unused):
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
            n_checked += 1
    assert n_checked >= 15


def test_parameter_count():
    # LeNet 470,348 + gated attention 131,456 + classifier 513 + abs head 134,412 + rel head 264,456
    assert sum(p.numel() for p in MILNet().parameters()) == 1_001_185


BAD_ARGS = [
    {"in_channels": 0},
    {"patch_size": 20},
    {"feature_dim": 0},
    {"attention_dim": -3},
    {"gated": 1},
    {"n_positions": 1},
    {"n_directions": 0},
    {"ssl_hidden": 1.5},
    {"dropout": 1.0},
    {"dropout": -0.1},
    {"encoder": "resnet18"},
    {"feature_dim": True},
]


@pytest.mark.parametrize("kwargs", BAD_ARGS)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MILNet(**kwargs)


BAD_INPUTS = [
    # (x shape, mask, pairs, net kwargs)
    ((12, 1, 60, 60, 1, 1), None, None, {}),  # 6-d
    ((12, 60, 60), None, None, {}),  # single bag without batch axis
    ((1, 12, 3, 60, 60), None, None, {}),  # channels != in_channels
    ((1, 12, 60, 60), None, None, {"in_channels": 3}),  # 4-d only for in_channels == 1
    ((2, 4, 1, 60, 60), torch.tensor([[True] * 4, [False] * 4]), None, {}),  # fully masked bag
    ((2, 4, 1, 60, 60), torch.ones(2, 5, dtype=torch.bool), None, {}),  # mask shape
    ((1, 4, 1, 60, 60), None, torch.tensor([[[0, 4]]]), {}),  # pair index past K
    ((1, 4, 1, 60, 60), None, torch.tensor([[0, 1]]), {}),  # pairs not (B, P, 2)
]


@pytest.mark.parametrize("shape,mask,pairs,kwargs", BAD_INPUTS)
def test_bad_inputs(shape, mask, pairs, kwargs):
    net = MILNet(**kwargs)
    with pytest.raises(ValueError):
        net.forward_all(torch.rand(*shape), mask, pairs)


@pytest.mark.parametrize("bag_channels, network", [(1, {"in_channels": 2, "attention_channels": 1}), (2, {}), (3, {"in_channels": 2})])
def test_bags_of_other_channels_are_named_in_the_error(bag_channels, network):
    """A bag made with other preprocessing than the model's (one channel for today's two-channel default, or the
    reverse) fails with a line that says both counts, not a shape error from inside the encoder."""
    net = MILNet(**network)
    with pytest.raises(ValueError, match=rf"the patches have {bag_channels} channel\(s\).*in_channels={net.in_channels}"):
        net(torch.rand(1, 12, bag_channels, 60, 60))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("gated", [True, False])
def test_torchscript_matches_eager(gated):
    torch.manual_seed(0)
    net = MILNet(gated=gated).eval()
    scripted = torch.jit.script(net)
    _, batch = _batch([(1, ()), (2, (5,))])
    x, mask = batch["patches"], batch["mask"]
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, mask), net(x, mask))
        torch.testing.assert_close(scripted(x[:, :, 0], mask), net(x, mask))
        torch.testing.assert_close(scripted(x[:1, :12]), net(x[:1, :12]))
        eager_all = net.forward_all(x, mask, batch["pairs"])
        for key, value in scripted.forward_all(x, mask, batch["pairs"]).items():
            torch.testing.assert_close(value, eager_all[key])


def _sequential_encoder():
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 16))


def _monai_encoder():
    return Classifier(in_shape=(1, 60, 60), classes=32, channels=(4, 8), strides=(2, 2))


@pytest.mark.parametrize("make_encoder,feature_dim", [(_sequential_encoder, 16), (_monai_encoder, 32)])
def test_encoder_swap(make_encoder, feature_dim):
    torch.manual_seed(0)
    encoder = make_encoder()
    net = MILNet(encoder=encoder, feature_dim=feature_dim, attention_dim=8, ssl_hidden=8)
    assert net.encoder is encoder
    _, batch = _batch([(1, ()), (2, ())])
    out = net.forward_all(batch["patches"], batch["mask"], batch["pairs"])
    assert out["features"].shape == (2, 24, feature_dim) and out["logits"].shape == (2, 1)
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with pytest.raises(ValueError, match="feature_dim"):
        MILNet(encoder=make_encoder(), feature_dim=feature_dim + 1)(batch["patches"])


def test_monai_verify_net_in_out(tmp_path):
    """MONAI's bundle tool feeds (1, num_channels, 60, 60): a bag whose instances are the channels."""
    from monai.bundle import verify_net_in_out

    config = {"network_def": {"_target_": "ctmil.networks.MILNet", "gated": True}}
    meta = {
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 36, "spatial_shape": [60, 60], "dtype": "float32"}},
            "outputs": {"pred": {"type": "probabilities", "num_channels": 1, "dtype": "float32"}},
        }
    }
    (tmp_path / "train.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    verify_net_in_out(
        net_id="network_def", meta_file=str(tmp_path / "metadata.json"), config_file=str(tmp_path / "train.json"),
        device="cpu",
    )
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 2
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="channel"):
        verify_net_in_out(
            net_id="network_def", meta_file=str(tmp_path / "metadata.json"),
            config_file=str(tmp_path / "train.json"), device="cpu",
        )
