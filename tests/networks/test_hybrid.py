"""The hybrid bag network (MILNet(n_density=...)): lung-density features beside the attention-pooled embedding."""

import pytest
import torch

from ctmil.data.bags import BagDataset, collate_bags, virtual_bag
from ctmil.infer.model_files import infer_network_kwargs
from ctmil.networks import DensityBranch, MILNet
from ctmil.networks.predict import BagInferer, predict_batch
from ctmil.transforms import DENSITY_FEATURES, density_input

F = len(DENSITY_FEATURES)


def _density(severe: bool, seed: int) -> dict:
    """A bag's meta['density']: a severe lung has its histogram mass in the dense bins."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.rand(24, generator=g) * 0.1
    hist[(16 if severe else 2):(22 if severe else 8)] += 1.0
    hist /= hist.sum()
    return {"histogram": hist.tolist(), "ggo_fraction": 0.3 if severe else 0.05, "consolidation_fraction": 0.4 if severe else 0.02,
            "volume_ml": float("nan")}


def _bag(severe: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    return {"patches": torch.rand(12, 1, 60, 60, generator=g), "position": torch.arange(12), "slice_index": torch.zeros(12, dtype=torch.long),
            "label": torch.tensor(float(severe)), "case_id": f"c{seed}", "meta": {"density": _density(severe, seed)}}


def test_forward_needs_density_and_uses_it():
    net = MILNet(n_density=F).eval()
    x = torch.rand(2, 12, 1, 60, 60)
    with pytest.raises(ValueError, match="lung-density features"):
        net(x)
    d, other = torch.rand(2, F), torch.rand(2, F) + torch.arange(F)
    assert torch.allclose(net(x, density=d), net(x, density=other))  # untrained: the density columns start at zero
    with torch.no_grad():
        net.classifier.weight.normal_()
    a, b = net(x, density=d), net(x, density=other)
    assert a.shape == (2, 1) and not torch.allclose(a, b)
    assert torch.allclose(net.forward_all(x, density=d)["logits"], a)
    assert torch.jit.script(net)(x, None, d).shape == (2, 1)


def test_a_paper_network_ignores_density_and_records_nothing_new():
    net = MILNet().eval()
    x = torch.rand(1, 12, 1, 60, 60)
    assert torch.equal(net(x), net(x, density=torch.rand(1, F)))
    assert "n_density" not in net.hparams and net.density is None


@pytest.mark.parametrize("feature_dim,hidden", [(512, 32), (64, 8)])
def test_kwargs_are_read_back_from_the_weights(feature_dim, hidden):
    kwargs = infer_network_kwargs(MILNet(feature_dim=feature_dim, n_density=F, density_hidden=hidden).state_dict())
    assert kwargs["feature_dim"] == feature_dim and kwargs["n_density"] == F and kwargs["density_hidden"] == hidden
    MILNet(**kwargs).load_state_dict(MILNet(feature_dim=feature_dim, n_density=F, density_hidden=hidden).state_dict())


def test_bags_batches_and_virtual_bags_carry_density():
    data = BagDataset([_bag(True, 0), _bag(False, 1), _bag(True, 2)])
    assert torch.equal(data[0]["density"], density_input(_density(True, 0)))
    batch = collate_bags([data[0], data[1]])
    assert batch["density"].shape == (2, F)
    virtual = virtual_bag(data, torch.tensor([[0, 1], [2, 3]]), "v0")
    assert torch.allclose(virtual["density"], (data[0]["density"] + data[2]["density"]) / 2)
    assert "density" not in collate_bags([{k: v for k, v in data[0].items() if k != "density"}, data[1]])


def test_density_branch_refuses_the_wrong_width():
    with pytest.raises(ValueError):
        DensityBranch(F)(torch.rand(2, F + 1))


def test_the_hybrid_learns_what_only_the_density_says():
    """Patches are noise; the label is in the density features: the hybrid separates the bags, the paper's net cannot."""
    torch.manual_seed(0)
    data = BagDataset([_bag(i % 2 == 0, i) for i in range(16)])
    batch = collate_bags([data[i] for i in range(16)])

    def train(net):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(60):
            out = BagInferer()(batch["patches"], net, batch["mask"], density=batch["density"])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"].squeeze(1), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        prob = predict_batch(net, batch)["prob"]
        return float(prob[batch["label"] == 1].min() - prob[batch["label"] == 0].max())

    hybrid = train(MILNet(feature_dim=32, attention_dim=16, ssl_hidden=16, n_density=F))
    paper = train(MILNet(feature_dim=32, attention_dim=16, ssl_hidden=16))
    assert hybrid > 0 and hybrid > paper  # every severe bag above every other, which noise patches alone don't give


def test_inference_feeds_a_hybrid_its_density():
    from ctmil.infer.model_io import InferenceModel

    model = InferenceModel.wrap(MILNet(n_density=F).eval(), "cpu")
    bag = _bag(True, 3)
    assert 0.0 <= model.predict_bag(bag).probability <= 1.0  # from meta["density"]
    with pytest.raises(ValueError, match="lung-density features"):
        model.predict(bag["patches"])
