import pytest
import torch

from ctmil.networks import GatedAttentionPool


def _manual(pool, h):
    """Ilse et al. Eq. 2 / gated variant, written out for one bag h: (K, M)."""
    e = torch.tanh(h @ pool.v.weight.T + pool.v.bias)
    if pool.gated:
        e = e * torch.sigmoid(h @ pool.u.weight.T + pool.u.bias)
    a = torch.softmax((e @ pool.w.weight.T).squeeze(-1), dim=0)
    return a @ h, a


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("k,m,l", [(1, 8, 4), (7, 16, 8), (30, 32, 128)])
def test_single_bag_matches_formula(gated, k, m, l):
    torch.manual_seed(0)
    pool = GatedAttentionPool(m, l, gated=gated)
    h = torch.randn(k, m)
    z, a = pool(h)
    z_ref, a_ref = _manual(pool, h)
    assert z.shape == (m,) and a.shape == (k,)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(a, a_ref)
    assert a.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_gated_and_plain_differ():
    torch.manual_seed(0)
    gated = GatedAttentionPool(16, 8, gated=True)
    plain = GatedAttentionPool(16, 8, gated=False)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if not k.startswith("u.")})
    assert sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters()) == 16 * 8 + 8
    h = torch.randn(2, 10, 16)
    assert not torch.allclose(gated(h)[1], plain(h)[1])


@pytest.mark.parametrize("lengths", [(5, 3), (1, 9, 4), (6, 6)])
def test_masked_batch_matches_single_bags(lengths):
    torch.manual_seed(1)
    pool = GatedAttentionPool(12, 6)
    bags = [torch.randn(n, 12) for n in lengths]
    k_max = max(lengths)
    h = torch.full((len(bags), k_max, 12), float("nan"))  # padding content must never leak
    mask = torch.zeros(len(bags), k_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        h[i, : len(b)] = b
        mask[i, : len(b)] = True
    z, a = pool(h, mask)
    assert z.shape == (len(bags), 12) and a.shape == (len(bags), k_max)
    assert torch.isfinite(z).all() and torch.isfinite(a).all()
    assert torch.all(a[~mask] == 0)
    torch.testing.assert_close(a.sum(1), torch.ones(len(bags)))
    for i, b in enumerate(bags):
        z_i, a_i = pool(b)
        torch.testing.assert_close(z[i], z_i)
        torch.testing.assert_close(a[i, : len(b)], a_i)


@pytest.mark.parametrize(
    "h,mask",
    [
        (torch.randn(2, 3, 8), torch.tensor([[True, False, False], [False, False, False]])),  # empty bag
        (torch.randn(2, 3, 8), torch.ones(2, 4, dtype=torch.bool)),  # mask shape
        (torch.randn(2, 0, 8), None),  # K = 0
        (torch.randn(8), None),  # not (K, M) / (B, K, M)
    ],
)
def test_bad_inputs_raise(h, mask):
    with pytest.raises(ValueError):
        GatedAttentionPool(8, 4)(h, mask)


@pytest.mark.parametrize("kwargs", [{"in_dim": 0}, {"in_dim": 8, "attention_dim": 0}, {"in_dim": 8, "gated": "yes"}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        GatedAttentionPool(**kwargs)
