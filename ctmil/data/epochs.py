"""The batches of one training epoch: real bags plus that epoch's virtual bags, optionally one rank's shard."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ctmil.data.bags import BagDataset, collate_bags, virtual_bag

__all__ = ["EpochBags", "epoch_generator"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A ``torch.Generator`` that depends only on ``(seed, epoch)``, so a resumed run draws the same numbers."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


class EpochBags:
    """The training data of one epoch: the real bags plus this epoch's virtual bags, as collated batches.

    The iteration order is a permutation drawn from :func:`epoch_generator` ``(seed, epoch)``; call
    :meth:`set_epoch` at ``EPOCH_STARTED`` (like ``DistributedSampler.set_epoch``). Virtual bags are set with
    :meth:`set_virtual` (as instance references, materialised only when their batch is built) and stay until
    replaced.

    Ignite counts a fixed number of iterations per epoch, so the length is fixed: real bags plus
    ``virtual_slots`` (the most virtual bags an epoch may hold), in batches of ``batch_size``. Batches that
    are not needed (before virtual bags start, or when fewer virtual bags were made) are yielded as ``None``
    at the end of the epoch; the training step skips them.

    Args:
        dataset: the real (training) bags.
        batch_size: bags per batch.
        virtual_slots: capacity for virtual bags per epoch (``>= 0``).
        seed: seed of the per-epoch order.
        shuffle: shuffle each epoch (``False``: real bags in dataset order, then virtual bags).
        rank, world_size: under data parallelism, this process's share of the shared epoch order (every rank
            draws the same order and takes items ``rank, rank + world_size, ...``; shards have equal length, so
            every rank runs the same number of steps).
        device: keep the dataset's bags on this device for the whole run (:meth:`BagDataset.to`, one copy per
            bag at construction) and collate there, so no step copies patches from the host; ``None`` = host.
        transform: a MONAI (random) dictionary transform applied to every bag of the epoch before it is collated
            (augmentation, ``train.json``'s ``augmentation``); its random state is set from ``(seed, epoch, item)``
            before each bag, so a resumed run and every rank draw the same augmentation.
    """

    def __init__(
        self,
        dataset: BagDataset,
        batch_size: int = 1,
        virtual_slots: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: "Optional[str | torch.device]" = None,
        transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if isinstance(virtual_slots, bool) or not isinstance(virtual_slots, int) or virtual_slots < 0:
            raise ValueError(f"virtual_slots must be an int >= 0, got {virtual_slots!r}.")
        if len(dataset) == 0:
            raise ValueError("the dataset has no bags.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.virtual_slots = virtual_slots
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 1
        self._virtual: List[torch.Tensor] = []
        self.transform = transform
        self.device = None if device is None else torch.device(device)
        if self.device is not None:
            dataset.to(self.device)

    def _per_rank(self, n_items: int) -> int:
        return math.ceil(n_items / self.world_size)

    def __len__(self) -> int:
        return math.ceil(self._per_rank(len(self.dataset) + self.virtual_slots) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_virtual(self, refs: Sequence[torch.Tensor]) -> None:
        """Use these virtual bags (each ``(N, 2)`` rows ``(bag index, instance index)``) until the next call."""
        if len(refs) > self.virtual_slots:
            raise ValueError(f"{len(refs)} virtual bags exceed the {self.virtual_slots} virtual slots per epoch.")
        self._virtual = [torch.as_tensor(r, dtype=torch.long).clone() for r in refs]

    @property
    def n_virtual(self) -> int:
        return len(self._virtual)

    def _item(self, j: int) -> Dict[str, Any]:
        n_real = len(self.dataset)
        if j < n_real:
            bag = self.dataset[j]
        else:
            v = j - n_real
            bag = virtual_bag(self.dataset, self._virtual[v], case_id=f"virtual-e{self.epoch}-{v}")
        return bag if self.transform is None else self._augment(bag, j)

    def _augment(self, bag: Dict[str, Any], j: int) -> Dict[str, Any]:
        """``self.transform`` of ``bag`` with its random state set from ``(seed, epoch, j)``; the patches come back as a
        plain tensor of their dtype (MONAI's transforms return a ``MetaTensor``)."""
        item_seed = int(np.random.SeedSequence([self.seed, self.epoch, int(j)]).generate_state(1)[0])
        if hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=item_seed)
        dtype = bag["patches"].dtype
        out = dict(self.transform(dict(bag)))
        patches = out["patches"]
        out["patches"] = (patches.as_tensor() if hasattr(patches, "as_tensor") else torch.as_tensor(patches)).to(dtype)
        return out

    def order(self) -> List[int]:
        """This epoch's order of real + virtual items, the same on every rank, padded to a multiple of
        ``world_size`` by repeating its first items (as ``DistributedSampler`` does)."""
        n_items = len(self.dataset) + len(self._virtual)
        if self.shuffle:
            order = torch.randperm(n_items, generator=epoch_generator(self.seed, self.epoch)).tolist()
        else:
            order = list(range(n_items))
        total = self._per_rank(n_items) * self.world_size
        return order + order[: total - n_items]

    def shard(self) -> List[int]:
        """Indices (into real + virtual items) this rank trains on this epoch: ``rank, rank + W, ...``."""
        return self.order()[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Optional[Dict[str, Any]]]:
        mine = self.shard()
        n_batches = 0
        for start in range(0, len(mine), self.batch_size):
            yield collate_bags([self._item(j) for j in mine[start : start + self.batch_size]])
            n_batches += 1
        for _ in range(len(self) - n_batches):
            yield None
