"""Bags of instances for training and evaluation: a cached dataset, collation, virtual bags and epoch batches.

A bag is the dict documented in ``docs/design.md`` (``patches (K, C, P, P)``, ``position (K,)``,
``slice_index (K,)``, ``label``, ``case_id`` ...), one ``torch.save`` file per case. This module only moves
bags around; it knows nothing of the network or the training engine. Patches keep the dtype they are stored in
(float16 by default, ``patch_dtype`` of the preprocessing; float32 bags stay float32), here and in the batches
made of them: the step's ``prepare_bag_batch`` casts them to float32 on the device, just before the network.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from ctmil.transforms.density import density_input
from ctmil.keys import Columns

__all__ = [
    "BagDataset",
    "collate_bags",
    "load_bag",
    "virtual_bag",
]


logger = logging.getLogger(__name__)

BagSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]
_REQUIRED_KEYS = ("patches", "position", "slice_index")
_KEPT_DTYPES = (torch.float16, torch.float32)  # patch dtypes kept as stored; any other is read as float32


def load_bag(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Read one bag file with ``torch.load(path, weights_only=True)`` and check its required keys."""
    bag = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(bag, Mapping):
        raise ValueError(f"{path}: a bag file must hold a dict, got {type(bag).__name__}.")
    _check_bag(bag, str(path))
    return dict(bag)


def _check_bag(bag: Mapping[str, Any], where: str) -> None:
    missing = [k for k in _REQUIRED_KEYS if k not in bag]
    if missing:
        raise ValueError(f"{where}: bag is missing keys {missing}.")
    patches = bag["patches"]
    if not isinstance(patches, torch.Tensor) or patches.dim() not in (3, 4):
        raise ValueError(f"{where}: 'patches' must be a (K, C, P, P) or (K, P, P) tensor.")
    k = patches.shape[0]
    if k == 0:
        raise ValueError(f"{where}: empty bag (K = 0).")
    for key in ("position", "slice_index"):
        if tuple(bag[key].shape) != (k,):
            raise ValueError(f"{where}: '{key}' must be ({k},), got {tuple(bag[key].shape)}.")


