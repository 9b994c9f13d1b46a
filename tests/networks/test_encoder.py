import math

import pytest
import torch

from ctmil.networks import LeNetEncoder
from ctmil.networks.encoder import MaxPool2x2

SHAPE_CASES = [
    # (in_channels, patch_size, feature_dim, n, feature_map_side)
    (1, 60, 512, 3, 4),
    (1, 36, 64, 2, 1),
    (3, 64, 32, 1, 4),
    (2, 100, 16, 2, 9),
]


@pytest.mark.parametrize("in_channels,patch_size,feature_dim,n,side", SHAPE_CASES)
def test_shapes(in_channels, patch_size, feature_dim, n, side):
    net = LeNetEncoder(in_channels, patch_size, feature_dim)
    x = torch.rand(n, in_channels, patch_size, patch_size)
    fmap = net.forward_features(x)
    assert fmap.shape == (n, 48, side, side)
    out = net(x)
    assert out.shape == (n, feature_dim)
    assert torch.equal(out, net.forward_head(fmap))
    assert (out >= 0).all()  # fc-512 + ReLU


def test_paper_architecture_and_he_init():
    torch.manual_seed(0)
    net = LeNetEncoder()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 36, (5, 5), (1, 1), (0, 0)),
        (36, 36, (5, 5), (1, 1), (0, 0)),
        (36, 48, (5, 5), (1, 1), (0, 0)),
    ]
    layers = convs + [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert layers[-1].in_features == 768 and layers[-1].out_features == 512
    for layer in layers:
        assert torch.count_nonzero(layer.bias) == 0
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.15)


def test_channels_last_is_numerically_equivalent():
    torch.manual_seed(0)
    fast = LeNetEncoder(channels_last=True)
    plain = LeNetEncoder(channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert fast.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.trunk[3].weight.is_contiguous()
    x = torch.rand(5, 1, 60, 60)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-4)
    fast.load_state_dict(plain.state_dict())
    assert fast.trunk[3].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kwargs", [{"channels_last": 1}, {"patch_size": 35}, {"in_channels": 0}, {"feature_dim": -1}, {"feature_dim": 2.5}, {"in_channels": True},
               {"chunk_size": 0}, {"chunk_size": 4.0}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        LeNetEncoder(**kwargs)


@pytest.mark.parametrize("channels_last", [True, False])
def test_relu_after_pool_is_bit_identical_to_the_paper_order(channels_last):
    """The trunk runs each ReLU after its max-pool (cheaper); outputs and gradients equal conv-ReLU-pool bit for bit."""
    torch.manual_seed(0)
    net = LeNetEncoder(channels_last=channels_last)
    paper = LeNetEncoder(channels_last=channels_last)
    paper.load_state_dict(net.state_dict())
    t = paper.trunk
    paper.trunk = torch.nn.Sequential(t[0], t[2], t[1], t[3], t[5], t[4], t[6], t[8], t[7])  # conv, ReLU, pool
    assert isinstance(paper.trunk[1], torch.nn.ReLU) and isinstance(net.trunk[1], MaxPool2x2)
    x = torch.rand(40, 1, 60, 60) - 0.4  # negative inputs too, so some windows are all-negative
    for m in (net, paper):
        m(x).square().sum().backward()
    assert torch.equal(net(x), paper(x))
    for a, b in zip(net.parameters(), paper.parameters()):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("shape", [(3, 36, 56, 56), (2, 5, 9, 7), (1, 1, 2, 2), (4, 48, 8, 8)])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("grad", [False, True])
def test_max_pool_2x2_is_max_pool2d(shape, channels_last, grad):
    """Both paths (strided maxima without grad, max_pool2d with it) give max_pool2d's values, floor mode included."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = MaxPool2x2()(x)
    ref = torch.nn.functional.max_pool2d(x.detach(), 2, 2)
    assert torch.equal(out.detach(), ref) and out.shape == ref.shape
    assert out.requires_grad == grad
    if channels_last and shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)  # the next conv keeps its fast layout


@pytest.mark.parametrize("n,chunk", [(150, 48), (97, 32), (48, 48), (10, 4)])
def test_chunked_encoding_matches_one_pass(n, chunk):
    """Chunks change nothing but float rounding: features and every gradient match the one-pass encoder."""
    torch.manual_seed(0)
    chunked = LeNetEncoder(chunk_size=chunk)
    whole = LeNetEncoder(chunk_size=None)
    whole.load_state_dict(chunked.state_dict())
    x = torch.rand(n, 1, 60, 60)
    outs = []
    for m in (chunked, whole):
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(chunked.parameters(), whole.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4 * float(b.grad.abs().max()))  # sums over 150 patches
    with torch.inference_mode():
        torch.testing.assert_close(chunked(x), outs[1], rtol=1e-5, atol=1e-6)
