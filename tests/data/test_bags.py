"""Bag dataset, collation and per-epoch batches."""

from __future__ import annotations

import pytest
import torch

from ctmil.data.bags import BagDataset, collate_bags, load_bag, virtual_bag
from ctmil.data.epochs import EpochBags, epoch_generator
from tests.train._bags import make_bag, make_bags


def test_load_bag_reads_weights_only_file(tmp_path):
    bag = make_bag(0, 1, n_slices=2)
    bag["meta"] = {"spatial_shape": [4, 32, 32], "source": "x"}
    torch.save(bag, tmp_path / "b.pt")
    loaded = load_bag(tmp_path / "b.pt")
    assert torch.equal(loaded["patches"], bag["patches"]) and loaded["case_id"] == "case0"


@pytest.mark.parametrize("broken", [{"position": None}, {"patches": torch.zeros(0, 1, 60, 60)}, {"slice_index": torch.zeros(3)}])
def test_bad_bag_raises(broken):
    bag = make_bag(0, 0)
    bag.update(broken)
    if broken.get("position", 1) is None:
        del bag["position"]
    with pytest.raises(ValueError):
        BagDataset([bag])[0]


def test_files_are_read_once_and_cached(tmp_path):
    paths = []
    for i in range(3):
        torch.save(make_bag(i, i % 2), tmp_path / f"{i}.pt")
        paths.append(tmp_path / f"{i}.pt")
    ds = BagDataset(paths, labels=[1, 0, 1], case_ids=["a", "b", "c"]).cache_all()
    for p in paths:
        p.unlink()  # a second read would fail
    assert [ds[i]["case_id"] for i in range(3)] == ["a", "b", "c"]
    assert [float(ds[i]["label"]) for i in range(3)] == [1.0, 0.0, 1.0]  # the datalist label wins
    assert ds.index_of("b") == 1 and ds.bag_size(2) == 12
    sub = ds.subset([2, 0])
    assert sub.case_ids == ["c", "a"] and sub[0]["patches"] is ds[2]["patches"]


def test_duplicate_case_ids_rejected():
    with pytest.raises(ValueError):
        BagDataset(make_bags([0, 1]), case_ids=["x", "x"])


@pytest.mark.parametrize("sizes", [(1,), (1, 2), (3, 1, 2)])
def test_collate_pads_and_masks(sizes):
    bags = make_bags([1] * len(sizes), list(sizes))
    bags[0]["is_virtual"] = True
    batch = collate_bags(bags)
    k_max = 12 * max(sizes)
    assert batch["patches"].shape == (len(sizes), k_max, 1, 60, 60)
    assert batch["mask"].sum(1).tolist() == [12 * s for s in sizes]
    assert batch["is_virtual"].tolist() == [True] + [False] * (len(sizes) - 1)
    for i, s in enumerate(sizes):
        k = 12 * s
        assert torch.equal(batch["patches"][i, :k], bags[i]["patches"])
        assert (batch["patches"][i, k:] == 0).all() and (batch["position"][i, k:] == -1).all()
        assert (batch["slice_index"][i, k:] == -1).all()
    assert batch["label"].dtype == torch.float32 and batch["case_id"] == [b["case_id"] for b in bags]


def test_virtual_bag_gathers_instances():
    ds = BagDataset(make_bags([1, 1], 1))
    refs = torch.tensor([[1, 3], [0, 0], [1, 11]])
    bag = virtual_bag(ds, refs, "v")
    assert bag["is_virtual"] and float(bag["label"]) == 1.0
    assert torch.equal(bag["patches"][0], ds[1]["patches"][3]) and torch.equal(bag["patches"][1], ds[0]["patches"][0])
    assert bag["position"].tolist() == [3, 0, 11]


@pytest.mark.parametrize("n_bags,batch_size,slots,n_virtual", [(5, 1, 0, 0), (5, 2, 3, 0), (5, 2, 3, 2), (4, 3, 2, 2)])
def test_epoch_bags_fixed_length_and_none_padding(n_bags, batch_size, slots, n_virtual):
    ds = BagDataset(make_bags([1] * n_bags))
    data = EpochBags(ds, batch_size, slots, seed=1)
    data.set_virtual([torch.tensor([[0, 0], [1, 1]])] * n_virtual)
    batches = list(data)
    assert len(batches) == len(data) == -(-(n_bags + slots) // batch_size)
    real = [b for b in batches if b is not None]
    assert sum(len(b["case_id"]) for b in real) == n_bags + n_virtual
    assert sum(int(b["is_virtual"].sum()) for b in real) == n_virtual
    assert all(b is None for b in batches[len(real):])  # unused slots come last


def test_epoch_bags_order_depends_on_seed_and_epoch_only():
    ds = BagDataset(make_bags([0] * 8))

    def order(seed, epoch):
        data = EpochBags(ds, 1, 0, seed=seed)
        data.set_epoch(epoch)
        return [b["case_id"][0] for b in data]

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)
    assert sorted(order(0, 3)) == sorted(ds.case_ids)
    assert torch.equal(torch.randperm(5, generator=epoch_generator(2, 7)), torch.randperm(5, generator=epoch_generator(2, 7)))


def test_epoch_bags_rejects_too_many_virtual_bags():
    data = EpochBags(BagDataset(make_bags([1, 0])), 1, 1)
    with pytest.raises(ValueError):
        data.set_virtual([torch.tensor([[0, 0]])] * 2)