class BagDataset(Dataset):
    """Bags from files and/or in-memory dicts, each read at most once and then kept in memory.

    Bags are small (a few hundred 60×60 patches), so the whole training split fits in memory and epochs
    never touch the disk again. ``dataset[i]`` returns a shallow copy of the cached dict with ``label``
    (float32 scalar tensor) and ``case_id`` (str) set from the arguments when given, otherwise from the bag.
    ``patches`` stay in their stored dtype (float16 or float32: float16 bags take half the memory); another
    dtype is read as float32.

    Args:
        bags: file paths (read with ``torch.load(..., weights_only=True)``) or bag dicts.
        labels: optional per-bag labels (0/1) overriding the bag's own ``label`` (e.g. from a datalist).
        case_ids: optional per-bag case ids overriding the bag's ``case_id``; they must be unique.
    """

    def __init__(
        self,
        bags: Sequence[BagSource],
        labels: Optional[Sequence[float]] = None,
        case_ids: Optional[Sequence[str]] = None,
    ) -> None:
        self.sources = list(bags)
        n = len(self.sources)
        if labels is not None and len(labels) != n:
            raise ValueError(f"got {len(labels)} labels for {n} bags.")
        if case_ids is not None and len(case_ids) != n:
            raise ValueError(f"got {len(case_ids)} case ids for {n} bags.")
        self._labels = None if labels is None else [float(x) for x in labels]
        self._case_ids = None if case_ids is None else [str(c) for c in case_ids]
        self._cache: Dict[int, Dict[str, Any]] = {}
        self._index_of: Optional[Dict[str, int]] = None
        if self._case_ids is not None:
            self._build_index(self._case_ids)

    def __len__(self) -> int:
        return len(self.sources)

    def _load(self, i: int) -> Dict[str, Any]:
        bag = self._cache.get(i)
        if bag is None:
            src = self.sources[i]
            if isinstance(src, Mapping):
                _check_bag(src, f"bag {i}")
                bag = dict(src)
            else:
                bag = load_bag(src)
            patches = bag["patches"]
            if patches.dim() == 3:  # (K, P, P) -> (K, 1, P, P)
                bag["patches"] = patches.unsqueeze(1)
            if bag["patches"].dtype not in _KEPT_DTYPES:
                bag["patches"] = bag["patches"].float()
            bag["position"] = bag["position"].long()
            bag["slice_index"] = bag["slice_index"].long()
            density = (bag.get("meta") or {}).get("density")
            if "density" not in bag and density is not None:  # the hybrid network's input (docs/design.md)
                bag["density"] = density_input(density)
            if self._labels is not None:
                own = bag.get(Columns.LABEL)
                if own is not None and float(own) >= 0 and float(own) != self._labels[i]:
                    logger.warning("bag %d: label %s in the bag overridden by %s.", i, float(own), self._labels[i])
                bag[Columns.LABEL] = torch.tensor(self._labels[i], dtype=torch.float32)
            elif Columns.LABEL in bag:
                bag[Columns.LABEL] = torch.as_tensor(bag[Columns.LABEL], dtype=torch.float32).reshape(())
            else:
                bag[Columns.LABEL] = torch.tensor(-1.0)
            if self._case_ids is not None:
                bag[Columns.CASE_ID] = self._case_ids[i]
            else:
                bag[Columns.CASE_ID] = str(bag.get(Columns.CASE_ID, f"bag{i}"))
            self._cache[i] = bag
        return bag

    def __getitem__(self, i: int) -> Dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"bag index {i} out of range for {len(self)} bags.")
        return dict(self._load(i % len(self)))

    def subset(self, indices: Sequence[int]) -> "BagDataset":
        """A dataset of the bags at ``indices``, sharing this one's cache (no file is read twice)."""
        return BagDataset([self[int(i)] for i in indices])

    def cache_all(self) -> "BagDataset":
        """Read every bag now (e.g. before timing an epoch). Returns ``self``."""
        for i in range(len(self)):
            self._load(i)
        return self

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "BagDataset":
        """Read every bag and keep its ``patches``, ``position`` and ``slice_index`` on ``device`` for the rest of
        the run (one copy per bag, e.g. the training bags on a GPU, patches in their stored dtype); labels stay on
        the host. Returns ``self``."""
        device = torch.device(device)
        for i in range(len(self)):
            bag = self._load(i)
            for key in _REQUIRED_KEYS:
                bag[key] = bag[key].to(device, non_blocking=non_blocking)
        return self

    @property
    def labels(self) -> List[float]:
        """Per-bag labels (reads bags whose label comes from the file)."""
        if self._labels is not None:
            return list(self._labels)
        return [float(self._load(i)[Columns.LABEL]) for i in range(len(self))]

    @property
    def case_ids(self) -> List[str]:
        return [self._load(i)[Columns.CASE_ID] for i in range(len(self))] if self._case_ids is None else list(self._case_ids)

    def bag_size(self, i: int) -> int:
        """Number of instances ``K`` of bag ``i``."""
        return int(self._load(i)["patches"].shape[0])

    def _build_index(self, case_ids: Sequence[str]) -> None:
        index: Dict[str, int] = {}
        for i, c in enumerate(case_ids):
            if c in index:
                raise ValueError(f"case id {c!r} occurs twice; case ids must be unique.")
            index[c] = i
        self._index_of = index

    def index_of(self, case_id: str) -> int:
        """Position of the bag whose ``case_id`` is given (``KeyError`` if none)."""
        if self._index_of is None:
            self._build_index(self.case_ids)
        assert self._index_of is not None
        return self._index_of[case_id]

    def gather_instances(self, refs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Instances picked across bags: ``refs (N, 2)`` int64 rows ``(bag index, instance index)``.

        Returns ``patches (N, C, P, P)``, ``position (N,)`` and ``slice_index (N,)``; the patches have one dtype,
        that of the bags (float16 from float16 bags; float32 when float16 and float32 bags are mixed).
        """
        if refs.dim() != 2 or refs.shape[1] != 2 or refs.shape[0] == 0:
            raise ValueError(f"refs must be a non-empty (N, 2) tensor, got {tuple(refs.shape)}.")
        refs = refs.long().cpu()
        parts: Dict[str, List[torch.Tensor]] = {key: [] for key in _REQUIRED_KEYS}
        rows = []
        for bag_i in torch.unique(refs[:, 0]).tolist():  # one indexed copy per source bag, not per instance
            at = torch.nonzero(refs[:, 0] == bag_i).squeeze(1)  # (n,) rows of refs from this bag
            bag = self._load(int(bag_i))
            inst = refs[at, 1].to(bag["patches"].device)
            for key in _REQUIRED_KEYS:
                parts[key].append(bag[key].index_select(0, inst))
            rows.append(at)
        order = torch.argsort(torch.cat(rows))  # back to the order of refs
        out = {}
        for key in _REQUIRED_KEYS:
            cat = torch.cat(parts[key])  # torch.cat promotes mixed float16/float32 patches to float32
            out[key] = cat.index_select(0, order.to(cat.device))
        return out


def virtual_bag(dataset: BagDataset, refs: torch.Tensor, case_id: str, label: float = 1.0) -> Dict[str, Any]:
    """A virtual bag made of instances of ``dataset``: ``refs (N, 2)`` rows ``(bag index, instance index)``.

    Instances keep their own ``position``/``slice_index`` (they come from different bags, so the slice indices
    do not describe a volume; relative-location pairs must not be built on virtual bags). ``is_virtual`` is True.
    """
    bag: Dict[str, Any] = dataset.gather_instances(refs)
    donors = [dataset[int(i)] for i in torch.unique(refs[:, 0].long().cpu()).tolist()]
    if donors and all("density" in d for d in donors):  # the mean density of the bags its instances come from
        bag["density"] = torch.stack([d["density"] for d in donors]).mean(0)
    bag[Columns.LABEL] = torch.tensor(float(label), dtype=torch.float32)
    bag[Columns.CASE_ID] = case_id
    bag["is_virtual"] = True
    return bag


def collate_bags(bags: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Pad a list of bags to the largest ``K`` (see ``docs/design.md``).

    Returns ``patches (B, Kmax, C, P, P)`` (zero padded, in the bags' dtype: float16 bags give a float16 batch,
    half the bytes to copy to a device; mixed float16/float32 bags a float32 one), ``mask (B, Kmax)`` bool
    (True = real instance), ``position (B, Kmax)`` and ``slice_index (B, Kmax)`` int64 (``-1`` padded), ``label (B,)`` float32,
    ``case_id`` list of str and ``is_virtual (B,)`` bool (False unless a bag says otherwise), and ``density (B, F)``
    float32 when every bag has its lung-density features (the hybrid network's input). Tensors are made on
    the device of the bags' patches; a batch of one bag holds views of that bag's tensors (read-only use).
    """
    if len(bags) == 0:
        raise ValueError("cannot collate an empty list of bags.")
    patches = [b["patches"] if b["patches"].dim() == 4 else b["patches"].unsqueeze(1) for b in bags]
    shape = patches[0].shape[1:]
    if any(p.shape[1:] != shape for p in patches):
        raise ValueError("all bags must have patches of the same (C, P, P) shape.")
    n, k_max = len(bags), max(p.shape[0] for p in patches)
    device = patches[0].device  # bags kept on a device (BagDataset.to) are collated there
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in patches])  # one dtype for the batch
    out = {
        Columns.LABEL: torch.tensor([float(b.get(Columns.LABEL, -1.0)) for b in bags], dtype=torch.float32),
        Columns.CASE_ID: [str(b.get(Columns.CASE_ID, "")) for b in bags],
        "is_virtual": torch.tensor([bool(b.get("is_virtual", False)) for b in bags], dtype=torch.bool),
    }
    if all("density" in b for b in bags):
        out["density"] = torch.stack([torch.as_tensor(b["density"], dtype=torch.float32) for b in bags])
    if n == 1:  # one bag: nothing to pad, views of its tensors (no copy)
        out.update(patches=patches[0].unsqueeze(0), mask=torch.ones((1, k_max), dtype=torch.bool, device=device),
                   position=torch.as_tensor(bags[0]["position"]).long().unsqueeze(0),
                   slice_index=torch.as_tensor(bags[0]["slice_index"]).long().unsqueeze(0))
        return out
    out.update(patches=torch.zeros((n, k_max, *shape), dtype=dtype, device=device),
               mask=torch.zeros((n, k_max), dtype=torch.bool, device=device),
               position=torch.full((n, k_max), -1, dtype=torch.long, device=device),
               slice_index=torch.full((n, k_max), -1, dtype=torch.long, device=device))
    for i, (b, p) in enumerate(zip(bags, patches)):
        k = p.shape[0]
        out["patches"][i, :k] = p
        out["mask"][i, :k] = True
        out["position"][i, :k] = torch.as_tensor(b["position"]).long()
        out["slice_index"][i, :k] = torch.as_tensor(b["slice_index"]).long()
    return out
