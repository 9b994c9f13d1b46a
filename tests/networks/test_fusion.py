"""The late fusion part (ctmil.networks.fusion): a pass-through until fitted, then the mean of two calibrated logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctmil.infer.model_io import load_model
from ctmil.networks import DensityFusion, MILNet
from ctmil.train.handlers import save_model
from tests.train._bags import TINY_NET

F = 27


def _fit_values(seed: int):
    g = np.random.default_rng(seed)
    return dict(mean=g.normal(size=F), scale=g.uniform(0.5, 2.0, size=F), coef=g.normal(size=F), intercept=float(g.normal()),
                maps=[[g.uniform(0.2, 2.0), g.normal()], [g.uniform(0.2, 2.0), g.normal()]], weights=[1.0, 1.0])


def _net(**kw) -> MILNet:
    torch.manual_seed(0)
    return MILNet(**TINY_NET, n_density=F, density_use="fusion", **kw).eval()


@pytest.mark.parametrize("gated,in_channels", [(True, 1), (False, 1), (True, 2)])
def test_unfitted_fusion_is_exactly_the_paper_network(gated, in_channels):
    torch.manual_seed(0)
    paper = MILNet(**TINY_NET, gated=gated, in_channels=in_channels).eval()
    fused = _net(gated=gated, in_channels=in_channels)
    assert paper.state_dict().keys() <= fused.state_dict().keys()  # the same parts, and the same initial weights
    assert all(torch.equal(v, fused.state_dict()[k]) for k, v in paper.state_dict().items())
    x = torch.rand(3, 7, in_channels, 60, 60)
    density = torch.randn(3, F) * 100
    with torch.no_grad():
        assert torch.equal(fused(x, density=density), paper(x))
        assert torch.equal(fused(x), paper(x))  # nothing is missing before the fit
        assert torch.equal(fused.attention(x), paper.attention(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_fusion_is_the_weighted_mean_of_the_calibrated_logits(seed):
    net = _net()
    v = _fit_values(seed)
    x, density = torch.rand(4, 5, 1, 60, 60), torch.randn(4, F)
    with torch.no_grad():
        mil = net(x, density=density).double().numpy()[:, 0]  # unfitted: the MIL logit
        net.fusion.set_fit(**{**v, "weights": [3.0, 1.0]})
        got = net(x, density=density).double().numpy()[:, 0]
    q = ((density.double().numpy() - v["mean"]) / v["scale"]) @ v["coef"] + v["intercept"]
    (a_m, b_m), (a_q, b_q) = v["maps"]
    np.testing.assert_allclose(got, 0.75 * (a_m * mil + b_m) + 0.25 * (a_q * q + b_q), rtol=1e-4, atol=1e-4)
    assert net.fusion.is_fitted()
    with pytest.raises(ValueError, match="lung-density features"):
        net(x)  # a fitted fusion cannot predict without the bag's density
    net.fusion.reset_()
    assert not net.fusion.is_fitted()


def test_a_nan_density_feature_gives_a_finite_logit():
    net = _net()
    net.fusion.set_fit(**_fit_values(0))
    density = torch.randn(2, F)
    density[0, 3] = float("nan")
    density[1, 4] = float("inf")
    with torch.no_grad():
        assert torch.isfinite(net(torch.rand(2, 5, 1, 60, 60), density=density)).all()


@pytest.mark.parametrize("change,match", [
    ({"mean": np.zeros(F - 1)}, "mean must be 27"),
    ({"scale": np.zeros(F)}, "scale must be > 0"),
    ({"coef": np.full(F, np.nan)}, "coef must be 27 finite"),
    ({"maps": [[1.0, 0.0]]}, "maps must be 2 x 2"),
    ({"weights": [0.0, 0.0]}, "not all zero"),
    ({"weights": [-1.0, 2.0]}, "weights must be >= 0"),
    ({"intercept": float("inf")}, "intercept must be finite"),
])
def test_set_fit_refuses_unusable_values(change, match):
    part = DensityFusion(F)
    before = {k: v.clone() for k, v in part.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        part.set_fit(**{**_fit_values(0), **change})
    assert not part.is_fitted() and all(torch.equal(v, part.state_dict()[k]) for k, v in before.items())  # nothing changed


def test_scripted_fitted_network_matches_eager_and_a_saved_model_predicts_the_same(tmp_path):
    net = _net()
    net.fusion.set_fit(**_fit_values(1))
    x, mask, density = torch.rand(2, 9, 1, 60, 60), torch.ones(2, 9, dtype=torch.bool), torch.randn(2, F)
    mask[1, 6:] = False
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, mask, density), net(x, mask, density))
    loaded = load_model(save_model(net, tmp_path / "m"))  # the weights alone rebuild the fused network
    assert loaded.network["density_use"] == "fusion" and loaded.module.fusion.is_fitted()
    got = loaded.predict(x[0], density[0])
    with torch.no_grad():
        assert got.logit == pytest.approx(float(net(x[:1], density=density[:1])), abs=1e-5)


def test_unknown_density_use_is_refused():
    with pytest.raises(ValueError, match="density_use"):
        MILNet(n_density=F, density_use="late")


def test_a_model_recorded_before_the_fusion_loads_and_predicts_as_trained(tmp_path):
    """model.pt + model.json of the paper's network (no fusion parts, no density arguments recorded)."""
    torch.manual_seed(0)
    paper = MILNet(**TINY_NET).eval()
    path = save_model(paper, tmp_path / "old")
    loaded = load_model(path)
    assert loaded.module.fusion is None and "density_use" not in loaded.network and "n_density" not in loaded.network
    x = torch.rand(14, 1, 60, 60)
    with torch.no_grad():
        expected = float(paper(x[None]))
    assert loaded.predict(x, torch.randn(F)).logit == pytest.approx(expected, abs=1e-6)  # a density given is ignored
