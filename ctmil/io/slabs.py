"""Per-slice work of the lung masks split into slabs of slices and run in threads.

Numpy comparisons and ``scipy.ndimage`` filters and labelling release the GIL, so
slabs run side by side on the cores a machine has (``bench/preprocess.py`` shows the gain). Only work that is
independent per slice (or per slab of ``align`` slices) is split, and the slabs' results are joined in order, so the
result is the same, bit for bit, however many threads run it. Why our own code: the standard thread pool does the
scheduling; what may be split, and where, is the callers' to say.

``CTMIL_THREADS`` sets the number of threads (default: the CPUs this process may use, at most 8; 1 runs everything
in the calling thread).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["MIN_SLAB", "per_slab", "work_threads"]

#: The fewest slices in a slab: smaller ones cost more in scheduling than they save.
MIN_SLAB = 8


def work_threads() -> int:
    """How many threads per-slab work uses (``CTMIL_THREADS``, else the CPUs available, at most 8)."""
    given = os.environ.get("CTMIL_THREADS", "").strip()
    if given:
        try:
            return max(1, int(given))
        except ValueError:
            raise ValueError(f"CTMIL_THREADS must be a whole number, got {given!r}") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def _bounds(n: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``parts`` slabs ``[start, stop)`` covering ``0..n``, every start a multiple of ``align``."""
    units = -(-n // align)  # slabs are cut between groups of align slices
    parts = max(1, min(parts, units))
    edges = [min(n, round(k * units / parts) * align) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def per_slab(fn: Callable[..., "np.ndarray | tuple"], arrays: Sequence[np.ndarray], align: int = 1, threads: int | None = None):
    """``fn(*slabs)`` on slabs of ``arrays`` along their first axis, joined along it in order.

    ``fn`` must treat each slab on its own (no slice looks at another slab) and return an array, or a tuple of arrays,
    whose first axis runs along the slabs' (of ``ceil(len / align)`` items per slab when it works on groups of
    ``align`` slices). With one thread, or too few slices, it is ``fn(*arrays)``.
    """
    n = int(arrays[0].shape[0])
    threads = work_threads() if threads is None else max(1, int(threads))
    parts = min(2 * threads, n // MIN_SLAB)  # two slabs a thread: smaller slabs stay in the caches
    if threads == 1 or parts < 2:
        return fn(*arrays)
    bounds = _bounds(n, parts, align)
    with ThreadPoolExecutor(min(threads, len(bounds)), thread_name_prefix="ctmil-slab") as pool:
        results = list(pool.map(lambda ab: fn(*(a[ab[0] : ab[1]] for a in arrays)), bounds))
    if isinstance(results[0], tuple):
        return tuple(None if parts_[0] is None else np.concatenate(parts_, axis=0) for parts_ in zip(*results))
    return np.concatenate(results, axis=0)
