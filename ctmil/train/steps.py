"""Step functions of the bag engines and the one prediction path, built by small factories.

A step takes one collated batch (see :func:`ctmil.data.bags.collate_bags`) and returns a dict of detached
values that the handlers read (:data:`STEP_OUTPUT_KEYS`):

* ``prob (B,)``: sigmoid of the bag logit; ``label (B,)``; ``case_id`` list of str; ``is_virtual (B,)`` bool;
* ``attention (B, K)`` (zero on padded instances) and ``mask (B, K)`` (True = real instance), so the real
  instances of bag ``i`` are ``attention[i][mask[i]]`` in the bag's own instance order;
* training only: ``loss``, ``mil``, ``ssl`` (0-dim tensors, the terms of
  :class:`~ctmil.train.losses.MILSSLLoss`; kept as tensors so that no step waits for the device).

A training batch may be ``None`` (an unused virtual-bag slot of :class:`~ctmil.data.epochs.EpochBags`): the
step then does nothing and returns ``None``; handlers skip ``None`` outputs.

The network is always called through a :class:`BagInferer`: validation, cross-validation predictions,
``ctmil infer`` and the bundle's inference all run :func:`predict_batch` (via :func:`make_eval_step`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from monai.inferers import Inferer

from ctmil.networks import pairs_for_batch

__all__ = [
    "STEP_OUTPUT_KEYS",
    "BagInferer",
    "make_eval_step",
    "make_train_step",
    "predict_batch",
    "prepare_bag_batch",
]

STEP_OUTPUT_KEYS = ("prob", "label", "attention", "mask", "case_id", "is_virtual")
Device = Union[str, torch.device]


class BagInferer(Inferer):
    """``network.forward_all(inputs, mask, pairs)`` as a MONAI inferer: every output of a bag network in a dict.

    Args:
        chunk_size: encode at most this many instances at once (``None``: all at once). Bounds the activation
            memory of large bags at inference; the result is the same.
    """

    def __init__(self, chunk_size: Optional[int] = None) -> None:
        super().__init__()
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}.")
        self.chunk_size = chunk_size

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        mask: Optional[torch.Tensor] = None,
        pairs: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``inputs: (B, K, C, P, P)``, ``mask: (B, K)`` bool → the dict of ``MILNet.forward_all``."""
        if self.chunk_size is None:
            return network.forward_all(inputs, mask, pairs)
        return network.forward_all(inputs, mask, pairs, chunk_size=self.chunk_size)


def prepare_bag_batch(batch: Mapping[str, Any], device: Device = "cpu", non_blocking: bool = False) -> Dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (lists such as ``case_id`` are kept as they are)."""
    return {
        k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _add_pairs(batch: Dict[str, Any]) -> None:
    """Relative-location pairs of the real bags (virtual bags get none: their instances share no slice)."""
    position = batch["position"]
    if "is_virtual" in batch:
        position = position.masked_fill(batch["is_virtual"].bool().unsqueeze(1), -1)  # (B, K)
    batch["pairs"], batch["pair_labels"] = pairs_for_batch(position, batch["slice_index"])  # (B, P, 2), (B, P)


def _output(out: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> Dict[str, Any]:
    is_virtual = batch.get("is_virtual")
    if is_virtual is None:
        is_virtual = torch.zeros(batch["label"].shape[0], dtype=torch.bool)
    return {
        "prob": torch.sigmoid(out["logits"].detach().float().squeeze(1)).cpu(),  # (B,)
        "label": batch["label"].detach().float().cpu(),  # (B,)
        "attention": out["attention"].detach().float().cpu(),  # (B, K)
        "mask": batch["mask"].detach().cpu(),  # (B, K)
        "case_id": list(batch["case_id"]),
        "is_virtual": is_virtual.detach().bool().cpu(),  # (B,)
    }


def _autocast(device: torch.device, amp: bool, dtype: Optional[torch.dtype]):
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16))


def make_train_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: torch.nn.Module,
    device: Device = "cpu",
    inferer: Optional[BagInferer] = None,
    prepare_batch: Callable[..., Dict[str, Any]] = prepare_bag_batch,
    amp: bool = False,
    amp_dtype: Optional[torch.dtype] = None,
    non_blocking: bool = False,
) -> Callable[[Any, Optional[Mapping[str, Any]]], Optional[Dict[str, Any]]]:
    """One optimiser step on a batch of bags: ``loss_function(inferer(patches, network, mask, pairs), batch)["total"]``.

    ``loss_function`` is a :class:`~ctmil.train.losses.MILSSLLoss`; with ``loss_function.ssl == "relative"`` the
    step adds ``pairs``/``pair_labels`` to the batch. The SSL term only uses real bags (the loss masks
    ``is_virtual`` rows). ``amp`` runs the forward under ``torch.autocast`` (``amp_dtype``: float16 on CUDA with
    a gradient scaler, bfloat16 elsewhere by default).
    """
    inferer = inferer or BagInferer()
    device = torch.device(device)
    relative = getattr(loss_function, "ssl", "none") == "relative"
    scaler = torch.amp.GradScaler(device.type) if amp and device.type == "cuda" and amp_dtype in (None, torch.float16) else None

    def step(engine: Any, batch: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        if batch is None:
            return None
        network.train()
        optimizer.zero_grad(set_to_none=True)
        b = prepare_batch(batch, device, non_blocking)
        if relative:
            _add_pairs(b)
        with _autocast(device, amp, amp_dtype):
            out = inferer(b["patches"], network, b["mask"], b.get("pairs"))
            losses = loss_function(out, b)
        if scaler is None:
            losses["total"].backward()
            optimizer.step()
        else:
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
        result = _output(out, b)
        result.update({name: losses[key].detach().float() for name, key in (("loss", "total"), ("mil", "mil"), ("ssl", "ssl"))})
        return result

    return step


def predict_batch(
    network: torch.nn.Module, batch: Mapping[str, Any], inferer: Optional[BagInferer] = None, device: Device = "cpu"
) -> Dict[str, Any]:
    """The one prediction path: ``batch`` (collated bags) → the step output dict, network in eval mode, no grad."""
    network.eval()
    with torch.inference_mode():
        b = prepare_bag_batch(batch, device)
        out = (inferer or BagInferer())(b["patches"], network, b["mask"])
        result = _output(out, b)
        result["logit"] = out["logits"].detach().float().squeeze(1).cpu()  # (B,)
        if "bag_features" in out:
            result["bag_features"] = out["bag_features"].detach().float().cpu()  # (B, M)
    return result


def make_eval_step(
    network: torch.nn.Module, device: Device = "cpu", inferer: Optional[BagInferer] = None
) -> Callable[[Any, Mapping[str, Any]], Dict[str, Any]]:
    """Evaluation step: :func:`predict_batch` on the engine's batch."""

    def step(engine: Any, batch: Mapping[str, Any]) -> Dict[str, Any]:
        return predict_batch(network, batch, inferer, device)

    return step
