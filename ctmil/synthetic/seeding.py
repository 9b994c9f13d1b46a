"""Where the generator's randomness comes from: a numpy Generator passed in, or one made from a seed.

No code under ``ctmil.synthetic`` touches the global numpy RNG; every draw comes from a generator that these
helpers hand out, so outputs (UIDs included) depend only on the arguments.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_generator", "check_seed"]


def _is_seed(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def check_seed(seed: Any) -> int:
    """``seed`` as a non-negative int (bools refused), or ValueError."""
    if not _is_seed(seed):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def as_generator(rng_or_seed: np.random.Generator | np.random.SeedSequence | int) -> np.random.Generator:
    """Return a numpy Generator from a Generator (returned as is), a SeedSequence or a non-negative int seed."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, np.random.SeedSequence):
        return np.random.default_rng(rng_or_seed)
    if _is_seed(rng_or_seed):
        return np.random.default_rng(int(rng_or_seed))
    raise ValueError(f"expected a numpy Generator, a SeedSequence or a non-negative int seed, got {rng_or_seed!r}")
