"""The training and evaluation engines: MONAI's ``Trainer``/``Evaluator`` base engines driven by ctmil's steps.

Why not ``SupervisedTrainer``: its iteration is ``network(inputs)`` → ``loss(pred, target)``. A bag step needs
every output of the network (attention for the virtual-bag handler, SSL logits for the loss), the whole batch in
the loss (positions, virtual-bag flags) and must skip the unused virtual-bag slots of an epoch (``None``
batches). ``monai.engines.Trainer`` / ``Evaluator`` are the same Ignite engines without that contract: they
take our step as ``iteration_update`` and give the MONAI handlers (``ValidationHandler``, ``StatsHandler``,
``TensorBoardStatsHandler``, ``CheckpointLoader``) and ``$@train#trainer.run()`` everything they expect.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from ignite.engine import Events
from ignite.handlers import EpochOutputStore
from ignite.handlers.tqdm_logger import ProgressBar
from ignite.metrics import Average
from ignite.metrics.metric import MetricUsage
from monai.engines import Evaluator, Trainer

from ctmil.data.bags import BagDataset
from ctmil.data.epochs import EpochBags
from ctmil.stats.calibration import apply_calibration
from ctmil.stats.metrics import roc_auc
from ctmil.train.metrics import BagMetrics
from ctmil.stats.operating_point import check_operating_point
from ctmil.networks.predict import BagInferer
from ctmil.train.steps import make_eval_step, make_train_step
from ctmil.keys import Columns

__all__ = ["StepsRun", "create_evaluator", "create_trainer", "predict"]

Device = Union[str, torch.device]


def _ran_step(engine: Any, event: int) -> bool:
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


def _loss_value(out: Mapping[str, Any]) -> Dict[str, float]:
    return {"loss": float(out["loss"])} if out else {}


def create_trainer(
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: torch.nn.Module,
    train_data_loader: EpochBags,
    max_epochs: int = 50,
    device: Device = "cpu",
    inferer: Optional[BagInferer] = None,
    train_handlers: Sequence[Any] = (),
    amp: bool = False,
    amp_dtype: "Optional[Union[str, torch.dtype]]" = None,
    progress: bool = False,
    non_blocking: bool = False,
) -> Trainer:
    """The bag trainer: ``trainer.run()`` trains ``network`` for ``max_epochs`` epochs over ``train_data_loader``.

    The epoch order of ``train_data_loader`` follows ``trainer.state.epoch`` (``set_epoch`` at
    ``EPOCH_STARTED``, before any handler), and ``state.metrics`` holds the epoch means of ``loss``, ``mil``
    and ``ssl`` over the steps that ran (accumulated on ``device``, so no step waits for the device; read once
    per epoch). ``train_handlers`` attach in order after that. ``amp``/``amp_dtype``: see
    :func:`ctmil.train.steps.resolve_amp_dtype`; ``non_blocking``: asynchronous host-to-device batch copies.
    """
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}.")
    device = torch.device(device)
    step = make_train_step(network, optimizer, loss_function, device, inferer, amp=amp, amp_dtype=amp_dtype,
                           non_blocking=non_blocking)
    trainer = Trainer(device=device, max_epochs=max_epochs, data_loader=train_data_loader,
                      epoch_length=len(train_data_loader), iteration_update=step, decollate=False)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: train_data_loader.set_epoch(engine.state.epoch))
    for name in ("loss", "mil", "ssl"):
        Average(output_transform=lambda out, key=name: out[key], device=device).attach(trainer, name, usage=StepsRun())
    for handler in train_handlers:
        if handler is not None:
            handler.attach(trainer)
    if progress:
        ProgressBar(persist=False).attach(trainer, output_transform=_loss_value)
    return trainer


def _prob_label(output: Mapping[str, Any]):
    return output["prob"], output[Columns.LABEL]


def _calibrated_prob_label(calibration: Mapping[str, Any], output: Mapping[str, Any]):
    """``(calibrated prob (B,), label (B,))`` of an evaluation step's output (read on the host: evaluation only)."""
    prob = output["prob"].detach().float().cpu()
    return torch.as_tensor(apply_calibration(calibration, prob.numpy()), dtype=torch.float64), output[Columns.LABEL]


def create_evaluator(
    network: torch.nn.Module,
    val_data_loader: Optional[EpochBags],
    device: Device = "cpu",
    inferer: Optional[BagInferer] = None,
    threshold: float = 0.5,
    val_handlers: Sequence[Any] = (),
    metrics: bool = True,
    operating_point: Optional[Mapping[str, Any]] = None,
) -> Optional[Evaluator]:
    """The bag evaluator: ``evaluator.run()`` predicts every bag of ``val_data_loader``.

    With ``metrics`` (labels known) its key metric is ``val_auc`` and ``state.metrics`` also holds
    accuracy, sensitivity, specificity, F1 and AUC at ``threshold`` (:class:`BagMetrics`). With an
    ``operating_point`` (:mod:`ctmil.stats.operating_point`, e.g. a trained model's) both score the calibrated
    probabilities and the point's threshold replaces ``threshold``. Without a loader (no validation set) there is
    nothing to evaluate and the result is ``None``.
    """
    from ignite.metrics import EpochMetric

    if val_data_loader is None:
        return None

    key = additional = None
    if metrics:
        transform, cut = _prob_label, threshold
        if operating_point is not None:
            point = check_operating_point(operating_point)
            transform, cut = functools.partial(_calibrated_prob_label, point["calibration"]), point[Columns.THRESHOLD]
        key = {"val_auc": EpochMetric(roc_auc, output_transform=transform, check_compute_fn=False)}
        additional = {"bag_metrics": BagMetrics(threshold=cut, output_transform=transform)}
    return Evaluator(
        device=torch.device(device), val_data_loader=val_data_loader, epoch_length=len(val_data_loader),
        iteration_update=make_eval_step(network, device, inferer), key_val_metric=key,
        additional_metrics=additional, val_handlers=[h for h in val_handlers if h is not None] or None, decollate=False,
    )


def predict(
    network: torch.nn.Module,
    data: BagDataset,
    batch_size: int = 1,
    device: Device = "cpu",
    inferer: Optional[BagInferer] = None,
) -> Dict[str, List[Any]]:
    """Bag probabilities in dataset order: ``{"case_id": [...], "prob": [...], "label": [...]}``."""
    evaluator = create_evaluator(network, EpochBags(data, batch_size, 0, shuffle=False), device, inferer, metrics=False)
    store = EpochOutputStore()
    store.attach(evaluator, "outputs")
    evaluator.run()
    result: Dict[str, List[Any]] = {Columns.CASE_ID: [], "prob": [], Columns.LABEL: []}
    for out in evaluator.state.outputs:
        result[Columns.CASE_ID].extend(out[Columns.CASE_ID])
        result["prob"].extend(out["prob"].tolist())
        result[Columns.LABEL].extend(out[Columns.LABEL].tolist())
    return result
