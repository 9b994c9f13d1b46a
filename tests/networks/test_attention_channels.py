"""MILNet(attention_channels=c): attention scored on the first c channels of each patch only."""

from __future__ import annotations

import pytest
import torch

from ctmil.infer.model_io import load_model
from ctmil.networks import GatedAttentionPool, MILNet
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET


def _net(gated: bool = True) -> MILNet:
    torch.manual_seed(0)
    return MILNet(**TINY_NET, in_channels=2, attention_channels=1, gated=gated).eval()


@pytest.mark.parametrize("gated", [True, False])
def test_attention_sees_only_the_first_channel_and_the_score_sees_both(gated):
    net = _net(gated)
    x = torch.rand(2, 9, 2, 60, 60)
    other = x.clone()
    other[:, :, 1] = torch.rand(2, 9, 60, 60)  # a different window channel
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        assert torch.equal(net.attention(x, mask), net.attention(other, mask))
        assert torch.equal(net.forward_all(x, mask)["attention"], net.forward_all(other, mask)["attention"])
        assert not torch.allclose(net(x, mask), net(other, mask))
        chunked = net.forward_all(x, mask, chunk_size=4)
        torch.testing.assert_close(chunked["logits"], net(x, mask))


def test_scripted_and_saved_networks_give_the_same_outputs(tmp_path):
    net = _net()
    x = torch.rand(1, 14, 2, 60, 60)
    scripted = torch.jit.script(net)
    loaded = load_model(save_model(net, tmp_path / "m"))
    assert loaded.network["attention_channels"] == 1 and loaded.module.attention_encoder is not None
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        torch.testing.assert_close(scripted.attention(x), net.attention(x))
        got = loaded.predict(x[0])
        assert got.logit == pytest.approx(float(net(x)), abs=1e-5)
        torch.testing.assert_close(torch.as_tensor(got.attention), net.attention(x)[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("channels, in_channels", [(0, 2), (2, 2), (True, 2), (1, 1), (1.0, 2)])
def test_attention_channels_must_be_fewer_than_the_input_channels(channels, in_channels):
    with pytest.raises(ValueError, match="attention_channels"):
        MILNet(in_channels=in_channels, attention_channels=channels)


def test_pooling_scores_on_g_and_sums_h():
    pool = GatedAttentionPool(8, 4)
    h, g = torch.rand(2, 5, 8), torch.rand(2, 5, 8)
    z, a = pool(h, None, g)
    torch.testing.assert_close(a, torch.softmax(pool.scores(g), dim=1))
    torch.testing.assert_close(z, torch.bmm(a.unsqueeze(1), h).squeeze(1))
    assert torch.equal(pool(h)[1], pool(h, None, h)[1])
    with pytest.raises(ValueError, match="g must have h's shape"):
        pool(h, None, g[:, :3])
