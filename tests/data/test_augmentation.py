"""Augmentation of the training bags (train.json's ``augment``): MONAI's random transforms through EpochBags,
seeded by (seed, epoch, item) so that a resumed run and every rank see the same bags."""

from __future__ import annotations

import pytest
import torch

from ctmil.bundle import build_workflow
from ctmil.data.bags import BagDataset
from ctmil.data.epochs import EpochBags
from tests.train._bags import make_bags, tiny_overrides


@pytest.fixture(scope="module")
def augmentation():
    """The augmentation train.json builds with ``augment: true``."""
    workflow = build_workflow(["train.json"], tiny_overrides("/tmp/unused", augment=True, **{"train#dataset": BagDataset(make_bags([1, 0]))}))
    return workflow.parser.get_parsed_content("augmentation")


def _epoch(loader: EpochBags, epoch: int):
    loader.set_epoch(epoch)
    return [b for b in loader if b is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_same_seed_and_epoch_give_the_same_bags(augmentation, dtype):
    bags = make_bags([1, 0, 1, 0, 0, 1], n_slices=2)
    for bag in bags:
        bag["patches"] = bag["patches"].to(dtype)
    plain = EpochBags(BagDataset(bags), seed=3)
    runs = [_epoch(EpochBags(BagDataset(bags), seed=3, transform=augmentation), e) for e in (1, 1, 2)]
    originals = _epoch(plain, 1)
    for a, b, o in zip(runs[0], runs[1], originals):
        assert type(a["patches"]) is torch.Tensor and a["patches"].dtype == dtype  # a plain tensor of the stored dtype
        assert torch.equal(a["patches"], b["patches"]) and a["case_id"] == o["case_id"]
        assert torch.equal(a["position"], o["position"]) and torch.equal(a["label"], o["label"])
    changed = [not torch.equal(a["patches"], o["patches"]) for a, o in zip(runs[0], originals)]
    assert any(changed)  # some bags were augmented ...
    assert any(not torch.equal(a["patches"], c["patches"]) for a, c in zip(runs[0], runs[2]))  # ... differently next epoch


def test_a_flip_mirrors_each_patch_and_keeps_its_values(augmentation):
    bag = make_bags([1])[0]
    loader = EpochBags(BagDataset([bag]), seed=0, transform=augmentation.transforms[0])  # the flip alone
    seen = set()
    for epoch in range(1, 9):
        out = _epoch(loader, epoch)[0]["patches"][0]
        flipped = torch.equal(out, bag["patches"].flip(-1))
        assert flipped or torch.equal(out, bag["patches"])
        seen.add(flipped)
    assert seen == {True, False}  # p = 0.5: both happen within 8 epochs for this seed
