import math

import pytest
import torch

from ctmil.train.losses import MILSSLLoss

LN2, LN4, LN8 = math.log(2), math.log(4), math.log(8)
HALF = [math.log(3), 0.0, 0.0, 0.0]  # 4-class logits giving p(class 0) = 1/2, CE = ln 2


def _abs_case(ssl_logits, position, slice_index, mask=None, is_virtual=None, label=None, logits=None):
    b = len(position)
    outputs = {
        "logits": torch.tensor(logits if logits is not None else [[0.0]] * b),
        "ssl_abs": torch.tensor(ssl_logits, requires_grad=True),
    }
    batch = {
        "label": torch.tensor(label if label is not None else [1.0] * b),
        "position": torch.tensor(position),
        "slice_index": torch.tensor(slice_index),
    }
    if mask is not None:
        batch["mask"] = torch.tensor(mask)
    if is_virtual is not None:
        batch["is_virtual"] = torch.tensor(is_virtual)
    return outputs, batch


Z4 = [0.0] * 4
ABSOLUTE_CASES = [
    # (name, case kwargs, reduction, expected ssl)
    ("one slice, 3 items", dict(ssl_logits=[[Z4, Z4, Z4]], position=[[0, 1, 2]], slice_index=[[7, 7, 7]]), "slice", 3 * LN4),
    ("two slices", dict(ssl_logits=[[Z4, Z4, Z4]], position=[[0, 1, 2]], slice_index=[[7, 7, 8]]), "slice", 1.5 * LN4),
    ("item mean", dict(ssl_logits=[[Z4, Z4, Z4]], position=[[0, 1, 2]], slice_index=[[7, 7, 8]]), "item", LN4),
    (
        "mixed CE values",
        dict(ssl_logits=[[HALF, Z4]], position=[[0, 3]], slice_index=[[1, 1]]),
        "slice",
        LN2 + LN4,
    ),
    (
        "padding by mask and by position -1",
        dict(
            ssl_logits=[[Z4, HALF, Z4, Z4]],
            position=[[0, 0, 2, -1]],
            slice_index=[[1, 1, 2, -1]],
            mask=[[True, True, False, False]],
        ),
        "slice",
        LN4 + LN2,
    ),
    (
        "mean of per-bag values",
        dict(ssl_logits=[[Z4, Z4], [HALF, Z4]], position=[[0, 1], [0, -1]], slice_index=[[1, 2], [3, -1]]),
        "slice",
        (LN4 + LN2) / 2,
    ),
    (
        "virtual bag excluded",
        dict(
            ssl_logits=[[Z4, Z4], [HALF, HALF]],
            position=[[0, 1], [0, 0]],
            slice_index=[[1, 1], [3, 4]],
            is_virtual=[False, True],
        ),
        "slice",
        2 * LN4,
    ),
    (
        "virtual bag excluded, item mean",
        dict(ssl_logits=[[Z4, HALF], [HALF, HALF]], position=[[0, 0], [0, 0]], slice_index=[[1, 2], [3, 4]], is_virtual=[False, True]),
        "item",
        (LN4 + LN2) / 2,
    ),
]


@pytest.mark.parametrize("name,case,reduction,expected", ABSOLUTE_CASES, ids=[c[0] for c in ABSOLUTE_CASES])
def test_absolute_known_values(name, case, reduction, expected):
    outputs, batch = _abs_case(**case)
    out = MILSSLLoss(mu=0.3, ssl="absolute", ssl_reduction=reduction)(outputs, batch)
    assert set(out) == {"mil", "ssl", "total"}
    assert out["mil"].item() == pytest.approx(LN2)  # logit 0 for every bag
    assert out["ssl"].item() == pytest.approx(expected, rel=1e-6)
    assert out["total"].item() == pytest.approx((LN2 + 0.3 * expected) / 1.3, rel=1e-6)


def test_only_valid_items_of_real_bags_get_gradient():
    outputs, batch = _abs_case(
        ssl_logits=[[Z4, Z4, Z4], [Z4, Z4, Z4]],
        position=[[0, 1, -1], [0, 1, 2]],
        slice_index=[[4, 4, -1], [4, 4, 4]],
        mask=[[True, True, False], [True, True, True]],
        is_virtual=[False, True],
    )
    MILSSLLoss(ssl="absolute")(outputs, batch)["total"].backward()
    grad_norm = outputs["ssl_abs"].grad.abs().sum(-1)  # (B, K)
    assert torch.equal(grad_norm > 0, torch.tensor([[True, True, False], [False, False, False]]))


