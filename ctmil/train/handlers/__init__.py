"""Ignite handlers of the bag engines, one per module, each with ``attach(engine)``.

Validation, statistics logging and TensorBoard use MONAI's own handlers (``ValidationHandler``,
``StatsHandler``, ``TensorBoardStatsHandler``); these are the ones MONAI has no equivalent for.
"""

from ctmil.train.handlers.best_weights import BestWeights
from ctmil.train.handlers.checkpoint import CheckpointHandler, TorchRNGState
from ctmil.train.handlers.density_fusion import DensityFusionHandler
from ctmil.train.handlers.end_of_training import EndOfTraining
from ctmil.train.handlers.metrics_writer import MetricsWriter
from ctmil.train.handlers.model_writer import ModelWriter, save_model
from ctmil.train.handlers.operating_point import OperatingPointHandler
from ctmil.train.handlers.prediction_writer import PredictionWriter
from ctmil.train.handlers.virtual_bags import VirtualBagHandler, balancing_count

__all__ = ["BestWeights", "CheckpointHandler", "DensityFusionHandler", "EndOfTraining", "MetricsWriter", "ModelWriter", "OperatingPointHandler", "PredictionWriter", "TorchRNGState", "VirtualBagHandler", "balancing_count", "save_model"]
