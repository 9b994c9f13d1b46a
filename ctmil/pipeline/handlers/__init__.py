"""Ignite handlers of the training engine, one per module, each with ``attach(engine)``."""

from ctmil.pipeline.handlers.checkpoint import CheckpointHandler
from ctmil.pipeline.handlers.tensorboard import TensorBoardHandler
from ctmil.pipeline.handlers.validation import ValidationHandler
from ctmil.pipeline.handlers.virtual_bags import VirtualBagHandler, balancing_count

__all__ = ["CheckpointHandler", "TensorBoardHandler", "ValidationHandler", "VirtualBagHandler", "balancing_count"]
