"""Data-parallel training with ``torch.distributed``: the one trainer of the bundle, under DDP.

Nothing here is a second trainer. ``configs/multi_gpu_train.json`` changes constructor choices of the same
objects: the network is wrapped in :class:`DistributedForwardAll` (``DistributedDataParallel`` averages the
gradients), :class:`~ctmil.data.epochs.EpochBags` takes this rank's shard of the shared epoch order
(``rank``/``world_size``), :class:`~ctmil.train.handlers.VirtualBagHandler` draws from the pools of every rank
(``gather``), and only rank 0 writes checkpoints, logs and the model (every rank resumes from the same
checkpoint). ``W`` ranks with one bag each train like one process with batches of ``W`` bags.

Launch with ``torchrun --nproc_per_node=N -m monai.bundle run --config_file "['train.json','multi_gpu_train.json']"``
or ``ctmil train --nproc N`` (:func:`run_distributed`; ``nccl`` on GPUs, ``gloo`` on CPU).
"""

from __future__ import annotations

import gc
import socket
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from ctmil.bundle import build_workflow

__all__ = ["DistributedForwardAll", "free_port", "run_distributed"]


class _ForwardAll(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, pairs: Optional[torch.Tensor] = None,
                chunk_size: Optional[int] = None, density: Optional[torch.Tensor] = None) -> dict:
        extra = {} if density is None else {"density": density}
        return self.network.forward_all(x, mask, pairs, chunk_size=chunk_size, **extra)


class DistributedForwardAll(nn.Module):
    """A :class:`~ctmil.networks.MILNet` under ``DistributedDataParallel`` whose ``forward_all`` runs through DDP's
    ``forward`` (the bag inferer calls ``forward_all``; calling it on the bare module would skip the gradient sync).

    ``find_unused_parameters`` defaults to True: the SSL head that the loss does not use gets no gradient.
    Save and load weights through the wrapped network itself (``network_def`` in the configs).
    """

    def __init__(self, module: nn.Module, device_ids: Optional[Sequence[Any]] = None, find_unused_parameters: bool = True,
                 **ddp_kwargs: Any) -> None:
        super().__init__()
        self.ddp = nn.parallel.DistributedDataParallel(
            _ForwardAll(module), device_ids=device_ids, find_unused_parameters=find_unused_parameters, **ddp_kwargs
        )

    def forward_all(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, pairs: Optional[torch.Tensor] = None,
                    chunk_size: Optional[int] = None, density: Optional[torch.Tensor] = None) -> dict:
        return self.ddp(x, mask, pairs, chunk_size, density)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_all(x, mask)["logits"]


def free_port() -> int:
    """A free TCP port on the loopback interface (for a local process group)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(local_rank: int, files: Sequence[str], overrides: Mapping[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)  # the processes share the machine's cores

    import ignite.distributed as idist

    workflow = build_workflow(list(files), dict(overrides))
    try:
        workflow.run()
    finally:
        workflow.finalize()
    # Every rank reaches here, with its DDP reducer freed, before any tears the process group down: gloo work still
    # held by a reducer at interpreter shutdown aborts the process ("terminate called without an active exception",
    # SIGABRT; seen under load in CI, and described in pytorch/pytorch#179291).
    del workflow
    gc.collect()
    idist.barrier()


def run_distributed(files: Sequence[str], overrides: Mapping[str, Any], nproc: int, backend: Optional[str] = None) -> None:
    """Run the bundle's train workflow (``files`` + ``multi_gpu_train.json``) on ``nproc`` local processes.

    ``backend`` defaults to ``nccl`` when ``overrides["device"]`` (or the machine) is CUDA, else ``gloo``; each
    rank then trains on ``cuda:<local rank>`` or on the CPU.
    """
    import ignite.distributed as idist

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive int, got {nproc!r}.")
    device = str(overrides.get("device", "")).lower()
    cuda = "cuda" in device or (not device and torch.cuda.is_available())
    backend = backend or ("nccl" if cuda else "gloo")
    run = {**dict(overrides), "dist_backend": backend, "finalize": []}  # idist.Parallel owns the process group
    if backend == "gloo":
        run["device"] = torch.device("cpu")
    else:
        run.pop("device", None)  # multi_gpu_train.json: cuda:LOCAL_RANK
    files = [*files, "multi_gpu_train.json"]
    with idist.Parallel(backend=backend, nproc_per_node=nproc, master_addr="127.0.0.1", master_port=free_port()) as parallel:
        parallel.run(_worker, files, run, max(1, torch.get_num_threads() // nproc))
