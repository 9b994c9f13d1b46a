"""Step functions of the bag engines, built by small factories; the one prediction path they use is
:mod:`ctmil.networks.predict`.

A step takes one collated batch (see :func:`ctmil.data.bags.collate_bags`) and returns a dict of detached
values that the handlers read (:data:`STEP_OUTPUT_KEYS`):

* ``prob (B,)``: sigmoid of the bag logit; ``label (B,)``; ``case_id`` list of str; ``is_virtual (B,)`` bool;
* ``attention (B, K)`` (zero on padded instances) and ``mask (B, K)`` (True = real instance), so the real
  instances of bag ``i`` are ``attention[i][mask[i]]`` in the bag's own instance order;
* training only: ``loss``, ``mil``, ``ssl`` (0-dim tensors, the terms of
  :class:`~ctmil.train.losses.MILSSLLoss`).

The training step's tensors stay on the step's device (detached): nothing in the step copies to the host or
reads a value, so a GPU step never waits for the device. Handlers collect them over an epoch and move them
once, at ``EPOCH_COMPLETED`` (see :class:`~ctmil.train.handlers.VirtualBagHandler`). :func:`predict_batch`
(evaluation and inference, once per batch of a run that reports per case) returns CPU tensors.

A training batch may be ``None`` (an unused virtual-bag slot of :class:`~ctmil.data.epochs.EpochBags`): the
step then does nothing and returns ``None``; handlers skip ``None`` outputs.

The network is always called through a :class:`BagInferer`: validation, cross-validation predictions,
``ctmil infer`` and the bundle's inference all run :func:`predict_batch` (via :func:`make_eval_step`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from monai.inferers import Inferer

from ctmil.networks import pairs_for_batch
from ctmil.networks.predict import BagInferer, Device, predict_batch, prepare_bag_batch, step_output

__all__ = ["make_eval_step", "make_train_step", "resolve_amp_dtype"]

logger = logging.getLogger(__name__)


def _add_pairs(batch: Dict[str, Any]) -> None:
    """Relative-location pairs of the real bags (virtual bags get none: their instances share no slice)."""
    position = batch["position"]
    if "is_virtual" in batch:
        position = position.masked_fill(batch["is_virtual"].bool().unsqueeze(1), -1)  # (B, K)
    batch["pairs"], batch["pair_labels"] = pairs_for_batch(position, batch["slice_index"])  # (B, P, 2), (B, P)


_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16/AMX); asked at run time."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp_dtype(device: Device, amp: bool, amp_dtype: "Optional[Union[str, torch.dtype]]" = None) -> Optional[torch.dtype]:
    """The autocast dtype of a step, or ``None`` for fp32.

    ``amp_dtype`` ``None`` (auto): on CUDA float16 (with a gradient scaler); on a CPU bfloat16 only where
    oneDNN has native bf16 kernels (detected at run time; elsewhere autocast would emulate bf16 and be several
    times slower, so the step stays fp32 with a logged note). A given dtype (``"bfloat16"``, ``"float16"`` or a
    ``torch.dtype``) is used as asked.
    """
    if not amp:
        return None
    device = torch.device(device)
    if isinstance(amp_dtype, str):
        if amp_dtype.lower() not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)} or None, got {amp_dtype!r}.")
        amp_dtype = _AMP_DTYPES[amp_dtype.lower()]
    if amp_dtype is not None:
        if amp_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}.")
        return amp_dtype
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    logger.info("amp: no native bfloat16 on this %s; training stays in float32.", device.type)
    return None


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_train_step(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: torch.nn.Module,
    device: Device = "cpu",
    inferer: Optional[BagInferer] = None,
    prepare_batch: Callable[..., Dict[str, Any]] = prepare_bag_batch,
    amp: bool = False,
    amp_dtype: "Optional[Union[str, torch.dtype]]" = None,
    non_blocking: bool = False,
) -> Callable[[Any, Optional[Mapping[str, Any]]], Optional[Dict[str, Any]]]:
    """One optimiser step on a batch of bags: ``loss_function(inferer(patches, network, mask, pairs), batch)["total"]``.

    ``loss_function`` is a :class:`~ctmil.train.losses.MILSSLLoss`; with ``loss_function.ssl == "relative"`` the
    step adds ``pairs``/``pair_labels`` to the batch. The SSL term only uses real bags (the loss masks
    ``is_virtual`` rows). ``amp`` runs the forward under ``torch.autocast`` in the dtype of
    :func:`resolve_amp_dtype` (float16 with a gradient scaler on CUDA; bfloat16 on CPUs with native bf16).
    The returned tensors stay on ``device`` and the step reads no value back, so it never waits for the device.
    """
    inferer = inferer or BagInferer()
    device = torch.device(device)
    relative = getattr(loss_function, "ssl", "none") == "relative"
    dtype = resolve_amp_dtype(device, amp, amp_dtype)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 and device.type == "cuda" else None

    def step(engine: Any, batch: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        if batch is None:
            return None
        network.train()
        optimizer.zero_grad(set_to_none=True)
        b = prepare_batch(batch, device, non_blocking)
        if relative:
            _add_pairs(b)
        with _autocast(device, dtype):
            out = inferer(b["patches"], network, b["mask"], b.get("pairs"), b.get("density"))
            losses = loss_function(out, b)
        if scaler is None:
            losses["total"].backward()
            optimizer.step()
        else:
            scaler.scale(losses["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
        result = step_output(out, b, host=False)
        result.update({name: losses[key].detach().float() for name, key in (("loss", "total"), ("mil", "mil"), ("ssl", "ssl"))})
        return result

    return step


def make_eval_step(
    network: torch.nn.Module, device: Device = "cpu", inferer: Optional[BagInferer] = None
) -> Callable[[Any, Mapping[str, Any]], Dict[str, Any]]:
    """Evaluation step: :func:`predict_batch` on the engine's batch."""

    def step(engine: Any, batch: Mapping[str, Any]) -> Dict[str, Any]:
        return predict_batch(network, batch, inferer, device)

    return step
