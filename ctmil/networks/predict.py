"""The one prediction path: a bag network called through :class:`BagInferer` (a MONAI ``Inferer``) on a collated
batch, in eval mode without gradients (:func:`predict_batch`). Validation, cross-validation predictions,
``ctmil infer`` and the bundle's inference all call it; training's step (:mod:`ctmil.train.steps`) uses the same
inferer and the same step output (:data:`STEP_OUTPUT_KEYS`):

* ``prob (B,)``: sigmoid of the bag logit; ``label (B,)``; ``case_id`` list of str; ``is_virtual (B,)`` bool;
* ``attention (B, K)`` (zero on padded instances) and ``mask (B, K)`` (True = real instance);
* :func:`predict_batch` adds ``logit (B,)`` and, when the network gives them, ``bag_features (B, M)``.

It lives with the networks (below data, training and inference) so that everything that predicts reaches it
without going through training.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Union

import torch
from monai.inferers import Inferer
from ctmil.keys import Columns

__all__ = ["STEP_OUTPUT_KEYS", "BagInferer", "predict_batch", "prepare_bag_batch", "step_output"]

logger = logging.getLogger(__name__)

STEP_OUTPUT_KEYS = ("prob", Columns.LABEL, "attention", "mask", Columns.CASE_ID, "is_virtual")


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
        density: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``inputs: (B, K, C, P, P)``, ``mask: (B, K)`` bool → the dict of ``MILNet.forward_all``; ``density
        (B, F)``, the bags' lung-density features, is passed on when given (a hybrid network needs it)."""
        kwargs: Dict[str, Any] = {} if self.chunk_size is None else {"chunk_size": self.chunk_size}
        if density is not None and getattr(_bare(network), "n_density", 0):
            kwargs["density"] = density
        return network.forward_all(inputs, mask, pairs, **kwargs)


def _bare(network: torch.nn.Module) -> torch.nn.Module:
    """The MILNet inside a DDP wrapper (``DistributedForwardAll``), or the network itself."""
    ddp = getattr(network, "ddp", None)
    return ddp.module.network if ddp is not None else network


def prepare_bag_batch(batch: Mapping[str, Any], device: Device = "cpu", non_blocking: bool = False) -> Dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (lists such as ``case_id`` are kept as they are).

    ``patches`` travel in their stored dtype (float16 bags: half the bytes) and are cast to float32 there, on
    ``device``: the one cast between stored bags and the network (a float32 batch is not copied again).
    """
    out = {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    out["patches"] = out["patches"].float()  # (B, K, C, P, P) float32, cast on the device after the copy
    return out


def step_output(out: Mapping[str, torch.Tensor], batch: Mapping[str, Any], host: bool = True) -> Dict[str, Any]:
    """The step output dict; ``host=False`` leaves every tensor where it is (no copy, no wait for the device)."""
    move = (lambda t: t.cpu()) if host else (lambda t: t)
    is_virtual = batch.get("is_virtual")
    if is_virtual is None:
        is_virtual = torch.zeros(batch[Columns.LABEL].shape[0], dtype=torch.bool, device=batch[Columns.LABEL].device)
    return {
        "prob": move(torch.sigmoid(out["logits"].detach().float().squeeze(1))),  # (B,)
        Columns.LABEL: move(batch[Columns.LABEL].detach().float()),  # (B,)
        "attention": move(out["attention"].detach().float()),  # (B, K)
        "mask": move(batch["mask"].detach()),  # (B, K)
        Columns.CASE_ID: list(batch[Columns.CASE_ID]),
        "is_virtual": move(is_virtual.detach().bool()),  # (B,)
    }


def predict_batch(
    network: torch.nn.Module, batch: Mapping[str, Any], inferer: Optional[BagInferer] = None, device: Device = "cpu"
) -> Dict[str, Any]:
    """The one prediction path: ``batch`` (collated bags) → the step output dict, network in eval mode, no grad."""
    network.eval()
    with torch.inference_mode():
        b = prepare_bag_batch(batch, device)
        out = (inferer or BagInferer())(b["patches"], network, b["mask"], density=b.get("density"))
        result = step_output(out, b)
        result["logit"] = out["logits"].detach().float().squeeze(1).cpu()  # (B,)
        if "bag_features" in out:
            result["bag_features"] = out["bag_features"].detach().float().cpu()  # (B, M)
    return result
