"""Train one MIL model on a set of bags: optimiser, engine, handlers, checkpoints and resume.

:func:`fit` wires the pieces together; every piece is usable on its own:
:func:`~ctmil.train.steps.create_trainer` (the thin engine), :class:`~ctmil.data.bags.EpochBags`
(the epoch's batches), :class:`~ctmil.train.handlers.virtual_bags.VirtualBagHandler`,
:class:`~ctmil.train.handlers.validation.ValidationHandler`,
:class:`~ctmil.train.handlers.checkpoint.CheckpointHandler` and
:class:`~ctmil.train.handlers.tensorboard.TensorBoardHandler`.

Defaults are the paper's (Table III, Sec. IV.D): Adam, lr 1e-4, betas (0.9, 0.999), weight decay 5e-4,
batch size 1, 50 epochs, mu 0.3, virtual bags from epoch 26 with alpha 0.025 and gamma 0.2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EpochOutputStore
from ignite.handlers.tqdm_logger import ProgressBar

from ctmil.data.bags import BagDataset, EpochBags
from ctmil.networks import MILNet
from ctmil.train.steps import create_evaluator, create_trainer, make_eval_step
from ctmil.train.handlers.checkpoint import CheckpointHandler
from ctmil.train.handlers.tensorboard import TensorBoardHandler
from ctmil.train.handlers.validation import ValidationHandler
from ctmil.train.handlers.virtual_bags import VirtualBagHandler, balancing_count
from ctmil.train.losses import MILSSLLoss

__all__ = [
    "TrainConfig",
    "Training",
    "VirtualBagConfig",
    "build_model",
    "build_training",
    "fit",
    "predict",
    "run_training",
]

logger = logging.getLogger(__name__)

Device = Union[str, torch.device]
_SSL = ("none", "absolute", "relative")


@dataclass
class VirtualBagConfig:
    """Virtual-bag generation (paper Sec. III.C, IV.D.2); see :class:`VirtualBagHandler`."""

    start_epoch: int = 26
    alpha: float = 0.025
    gamma: float = 0.2
    n_bags: Optional[int] = None  # None: n_negative - n_positive of the training bags (at least 0)


@dataclass
class TrainConfig:
    """Everything :func:`fit` needs besides the model and the bags.

    ``ssl`` is ``"none"``, ``"absolute"`` or ``"relative"``; ``virtual`` is ``None`` (no virtual bags) or a
    :class:`VirtualBagConfig`. ``eval_every`` = 0 disables validation during training. ``checkpoint_every``
    = 0 disables checkpoints (and resume). ``deterministic`` turns on ``torch.use_deterministic_algorithms``
    for the run.
    """

    epochs: int = 50
    batch_size: int = 1
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    mu: float = 0.3
    ssl: str = "none"
    ssl_reduction: str = "slice"
    virtual: Optional[VirtualBagConfig] = None
    threshold: float = 0.5
    seed: int = 0
    deterministic: bool = True
    eval_every: int = 0
    checkpoint_every: int = 1
    n_saved: int = 1
    tensorboard: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.virtual, Mapping):
            self.virtual = VirtualBagConfig(**self.virtual)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
        if self.ssl not in _SSL:
            raise ValueError(f"ssl must be one of {_SSL}, got {self.ssl!r}.")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas!r}.")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **changes: Any) -> "TrainConfig":
        """Build from a config mapping (unknown keys are an error), then apply ``changes``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown training keys {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**{**dict(values), **changes})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def build_model(network: Optional[Mapping[str, Any]] = None, seed: int = 0) -> MILNet:
    """``MILNet(**network)`` initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return MILNet(**dict(network or {}))


class _TorchRNG:
    """The global torch CPU RNG as a checkpointable object (dropout draws from it)."""

    def state_dict(self) -> Dict[str, Any]:
        return {"torch": torch.get_rng_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])


@dataclass
class Training:
    """The assembled run: call ``trainer.run(data, max_epochs=config.epochs)`` or use :func:`fit`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: MILSSLLoss
    trainer: Engine
    data: EpochBags
    config: TrainConfig
    virtual_bags: Optional[VirtualBagHandler] = None
    validation: Optional[ValidationHandler] = None
    checkpoint: Optional[CheckpointHandler] = None
    tensorboard: Optional[TensorBoardHandler] = None


