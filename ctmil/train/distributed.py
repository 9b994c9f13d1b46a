"""Data-parallel training across processes and machines with ``torch.distributed`` (via ``ignite.distributed``).

Every rank holds the whole (small, cached) bag dataset and the same model. Per epoch all ranks draw the same
permutation of real + virtual bags (:func:`ctmil.data.bags.epoch_generator`) and each takes an interleaved,
equal-length shard of it, like ``DistributedSampler``. Gradients are averaged across ranks right before each
optimiser step (one flat all-reduce), so ``W`` ranks with batch size ``b`` train like one process with batch
size ``W·b``. Virtual-bag pools are all-gathered before bags are drawn from them, with the same seeded
generator on every rank, so all ranks build identical virtual bags. Checkpoints, TensorBoard and progress are
written by rank 0 only; ``BagMetrics`` (an Ignite ``EpochMetric``) gathers predictions across ranks.

Launch with ``torchrun --nproc_per_node=N -m ctmil.train.distributed ...`` or programmatically with
:func:`fit_distributed` (``ignite.distributed.Parallel``; ``gloo`` on CPU, ``nccl`` on GPUs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterator, List, Optional

import ignite.distributed as idist
import torch

from ctmil.data.bags import BagDataset, EpochBags, collate_bags, epoch_generator
from ctmil.train.handlers.virtual_bags import VirtualBagHandler
from ctmil.train.trainer import Training, TrainConfig, build_training, run_training


class ShardedEpochBags(EpochBags):
    """:class:`EpochBags` of one rank: the shared epoch order, items ``rank, rank + W, ...``.

    Shards are padded by repeating the first items of the order (as ``DistributedSampler`` does) so that every
    rank runs the same number of steps, which the gradient all-reduce needs.
    """

    def __init__(self, dataset: BagDataset, batch_size: int = 1, virtual_slots: int = 0, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, batch_size, virtual_slots, seed, shuffle)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size

    def _per_rank(self, n_items: int) -> int:
        return math.ceil(n_items / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self._per_rank(len(self.dataset) + self.virtual_slots) / self.batch_size)

    def order(self) -> List[int]:
        """This epoch's order of real + virtual items, shared by all ranks, padded to a multiple of W."""
        n_items = len(self.dataset) + self.n_virtual
        order = torch.randperm(n_items, generator=epoch_generator(self.seed, self.epoch)).tolist() if self.shuffle else list(range(n_items))
        total = self._per_rank(n_items) * self.world_size
        return order + order[: total - n_items]

    def shard(self) -> List[int]:
        """Indices (into real + virtual items) this rank trains on this epoch."""
        return self.order()[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Optional[Dict[str, Any]]]:
        mine = self.shard()
        n_batches = 0
        for start in range(0, len(mine), self.batch_size):
            yield collate_bags([self._item(j) for j in mine[start : start + self.batch_size]])
            n_batches += 1
        for _ in range(len(self) - n_batches):
            yield None


def average_gradients(parameters: List[torch.nn.Parameter]) -> None:
    """Average ``.grad`` across ranks in one flat all-reduce; a grad missing on every rank stays ``None``."""
    world = idist.get_world_size()
    if world == 1:
        return
    present = torch.tensor([float(p.grad is not None) for p in parameters])
    present = idist.all_reduce(present)
    used = [p for p, n in zip(parameters, present.tolist()) if n > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in used])
    flat = idist.all_reduce(flat) / world
    offset = 0
    for p in used:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """All-gather ``(N_r, 2)`` long tensors of different ``N_r`` (padded with -1 for the collective)."""
    n = torch.tensor([rows.shape[0]], dtype=torch.long)
    sizes = idist.all_gather(n)
    width = int(sizes.max())
    padded = torch.full((width, 2), -1, dtype=torch.long)
    padded[: rows.shape[0]] = rows
    gathered = idist.all_gather(padded.unsqueeze(0))  # (W, width, 2)
    return torch.cat([g[: int(k)] for g, k in zip(gathered, sizes.tolist())])


class DistributedVirtualBagHandler(VirtualBagHandler):
    """:class:`VirtualBagHandler` whose pools are the union of every rank's pools before bags are drawn.

    The gathered rows are put in the order one process would have collected them (bags in this epoch's
    shared order), so the same seeded draw gives the same virtual bags as a single-process run.
    """

    epoch_order: Any = None  # callable returning the epoch's shared item order (set by build_distributed_training)

    def make_bags(self) -> List[torch.Tensor]:
        key, regular = _gather_rows(self.key_pool), _gather_rows(self.regular_pool)
        if self.epoch_order is not None:
            rank_of = {item: i for i, item in reversed(list(enumerate(self.epoch_order())))}
            key = key[sorted(range(len(key)), key=lambda r: rank_of.get(int(key[r, 0]), 1 << 30))] if len(key) else key
            regular = regular[sorted(range(len(regular)), key=lambda r: rank_of.get(int(regular[r, 0]), 1 << 30))] if len(regular) else regular
        self._key = [key] if key.numel() else []
        self._regular = [regular] if regular.numel() else []
        return super().make_bags()


def build_distributed_training(model: torch.nn.Module, train_data: BagDataset, config: TrainConfig, out_dir=None,
                               val_data: Optional[BagDataset] = None, device="cpu") -> Training:
    """:func:`~ctmil.train.trainer.build_training` for the current rank of an initialised process group."""
    rank, world = idist.get_rank(), idist.get_world_size()
    with torch.no_grad():  # every rank starts from rank 0's weights
        for p in model.parameters():
            p.copy_(idist.broadcast(p.detach().clone(), src=0))
    if rank != 0:
        config = dataclasses.replace(config, tensorboard=False, progress=False)
    training = build_training(model, train_data, config, out_dir if rank == 0 else None, val_data, device)
    data = ShardedEpochBags(train_data, config.batch_size, training.data.virtual_slots, seed=config.seed, rank=rank, world_size=world)
    # build_training's handlers (set_epoch, the virtual-bag sink) hold this very object: turn it into the shard
    training.data.__class__, training.data.__dict__ = data.__class__, data.__dict__
    params = [p for p in model.parameters() if p.requires_grad]
    training.optimizer.register_step_pre_hook(lambda *_: average_gradients(params))
    if training.virtual_bags is not None:
        training.virtual_bags.__class__ = DistributedVirtualBagHandler
        training.virtual_bags.epoch_order = training.data.order
    return training


def _worker(local_rank: int, model_fn, train_data: BagDataset, config: TrainConfig, out_dir, result: Dict[str, Any]) -> None:
    # no resume: only rank 0 writes checkpoints, and every rank must start from the same state
    training = run_training(build_distributed_training(model_fn(), train_data, config, out_dir), resume=False)
    if idist.get_rank() == 0:
        torch.save({k: v.detach().cpu() for k, v in training.model.state_dict().items()}, result["path"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fit_distributed(model_fn, train_data: BagDataset, config: TrainConfig, out_dir, state_path, nproc_per_node: int = 2,
                    backend: str = "gloo") -> Dict[str, torch.Tensor]:
    """Train on ``nproc_per_node`` local processes; rank 0's final ``state_dict`` is saved to ``state_path``
    and returned. ``model_fn`` must be a picklable callable returning the (identically seeded) model."""
    with idist.Parallel(backend=backend, nproc_per_node=nproc_per_node, master_addr="127.0.0.1", master_port=_free_port()) as parallel:
        parallel.run(_worker, model_fn, train_data, config, out_dir, {"path": str(state_path)})
    return torch.load(state_path, weights_only=True)
