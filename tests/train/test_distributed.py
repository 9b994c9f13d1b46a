"""Data-parallel training through the one trainer: 2 gloo ranks on CPU see disjoint shards, match the
single-process run with the combined batch, gather the bag metrics, and resume from their checkpoint."""

import pytest

pytestmark = pytest.mark.xdist_group("distributed")  # one worker: the resume test reuses an uninterrupted run
import torch

from ctmil.data.bags import BagDataset
from ctmil.data.epochs import EpochBags
from ctmil.train.distributed import free_port, run_distributed
from ctmil.networks import MILNet
from ctmil.transforms import DENSITY_FEATURES
from tests.train._bags import CHANNEL_NET, CHANNELS, TINY_NET, make_bags, tiny_overrides, train_tiny


@pytest.mark.parametrize("n_items,world", [(8, 2), (7, 2), (9, 4), (5, 1)])
def test_shards_are_disjoint_cover_everything_and_have_equal_length(n_items, world):
    data = BagDataset(make_bags([i % 2 for i in range(n_items)]))
    shards = [EpochBags(data, 1, 0, seed=3, rank=r, world_size=world) for r in range(world)]
    orders = []
    for epoch in (1, 2):
        for s in shards:
            s.set_epoch(epoch)
        seen = [s.shard() for s in shards]
        orders.append(seen)
        assert len({len(x) for x in seen}) == 1 and len({len(s) for s in shards}) == 1
        flat = [j for x in seen for j in x]
        assert set(flat) == set(range(n_items))
        assert len(flat) - len(set(flat)) == (-n_items) % world  # only the padding repeats
        if n_items % world == 0:
            assert all(not set(a) & set(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
    assert orders[0] != orders[1]  # a fresh shared order every epoch, like DistributedSampler.set_epoch


@pytest.mark.parametrize("rank,world", [(-1, 2), (2, 2), (0, 0)])
def test_bad_rank(rank, world):
    with pytest.raises(ValueError):
        EpochBags(BagDataset(make_bags([0, 1])), rank=rank, world_size=world)


DATA = BagDataset(make_bags([0, 1, 0, 1, 0, 1, 1, 0], n_slices=2, channels=CHANNELS))


def _distributed(out, **changes):
    overrides = tiny_overrides(out, **{"train#dataset": DATA, "max_epochs": 3, "seed": 5, **changes})
    overrides.pop("device")  # run_distributed picks the device with the backend (gloo: CPU)
    run_distributed(["train.json"], overrides, nproc=2)
    return torch.load(out / "model.pt", weights_only=True)


RUNS: dict = {}


@pytest.mark.parametrize("virtual,ssl,tolerance", [(False, "absolute", 0.02), (True, "none", 0.15)])
def test_two_gloo_ranks_match_one_process_with_the_combined_batch(tmp_path, virtual, ssl, tolerance):
    """Rank r trains on items r, r+2, ... of the shared epoch order and DDP averages the gradients: the same
    updates as one process with batches of 2. With virtual bags the SSL term is left out: a rank holding only a
    virtual bag contributes no SSL, which halves that batch's SSL weight compared with one process — a property
    of data parallelism, not something to test for equality. Virtual bags also hinge on ``prob >= 0.5``
    decisions of a barely trained net, which float summation order can flip, hence the looser bound there (a
    rank training on the wrong shard, or unsynchronised, misses both bounds)."""
    settings = {"ssl": ssl, "use_virtual_bags": virtual, "train#virtual_bags#start_epoch": 1, "train#virtual_bags#n_bags": 2}
    single_wf = train_tiny(tmp_path / "single", DATA, max_epochs=3, seed=5, **{"train#dataloader#batch_size": 2}, **settings)
    single = single_wf.parser.get_parsed_content("network_def").state_dict()
    dist = _distributed(tmp_path / "dist", **settings)
    RUNS[(virtual, ssl)] = (dist, settings)
    torch.manual_seed(5)  # what train.json's set_determinism(seed=5) does before the network is built
    start = MILNet(**TINY_NET, **CHANNEL_NET, n_density=len(DENSITY_FEATURES), density_use="fusion").state_dict()  # train.json's default
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    gap = max(float((dist[k] - single[k]).abs().max()) for k in single)
    assert moved > 1e-4, "training changed nothing: the comparison would be empty"
    assert gap < tolerance * moved, (gap, moved)


def test_distributed_run_resumes_from_its_checkpoint(tmp_path):
    """An interrupted 2-rank run (absolute SSL on) continues from rank 0's checkpoint on every rank and
    ends where the uninterrupted run ended."""
    full, settings = RUNS.get((False, "absolute")) or (None, {"ssl": "absolute", "use_virtual_bags": False})
    if full is None:  # run alone (e.g. with -k): make the uninterrupted run here
        full = _distributed(tmp_path / "full", **settings)
    _distributed(tmp_path / "resumed", **{**settings, "max_epochs": 1})
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint_1.pt").exists()
    resumed = _distributed(tmp_path / "resumed", **settings)  # max_epochs 3: every rank reads rank 0's checkpoint
    for k in full:
        assert torch.allclose(full[k], resumed[k], atol=1e-6), k
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint_*")) == ["checkpoint_3.pt"]


def _metrics_worker(local_rank, out):
    import ignite.distributed as idist

    from ctmil.train.metrics import BagMetrics

    metric = BagMetrics()
    rank = idist.get_rank()
    probs = torch.tensor([0.9, 0.2]) if rank == 0 else torch.tensor([0.4, 0.7])
    labels = torch.tensor([1.0, 0.0]) if rank == 0 else torch.tensor([1.0, 0.0])
    metric.update((probs, labels))
    result = metric.compute()
    if rank == 0:
        torch.save(result, out)


def test_bag_metrics_gather_every_rank(tmp_path):
    import ignite.distributed as idist

    from ctmil.stats.metrics import binary_metrics

    with idist.Parallel(backend="gloo", nproc_per_node=2, master_addr="127.0.0.1", master_port=free_port()) as parallel:
        parallel.run(_metrics_worker, str(tmp_path / "m.pt"))
    got = torch.load(tmp_path / "m.pt", weights_only=True)
    expected = binary_metrics(torch.tensor([0.9, 0.2, 0.4, 0.7]), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert got == pytest.approx(expected) and got["auc"] == pytest.approx(0.75)  # rank 0 alone would say 1.0
