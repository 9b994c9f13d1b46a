"""Training losses: bag-level MIL loss plus the auxiliary self-supervised location loss (paper Eq. 3-6)."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ctmil.networks.utils import raise_if
from ctmil.keys import Columns

__all__ = ["MILSSLLoss"]

_SSL_KINDS = ("absolute", "relative", "none")
_REDUCTIONS = ("slice", "item")


class MILSSLLoss(nn.Module):
    """``total = (L_MIL + mu * L_SSL) / (1 + mu)`` (paper Eq. 6); with ``ssl="none"``, ``total = L_MIL``.

    * ``mil``: binary cross-entropy with logits between ``outputs["logits"] (B, 1)`` and ``batch["label"] (B,)``,
      mean over the B bags (real and virtual). Eq. 3's two-class cross-entropy with a sigmoid output.
    * ``ssl``: cross-entropy of the location head, over real (non-padded) items of **real bags only**
      (``batch["is_virtual"]`` rows are excluded, as in the paper).

      - ``"absolute"``: items are instances; logits ``outputs["ssl_abs"] (B, K, 12)``, targets
        ``batch["position"] (B, K)``; valid where ``mask`` is True and ``position >= 0``.
      - ``"relative"``: items are pairs; logits ``outputs["ssl_rel"] (B, P, 8)`` (call ``forward_all`` with
        ``pairs=batch["pairs"]``), targets ``batch["pair_labels"] (B, P)``; valid where label and both pair
        indices are ``>= 0``. A pair belongs to its anchor's slice.

      Normalisation (``ssl_reduction``):

      - ``"slice"`` (default, the paper's Eq. 4/5): per bag, the CE is **summed** over the items of each slice
        (12 patches or 16 pairs for a complete slice, fewer for an incomplete one) and **averaged over the
        bag's slices** ``N_s`` (distinct ``slice_index`` values among its valid items); the batch value is the
        mean over real bags that have at least one valid item. With one bag per step (the paper's setting)
        this is exactly Eq. 4/5; with B bags per step it is the mean of B single-bag losses, so batching does
        not change the loss scale. Note the scale: at chance level it is ``12 ln 12 ≈ 29.8`` (absolute) or
        ``16 ln 8 ≈ 33.3`` (relative) per slice, much larger than ``L_MIL ≈ ln 2``.
      - ``"item"``: plain mean CE over all valid items of all real bags (no slice sum).

      When no valid item exists (e.g. a batch of only virtual bags) ``ssl`` is a zero that still has a grad
      path through the SSL logits, so ``backward`` works and gives zero SSL gradients.

    Called as ``loss(outputs, batch)`` with ``outputs`` from ``MILNet.forward_all`` and ``batch`` the collated
    dict (``label (B,)``, ``mask (B, K)``, ``position (B, K)``, ``slice_index (B, K)``, ``is_virtual (B,)``,
    ``pairs (B, P, 2)``, ``pair_labels (B, P)``; ``mask`` and ``is_virtual`` are optional).

    Args:
        mu: weight of the SSL loss (0.3 in the paper), ``>= 0``.
        ssl: ``"absolute"``, ``"relative"`` or ``"none"``.
        ssl_reduction: ``"slice"`` (paper) or ``"item"``.

    Returns:
        ``{"mil": scalar, "ssl": scalar, "total": scalar}``.
    """

    def __init__(self, mu: float = 0.3, ssl: str = "absolute", ssl_reduction: str = "slice") -> None:
        super().__init__()
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0.0 or mu == float("inf"):
            raise ValueError(f"mu must be a finite number >= 0, got {mu!r}.")
        if ssl not in _SSL_KINDS:
            raise ValueError(f"ssl must be one of {_SSL_KINDS}, got {ssl!r}.")
        if ssl_reduction not in _REDUCTIONS:
            raise ValueError(f"ssl_reduction must be one of {_REDUCTIONS}, got {ssl_reduction!r}.")
        self.mu = float(mu)
        self.ssl = ssl
        self.ssl_reduction = ssl_reduction

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = outputs["logits"]
        if logits.dim() != 2 or logits.shape[1] != 1:
            raise ValueError(f"outputs['logits'] must be (B, 1), got {list(logits.shape)}.")
        logits = logits.squeeze(1)  # (B,)
        label = torch.as_tensor(batch[Columns.LABEL], device=logits.device).to(logits.dtype).reshape(-1)
        if label.shape != logits.shape:
            raise ValueError(f"batch['label'] must be (B,) = {list(logits.shape)}, got {list(label.shape)}.")
        raise_if(((label != 0) & (label != 1)).any(), "training labels must be 0 or 1 (unknown labels, -1, cannot be trained on).")
        mil = F.binary_cross_entropy_with_logits(logits, label)
        if self.ssl == "none":
            return {"mil": mil, "ssl": torch.zeros_like(mil), "total": mil}
        ssl = self._ssl_loss(outputs, batch, n_bags=logits.shape[0])
        total = (mil + self.mu * ssl) / (1.0 + self.mu)
        return {"mil": mil, "ssl": ssl, "total": total}

    def _ssl_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], n_bags: int) -> torch.Tensor:
        if self.ssl == "absolute":
            ssl_logits = outputs["ssl_abs"]  # (B, K, C)
            target = batch["position"].to(ssl_logits.device).long()  # (B, K)
            valid = target >= 0
            if batch.get("mask") is not None:
                valid = valid & batch["mask"].to(ssl_logits.device).bool()
            anchor = None
        else:
            if "ssl_rel" not in outputs:
                raise ValueError("ssl='relative' needs outputs['ssl_rel']: call forward_all(x, mask, pairs=batch['pairs']).")
            ssl_logits = outputs["ssl_rel"]  # (B, P, C)
            target = batch["pair_labels"].to(ssl_logits.device).long()  # (B, P)
            pairs = batch["pairs"].to(ssl_logits.device).long()  # (B, P, 2)
            valid = (target >= 0) & (pairs >= 0).all(dim=-1)
            anchor = pairs[..., 0].clamp(min=0)  # (B, P)
        if ssl_logits.dim() != 3 or ssl_logits.shape[:2] != target.shape or target.shape[0] != n_bags:
            raise ValueError(
                f"SSL logits {list(ssl_logits.shape)} and targets {list(target.shape)} do not match as (B, N, C) / (B, N)."
            )
        if batch.get("is_virtual") is not None:
            real_bag = ~torch.as_tensor(batch["is_virtual"], device=ssl_logits.device).bool().reshape(-1)  # (B,)
            valid = valid & real_bag.unsqueeze(1)
        n_classes = ssl_logits.shape[-1]
        raise_if((valid & (target >= n_classes)).any(), f"SSL targets must be < {n_classes} (the head's class count).")
        ce = F.cross_entropy(
            ssl_logits.reshape(-1, n_classes), target.clamp(min=0).reshape(-1), reduction="none"
        ).reshape(target.shape)  # (B, N)
        ce = torch.where(valid, ce, torch.zeros_like(ce))  # keeps a grad path (of zeros) when nothing is valid
        if self.ssl_reduction == "item":
            return ce.sum() / valid.sum().clamp(min=1)  # 0 when nothing is valid
        if "slice_index" not in batch:
            raise ValueError("ssl_reduction='slice' needs batch['slice_index'] (B, K).")
        slice_index = batch["slice_index"].to(ssl_logits.device).long()  # (B, K)
        item_slice = slice_index if anchor is None else torch.gather(slice_index, 1, anchor)  # (B, N)
        n_slices = _count_distinct(item_slice, valid)  # (B,)
        has_items = n_slices > 0  # (B,): computed without a host sync, whatever the device
        per_bag = ce.sum(dim=1) / n_slices.clamp(min=1)  # (B,), 0 for a bag without valid items
        return torch.where(has_items, per_bag, torch.zeros_like(per_bag)).sum() / has_items.sum().clamp(min=1)


def _count_distinct(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Number of distinct ``values`` per row among the ``valid`` entries; ``values, valid: (B, N)`` -> ``(B,)``."""
    if values.shape[1] == 0:
        return torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    sentinel = torch.iinfo(torch.long).max
    v = torch.where(valid, values, torch.full_like(values, sentinel)).sort(dim=1).values  # valid first, ascending
    starts = torch.ones_like(valid)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]  # first occurrence of each value
    return (starts & (v != sentinel)).sum(dim=1)