def build_training(
    model: torch.nn.Module,
    train_data: BagDataset,
    config: TrainConfig,
    out_dir: "str | os.PathLike[str] | None" = None,
    val_data: Optional[BagDataset] = None,
    device: Device = "cpu",
) -> Training:
    """Optimiser, loss, engine and handlers for one run (nothing runs yet).

    Handler order on ``EPOCH_COMPLETED``: virtual bags, validation, TensorBoard, checkpoint (the checkpoint
    sees the finished epoch). Checkpoints go to ``out_dir/checkpoints``, TensorBoard events to
    ``out_dir/tensorboard``; without ``out_dir`` neither is written.
    """
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    loss_fn = MILSSLLoss(mu=config.mu, ssl=config.ssl, ssl_reduction=config.ssl_reduction)
    trainer = create_trainer(model, optimizer, loss_fn, device)
    v = config.virtual
    n_virtual = 0 if v is None else balancing_count(train_data.labels) if v.n_bags is None else v.n_bags
    data = EpochBags(train_data, config.batch_size, n_virtual, seed=config.seed)
    virtual_handler = None
    if v is not None:
        virtual_handler = VirtualBagHandler(
            train_data,
            sink=data.set_virtual,
            alpha=v.alpha,
            gamma=v.gamma,
            start_epoch=v.start_epoch,
            n_bags=n_virtual,
            threshold=config.threshold,
            seed=config.seed,
        )

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: data.set_epoch(engine.state.epoch))
    if virtual_handler is not None:
        virtual_handler.attach(trainer)
    validation = None
    if val_data is not None and config.eval_every > 0:
        evaluator = create_evaluator(model, device, config.threshold)
        validation = ValidationHandler(
            evaluator, EpochBags(val_data, config.batch_size, 0, shuffle=False), interval=config.eval_every
        )
        validation.attach(trainer)
    tensorboard = None
    checkpoint = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        if config.tensorboard:
            tensorboard = TensorBoardHandler(out_dir / "tensorboard")
            tensorboard.attach(trainer)
        if config.checkpoint_every > 0:
            objects: Dict[str, Any] = {"model": model, "optimizer": optimizer, "trainer": trainer, "rng": _TorchRNG()}
            if virtual_handler is not None:
                objects["virtual_bags"] = virtual_handler
            if validation is not None:
                objects["validation"] = validation
            checkpoint = CheckpointHandler(objects, out_dir / "checkpoints", config.checkpoint_every, config.n_saved)
            checkpoint.attach(trainer)
    if config.progress:
        ProgressBar(persist=False).attach(trainer, output_transform=lambda out: {"loss": out["loss"]} if out else {})
    return Training(model, optimizer, loss_fn, trainer, data, config, virtual_handler, validation, checkpoint, tensorboard)


@contextlib.contextmanager
def _reproducible(seed: int, deterministic: bool) -> Iterator[None]:
    """Seed the global torch RNG inside a fork (restored on exit) and optionally ask for deterministic kernels.

    ``warn_only``: on CPU every op used here has a deterministic kernel; on CUDA some (e.g. ``index_copy`` in
    ``MILNet``) have none, and training should warn rather than stop.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def run_training(training: Training, resume: bool = True) -> Training:
    """Run an assembled :class:`Training` to ``config.epochs``, resuming from its latest checkpoint if asked.

    The global torch RNG is seeded with ``config.seed`` inside a fork (the caller's RNG state is untouched)
    and, with ``config.deterministic``, deterministic algorithms are on for the run.
    """
    config = training.config
    try:
        with _reproducible(config.seed, config.deterministic):
            if resume and training.checkpoint is not None and training.checkpoint.resume():
                if training.trainer.state.epoch >= config.epochs:
                    logger.info("checkpoint already at epoch %d; nothing to train.", training.trainer.state.epoch)
                    return training
            training.trainer.run(training.data, max_epochs=config.epochs)
    finally:
        if training.tensorboard is not None:
            training.tensorboard.close()
    return training


def fit(
    model: torch.nn.Module,
    train_data: BagDataset,
    config: TrainConfig,
    out_dir: "str | os.PathLike[str] | None" = None,
    val_data: Optional[BagDataset] = None,
    device: Device = "cpu",
    resume: bool = True,
) -> Training:
    """Train ``model`` on ``train_data`` for ``config.epochs`` epochs; returns the assembled :class:`Training`.

    With ``out_dir`` and checkpoints on, a checkpoint is written every ``checkpoint_every`` epochs and, when
    ``resume`` is True, a run whose ``out_dir/checkpoints`` already holds one continues from the latest
    (same weights, optimiser state, virtual bags, data order and RNG as an uninterrupted run).
    """
    return run_training(build_training(model, train_data, config, out_dir, val_data, device), resume)


def predict(
    model: torch.nn.Module, data: BagDataset, batch_size: int = 1, device: Device = "cpu"
) -> Dict[str, List[Any]]:
    """Bag probabilities in dataset order: ``{"case_id": [...], "prob": [...], "label": [...]}``."""
    evaluator = Engine(make_eval_step(model, device))  # no metrics: labels may be unknown (-1)
    store = EpochOutputStore()
    store.attach(evaluator, "outputs")
    evaluator.run(EpochBags(data, batch_size, 0, shuffle=False))
    result: Dict[str, List[Any]] = {"case_id": [], "prob": [], "label": []}
    for out in evaluator.state.outputs:
        result["case_id"].extend(out["case_id"])
        result["prob"].extend(out["prob"].tolist())
        result["label"].extend(out["label"].tolist())
    return result
