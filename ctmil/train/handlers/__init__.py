"""Ignite handlers of the training engine, one per module, each with ``attach(engine)``."""

from ctmil.train.handlers.checkpoint import CheckpointHandler
from ctmil.train.handlers.tensorboard import TensorBoardHandler
from ctmil.train.handlers.validation import ValidationHandler
from ctmil.train.handlers.virtual_bags import VirtualBagHandler, balancing_count

__all__ = ["CheckpointHandler", "TensorBoardHandler", "ValidationHandler", "VirtualBagHandler", "balancing_count"]
