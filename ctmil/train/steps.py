"""Thin Ignite engines for bag training and evaluation, built from small step factories.

A step takes one collated batch (see :func:`ctmil.data.bags.collate_bags`) and returns a dict of detached
CPU values that the handlers read (:data:`STEP_OUTPUT_KEYS`):

* ``prob (B,)``: sigmoid of the bag logit; ``label (B,)``; ``case_id`` list of str; ``is_virtual (B,)`` bool;
* ``attention (B, K)`` (zero on padded instances) and ``mask (B, K)`` (True = real instance), so the real
  instances of bag ``i`` are ``attention[i][mask[i]]`` in the bag's own instance order;
* training only: ``loss``, ``mil``, ``ssl`` (floats, the terms of :class:`~ctmil.train.losses.MILSSLLoss`).

A training batch may be ``None`` (an unused virtual-bag slot of :class:`~ctmil.data.bags.EpochBags`): the
step then does nothing and returns ``None``; handlers skip ``None`` outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Average
from ignite.metrics.metric import MetricUsage

from ctmil.networks import pairs_for_batch
from ctmil.evaluate.metrics import BagMetrics

__all__ = [
    "STEP_OUTPUT_KEYS",
    "StepsRun",
    "create_evaluator",
    "create_trainer",
    "make_eval_step",
    "make_train_step",
    "prepare_bag_batch",
]

STEP_OUTPUT_KEYS = ("prob", "label", "attention", "mask", "case_id", "is_virtual")
Device = Union[str, torch.device]


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
        "prob": torch.sigmoid(out["logits"].detach().squeeze(1)).float().cpu(),  # (B,)
        "label": batch["label"].detach().float().cpu(),  # (B,)
        "attention": out["attention"].detach().float().cpu(),  # (B, K)
        "mask": batch["mask"].detach().cpu(),  # (B, K)
        "case_id": list(batch["case_id"]),
        "is_virtual": is_virtual.detach().bool().cpu(),  # (B,)
    }


def make_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    device: Device = "cpu",
    prepare_batch: Callable[..., Dict[str, Any]] = prepare_bag_batch,
) -> Callable[[Engine, Optional[Mapping[str, Any]]], Optional[Dict[str, Any]]]:
    """One optimiser step on a batch of bags with ``loss_fn(model.forward_all(...), batch)["total"]``.

    ``loss_fn`` is a :class:`~ctmil.train.losses.MILSSLLoss`; with ``loss_fn.ssl == "relative"`` the step
    adds ``pairs``/``pair_labels`` to the batch and passes the pairs to ``forward_all``. The SSL term only
    uses real bags (the loss masks ``is_virtual`` rows).
    """
    relative = getattr(loss_fn, "ssl", "none") == "relative"

    def step(engine: Engine, batch: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        if batch is None:
            return None
        model.train()
        optimizer.zero_grad(set_to_none=True)
        b = prepare_batch(batch, device)
        if relative:
            _add_pairs(b)
        out = model.forward_all(b["patches"], b["mask"], pairs=b.get("pairs"))
        losses = loss_fn(out, b)
        losses["total"].backward()
        optimizer.step()
        result = _output(out, b)
        result.update({name: losses[key].detach().item() for name, key in (("loss", "total"), ("mil", "mil"), ("ssl", "ssl"))})
        return result

    return step


def make_eval_step(
    model: torch.nn.Module,
    device: Device = "cpu",
    prepare_batch: Callable[..., Dict[str, Any]] = prepare_bag_batch,
) -> Callable[[Engine, Mapping[str, Any]], Dict[str, Any]]:
    """Forward a batch of bags in eval mode without gradients; returns the step output (no losses)."""

    def step(engine: Engine, batch: Mapping[str, Any]) -> Dict[str, Any]:
        model.eval()
        with torch.no_grad():
            b = prepare_batch(batch, device)
            out = model.forward_all(b["patches"], b["mask"])
        return _output(out, b)

    return step


def _ran_step(engine: Engine, event: int) -> bool:
    return engine.state.output is not None


class StepsRun(MetricUsage):
    """Epoch-wise metric usage that updates only on iterations that ran a step (output is not ``None``)."""

    usage_name: str = "steps_run"

    def __init__(self) -> None:
        super().__init__(
            started=Events.EPOCH_STARTED,
            completed=Events.EPOCH_COMPLETED,
            iteration_completed=Events.ITERATION_COMPLETED(event_filter=_ran_step),
        )


def create_trainer(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    device: Device = "cpu",
) -> Engine:
    """Training engine; its epoch metrics ``loss``, ``mil`` and ``ssl`` average the steps of the epoch."""
    trainer = Engine(make_train_step(model, optimizer, loss_fn, device))
    for name in ("loss", "mil", "ssl"):
        Average(output_transform=lambda out, key=name: out[key]).attach(trainer, name, usage=StepsRun())
    return trainer


def create_evaluator(model: torch.nn.Module, device: Device = "cpu", threshold: float = 0.5) -> Engine:
    """Evaluation engine with :class:`~ctmil.evaluate.metrics.BagMetrics` (``accuracy`` ... ``auc``)."""
    evaluator = Engine(make_eval_step(model, device))
    BagMetrics(threshold=threshold).attach(evaluator, "bag_metrics")
    return evaluator
