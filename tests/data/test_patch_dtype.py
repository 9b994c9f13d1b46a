"""Float16 bags (issue 13 point 4): kept in their stored dtype by the dataset, its batches and virtual bags (half the
memory), float32 bags unchanged; bags cached as float32 before float16 became the default are made again."""

import pytest
import torch

from ctmil.data.bags import BagDataset, collate_bags, virtual_bag
from ctmil.data.epochs import EpochBags
from ctmil.data.preprocess import cache_key, cached_bag_dataset, preprocess_cases
from ctmil.io.discovery import discover_cases
from ctmil.transforms import preprocessing_settings
from tests.io._hostile import write_series
from tests.train._bags import make_bags

HALF, FULL = torch.float16, torch.float32


def _dataset(dtypes, from_files=None):
    bags = make_bags([1, 0, 1][: len(dtypes)], [1, 2, 3][: len(dtypes)])
    for bag, dtype in zip(bags, dtypes):
        bag["patches"] = bag["patches"].to(dtype)
    if from_files is None:
        return BagDataset(bags), bags
    paths = []
    for i, bag in enumerate(bags):
        torch.save(bag, from_files / f"{i}.pt")
        paths.append(from_files / f"{i}.pt")
    return BagDataset(paths), bags


@pytest.mark.parametrize("from_files", [False, True])
@pytest.mark.parametrize("dtype", [HALF, FULL])
def test_dataset_keeps_the_stored_dtype(tmp_path, from_files, dtype):
    data, bags = _dataset([dtype] * 3, tmp_path if from_files else None)
    for i, bag in enumerate(bags):
        assert data[i]["patches"].dtype == dtype and torch.equal(data[i]["patches"], bag["patches"])
    assert data.cache_all()._cache[2]["patches"].untyped_storage().nbytes() == 36 * 3600 * dtype.itemsize  # 2 bytes a value for float16


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.uint8])
def test_other_dtypes_are_read_as_float32(dtype):
    data, bags = _dataset([dtype])
    assert data[0]["patches"].dtype == FULL and torch.equal(data[0]["patches"], bags[0]["patches"].float())


@pytest.mark.parametrize("dtypes, batch_dtype", [
    ([HALF], HALF), ([FULL], FULL), ([HALF, HALF], HALF), ([HALF, HALF, HALF], HALF), ([HALF, FULL], FULL), ([FULL, HALF, HALF], FULL),
])
def test_batches_keep_one_dtype(dtypes, batch_dtype):
    data, bags = _dataset(dtypes)
    batch = collate_bags([data[i] for i in range(len(dtypes))])
    assert batch["patches"].dtype == batch_dtype
    for i, bag in enumerate(bags):
        k = bag["patches"].shape[0]
        assert torch.equal(batch["patches"][i, :k].float(), bag["patches"].float()) and (batch["patches"][i, k:] == 0).all()
    if len(dtypes) == 1:  # one bag: views of its tensors, not a copy
        assert batch["patches"].data_ptr() == data[0]["patches"].data_ptr()


@pytest.mark.parametrize("dtypes, bag_dtype", [([HALF, HALF], HALF), ([FULL, FULL], FULL), ([HALF, FULL], FULL)])
def test_virtual_bags_keep_one_dtype(dtypes, bag_dtype):
    data, _ = _dataset(dtypes)
    refs = torch.tensor([[1, 3], [0, 0], [1, 23], [0, 11]])
    bag = virtual_bag(data, refs, "v")
    assert bag["patches"].dtype == bag_dtype
    for row, (b, k) in enumerate(refs.tolist()):
        assert torch.equal(bag["patches"][row].float(), data[b]["patches"][k].float())


def test_epoch_batches_and_bags_on_a_device_stay_float16():
    data, bags = _dataset([HALF] * 3)
    loader = EpochBags(data, batch_size=2, virtual_slots=1, seed=0, device="cpu")
    loader.set_virtual([torch.tensor([[0, 1], [2, 5]])])
    batches = [b for b in loader if b is not None]
    assert len(batches) == 2 and all(b["patches"].dtype == HALF for b in batches)
    assert sum(int(b["is_virtual"].sum()) for b in batches) == 1
    assert all(data[i]["patches"].dtype == HALF for i in range(3))  # BagDataset.to keeps the stored dtype


@pytest.fixture
def dicom_case(tmp_path):
    write_series(tmp_path / "in" / "ct")
    (case,) = discover_cases([tmp_path / "in"])
    return case


def test_bags_cached_as_float32_are_made_again_as_float16(tmp_path, dicom_case):
    """``ctmil preprocess`` before float16 was the default wrote float32 bags: the cache key changed, so they are
    rebuilt (not reused); the new ones are then cached."""
    out = tmp_path / "out"
    old = preprocess_cases([dicom_case], out, settings={"patch_dtype": "float32"}, progress=False, montages=False)
    assert list(old["status"]) == ["ok"]
    assert torch.load(old["bag_path"][0], weights_only=True)["patches"].dtype == FULL
    new = preprocess_cases([dicom_case], out, progress=False, montages=False)  # today's defaults
    assert list(new["status"]) == ["ok"] and new["bag_path"][0] == old["bag_path"][0]
    assert torch.load(new["bag_path"][0], weights_only=True)["patches"].dtype == HALF
    assert list(preprocess_cases([dicom_case], out, progress=False, montages=False)["status"]) == ["cached"]


def test_cache_keys_follow_the_effective_patch_dtype(tmp_path, dicom_case):
    full = preprocessing_settings(patch_dtype="float32")
    assert cache_key(dicom_case, {}) == cache_key(dicom_case, {"patch_dtype": "float16"}) != cache_key(dicom_case, full)
    hashes = {}
    for name, settings in {"default": {}, "float16": {"patch_dtype": "float16"}, "float32": {"patch_dtype": "float32"}}.items():
        persistent = cached_bag_dataset([dicom_case], tmp_path / name, settings)
        hashes[name] = persistent.hash_func(persistent.data[0])
    assert hashes["default"] == hashes["float16"] != hashes["float32"]  # PersistentDataset: a changed default re-computes
    assert persistent[0]["patches"].dtype == FULL