def test_no_real_items_gives_zero_with_grad_path():
    outputs, batch = _abs_case(
        ssl_logits=[[HALF, Z4]], position=[[0, 1]], slice_index=[[1, 1]], is_virtual=[True], logits=[[2.0]]
    )
    out = MILSSLLoss(mu=0.3, ssl="absolute")(outputs, batch)
    assert out["ssl"].item() == 0.0 and out["ssl"].requires_grad
    assert out["total"].item() == pytest.approx(out["mil"].item() / 1.3)
    out["total"].backward()
    assert torch.count_nonzero(outputs["ssl_abs"].grad) == 0


def test_relative_known_values():
    z8 = [0.0] * 8
    outputs = {"logits": torch.tensor([[0.0], [0.0]]), "ssl_rel": torch.tensor([[z8] * 4, [z8] * 4], requires_grad=True)}
    batch = {
        "label": torch.tensor([0.0, 1.0]),
        "slice_index": torch.tensor([[5, 5, 5, 6, 6], [1, 1, 1, 1, 1]]),
        "position": torch.tensor([[5, 4, 6, 5, 6], [5, 6, 4, 1, 2]]),
        "pairs": torch.tensor([[[0, 1], [0, 2], [3, 4], [-1, -1]], [[0, 1], [1, 0], [0, 2], [0, 3]]]),
        "pair_labels": torch.tensor([[3, 4, 4, -1], [4, 3, 3, 1]]),
        "is_virtual": torch.tensor([False, True]),
    }
    out = MILSSLLoss(mu=1.0, ssl="relative")(outputs, batch)
    # real bag 0: 3 valid pairs (two in slice 5, one in slice 6) -> 3 ln 8 / 2 slices; bag 1 is virtual
    assert out["ssl"].item() == pytest.approx(1.5 * LN8)
    assert out["total"].item() == pytest.approx((LN2 + 1.5 * LN8) / 2)
    item = MILSSLLoss(mu=1.0, ssl="relative", ssl_reduction="item")(outputs, batch)
    assert item["ssl"].item() == pytest.approx(LN8)
    with pytest.raises(ValueError, match="ssl_rel"):
        MILSSLLoss(ssl="relative")({"logits": outputs["logits"]}, batch)


@pytest.mark.parametrize("mu", [0.0, 0.3, 1.0, 4.0])
def test_mu_weighting(mu):
    outputs, batch = _abs_case(
        ssl_logits=[[HALF, HALF]], position=[[0, 0]], slice_index=[[1, 2]], logits=[[math.log(3)]], label=[1.0]
    )
    mil = -math.log(3 / 4)  # sigmoid(ln 3) = 3/4
    out = MILSSLLoss(mu=mu, ssl="absolute")(outputs, batch)
    assert out["mil"].item() == pytest.approx(mil)
    assert out["ssl"].item() == pytest.approx(LN2)
    assert out["total"].item() == pytest.approx((mil + mu * LN2) / (1 + mu))
    none = MILSSLLoss(mu=mu, ssl="none")(outputs, batch)
    assert none["total"].item() == pytest.approx(mil) and none["ssl"].item() == 0.0


@pytest.mark.parametrize(
    "kwargs", [{"mu": -0.1}, {"mu": True}, {"mu": float("nan")}, {"ssl": "rotation"}, {"ssl_reduction": "sum"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MILSSLLoss(**kwargs)


@pytest.mark.parametrize(
    "change",
    [
        {"label": torch.tensor([-1.0])},  # unknown label
        {"label": torch.tensor([1.0, 0.0])},  # wrong B
        {"position": torch.tensor([[0, 7]])},  # target >= number of classes (4)
        {"position": torch.tensor([[0, 1, 2]])},  # shape mismatch with ssl_abs
    ],
)
def test_bad_batches(change):
    outputs, batch = _abs_case(ssl_logits=[[Z4, Z4]], position=[[0, 1]], slice_index=[[1, 1]])
    batch.update(change)
    with pytest.raises(ValueError):
        MILSSLLoss(ssl="absolute")(outputs, batch)
