"""ctmil.networks: instance encoder, attention MIL pooling, SSL heads and the bag network."""

from ctmil.networks.density import DensityBranch
from ctmil.networks.encoder import LeNetEncoder
from ctmil.networks.fusion import DensityFusion
from ctmil.networks.heads import MLPHead
from ctmil.networks.milnet import DENSITY_USES, MILNet
from ctmil.networks.pairs import (
    ANCHOR_POSITIONS,
    DIRECTION_OFFSETS,
    DIRECTIONS,
    GRID_COLS,
    GRID_ROWS,
    pairs_for_batch,
    relative_pairs,
)
from ctmil.networks.pooling import GatedAttentionPool
from ctmil.networks.utils import he_init_

__all__ = [
    "ANCHOR_POSITIONS",
    "DENSITY_USES",
    "DIRECTION_OFFSETS",
    "DIRECTIONS",
    "DensityBranch",
    "DensityFusion",
    "GRID_COLS",
    "GRID_ROWS",
    "GatedAttentionPool",
    "LeNetEncoder",
    "MILNet",
    "MLPHead",
    "he_init_",
    "pairs_for_batch",
    "relative_pairs",
]
