"""Virtual positive bags from attention (paper Sec. III.C, IV.D.2) as an Ignite handler.

Collect-then-publish, one epoch at a time:

* ``EPOCH_STARTED``: empty the key-instance and regular-instance pools (pools hold only what the current
  epoch saw, so the virtual bags of epoch ``e + 1`` come from the attention of epoch ``e``: "in each
  training epoch, the model generates virtual bags ... used as a part of training data in the next epoch").
* ``ITERATION_COMPLETED``: keep the step output as it is (device tensors; nothing is read back, so a GPU step
  never waits). The outputs are read once, at ``EPOCH_COMPLETED`` or when the pools are asked for: for every
  *real* positive bag predicted correctly (``prob >= threshold``) in the
  step output, the ``max(1, ⌊αK⌋)`` instances with the highest attention go to the key pool and the
  ``max(1, ⌊γK⌋)`` with the lowest go to the regular pool (never the same instance twice: for a tiny bag
  the regular share is cut to ``K - max(1, ⌊αK⌋)``). ``K`` is the bag's number of real instances.
  The ``max(1, ·)`` keeps small bags (``⌊0.025 K⌋ = 0`` for ``K < 40``) contributing one key instance.
* ``EPOCH_COMPLETED`` of epoch ``e >= start_epoch`` (1-based, the paper's 26th epoch): build ``n_bags``
  virtual bags of ``max(1, ⌊αK̄⌋)`` key + ``⌊(1 - α)K̄⌋`` regular instances drawn from the pools
  (``K̄`` = mean size of the real training bags; without replacement within a bag unless the pool is too
  small) and hand them to ``sink``; they replace the previous virtual bags for epoch ``e + 1``. With an
  empty pool no virtual bags are made for the next epoch.

Pools and virtual bags hold instance references ``(bag index, instance index)`` into the training
``BagDataset`` (patches and positions are gathered from the cached bags when a batch is built), so memory
and checkpoints stay small. The handler's state (pools, virtual bags, RNG) round-trips through
``state_dict``/``load_state_dict``; loading also re-publishes the virtual bags to ``sink``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from ignite.engine import Engine, Events

from ctmil.data.bags import BagDataset
from ctmil.keys import Columns

__all__ = ["VirtualBagHandler", "balancing_count", "virtual_slots"]

logger = logging.getLogger(__name__)


def balancing_count(labels: Sequence[float], gap_fraction: float = 1.0) -> int:
    """Virtual positive bags per epoch from the class gap: ``round(gap_fraction · max(0, n_negative - n_positive))``
    (``gap_fraction`` 1 balances the classes, as the paper does)."""
    n_pos = sum(1 for y in labels if y == 1.0)
    n_neg = sum(1 for y in labels if y == 0.0)
    return int(round(float(gap_fraction) * max(0, n_neg - n_pos)))


def _identity(output: Any) -> Any:
    return output


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """All-gather ``(N_r, 2)`` long tensors of different ``N_r`` across ranks (padded with -1 for the collective)."""
    import ignite.distributed as idist

    if idist.get_world_size() == 1:
        return rows
    n = torch.tensor([rows.shape[0]], dtype=torch.long)
    sizes = idist.all_gather(n)
    padded = torch.full((int(sizes.max()), 2), -1, dtype=torch.long)
    padded[: rows.shape[0]] = rows
    gathered = idist.all_gather(padded.unsqueeze(0))  # (W, max N_r, 2)
    return torch.cat([g[: int(k)] for g, k in zip(gathered, sizes.tolist())])


def _in_order(rows: torch.Tensor, first: Mapping[int, int]) -> torch.Tensor:
    """``rows`` sorted (stably) by where their bag first appears in the epoch order."""
    if not len(rows):
        return rows
    return rows[sorted(range(len(rows)), key=lambda r: first.get(int(rows[r, 0]), 1 << 30))]


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}.")
    return float(value)


class VirtualBagHandler:
    """Build virtual positive bags from the key/regular instances of correctly predicted positive bags.

    Args:
        dataset: the real training bags; the step output's ``case_id`` must name bags of this dataset.
        sink: called with the list of virtual bags (each ``(N, 2)`` int64 rows ``(bag index, instance index)``)
            whenever they change, e.g. :meth:`ctmil.data.bags.EpochBags.set_virtual`.
        alpha: key-instance fraction α (0.025).
        gamma: regular-instance fraction γ (0.2).
        start_epoch: first epoch (1-based) whose pools make virtual bags (26); they are used from the next epoch.
        n_bags: virtual bags per epoch; ``None`` = ``gap_fraction`` of ``max(0, n_negative - n_positive)`` of
            ``dataset`` (:func:`balancing_count`).
        gap_fraction: share of the class gap filled with virtual bags when ``n_bags`` is ``None`` (1 = balanced).
        ramp_epochs: grow the number of virtual bags linearly over this many epochs from ``start_epoch``
            (``ceil(n_bags · k / ramp_epochs)`` at the k-th epoch) instead of switching the class mix at once; 0 = at once.
        threshold: a positive bag is predicted correctly when ``prob >= threshold``.
        seed: seed of the handler's own ``torch.Generator`` (sampling from the pools).
        output_transform: maps ``engine.state.output`` to a dict with ``prob (B,)``, ``label (B,)``,
            ``attention (B, K)``, ``mask (B, K)``, ``case_id`` (list) and ``is_virtual (B,)``; ``None`` skips.
        gather: under data parallelism, draw from the union of every rank's pools (all-gathered before each
            draw; the same seeded draw on every rank gives every rank the same virtual bags).
        epoch_order: with ``gather``, a callable returning this epoch's shared item order (e.g.
            :meth:`ctmil.data.epochs.EpochBags.order`); gathered pools are put in the order one process
            would have collected them, so the draw matches a single-process run.
    """

    def __init__(
        self,
        dataset: BagDataset,
        sink: Callable[[List[torch.Tensor]], None],
        alpha: float = 0.025,
        gamma: float = 0.2,
        start_epoch: int = 26,
        n_bags: Optional[int] = None,
        gap_fraction: float = 1.0,
        ramp_epochs: int = 0,
        threshold: float = 0.5,
        seed: int = 0,
        output_transform: Callable[[Any], Optional[Mapping[str, Any]]] = _identity,
        gather: bool = False,
        epoch_order: Optional[Callable[[], List[int]]] = None,
    ) -> None:
        self.alpha = _check_fraction("alpha", alpha)
        self.gamma = _check_fraction("gamma", gamma)
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 1:
            raise ValueError(f"start_epoch must be an int >= 1, got {start_epoch!r}.")
        if n_bags is not None and (isinstance(n_bags, bool) or not isinstance(n_bags, int) or n_bags < 0):
            raise ValueError(f"n_bags must be None or an int >= 0, got {n_bags!r}.")
        if len(dataset) == 0:
            raise ValueError("the training dataset has no bags.")
        self.dataset = dataset
        self.sink = sink
        self.start_epoch = start_epoch
        self.threshold = float(threshold)
        self.output_transform = output_transform
        self.gather = bool(gather)
        self.epoch_order = epoch_order
        if isinstance(gap_fraction, bool) or not isinstance(gap_fraction, (int, float)) or not 0.0 <= gap_fraction <= 10.0:
            raise ValueError(f"gap_fraction must be a number in [0, 10], got {gap_fraction!r}.")
        if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) or ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be an int >= 0, got {ramp_epochs!r}.")
        self.n_bags = balancing_count(dataset.labels, gap_fraction) if n_bags is None else n_bags
        self.ramp_epochs = ramp_epochs
        self.mean_bag_size = sum(dataset.bag_size(i) for i in range(len(dataset))) / len(dataset)  # K̄
        self.n_key = max(1, math.floor(self.alpha * self.mean_bag_size))
        self.n_regular = math.floor((1.0 - self.alpha) * self.mean_bag_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._key: List[torch.Tensor] = []  # chunks of (n, 2) refs collected this epoch
        self._regular: List[torch.Tensor] = []
        self._pending: List[Mapping[str, Any]] = []  # step outputs of this epoch not yet read (device tensors)
        self.virtual: List[torch.Tensor] = []  # the published virtual bags, (N, 2) refs each
        self.made_at_epoch = 0  # epoch whose pools made self.virtual (0 = none yet)

    # ---------------------------------------------------------------- Ignite wiring
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.publish)

    def reset(self, engine: Optional[Engine] = None) -> None:
        self._key, self._regular, self._pending = [], [], []

    @property
    def key_pool(self) -> torch.Tensor:
        """Key-instance references collected so far this epoch, ``(N, 2)`` int64."""
        self._read_pending()
        return torch.cat(self._key) if self._key else torch.empty(0, 2, dtype=torch.long)

    @property
    def regular_pool(self) -> torch.Tensor:
        """Regular-instance references collected so far this epoch, ``(N, 2)`` int64."""
        self._read_pending()
        return torch.cat(self._regular) if self._regular else torch.empty(0, 2, dtype=torch.long)

    def split_sizes(self, k: int) -> Tuple[int, int]:
        """``(n_key, n_regular)`` taken from a correctly predicted positive bag of ``k`` real instances."""
        n_top = min(k, max(1, math.floor(self.alpha * k)))
        n_low = min(k - n_top, max(1, math.floor(self.gamma * k)))
        return n_top, n_low

    def collect(self, engine: Engine) -> None:
        """Keep this step's output (on its device, unread) until the pools are needed."""
        out = self.output_transform(engine.state.output)
        if out is not None:
            self._pending.append({k: out[k] for k in ("prob", Columns.LABEL, "mask", "attention", "is_virtual", Columns.CASE_ID)})

    def _read_pending(self) -> None:
        """Move the kept outputs to the host in one go and add their key/regular instances to the pools."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = {k: torch.cat([o[k].detach().reshape(-1) for o in pending]).cpu() for k in ("prob", Columns.LABEL, "is_virtual")}
        wanted = ~flat["is_virtual"].bool() & (flat[Columns.LABEL] == 1.0) & (flat["prob"].double() >= self.threshold)  # (N_bags,)
        row = 0
        for out in pending:
            n = len(out[Columns.CASE_ID])
            rows = [i for i in range(n) if bool(wanted[row + i])]
            row += n
            if rows:
                self._add_bags(out[Columns.CASE_ID], rows, out["mask"][rows].cpu(), out["attention"][rows].detach().cpu())

    def _add_bags(self, case_ids: Sequence[str], rows: Sequence[int], mask: torch.Tensor, attention: torch.Tensor) -> None:
        """Key and regular instances of the correctly predicted positive bags ``rows`` of one step output."""
        for j, i in enumerate(rows):
            case_id = case_ids[i]
            real = torch.nonzero(mask[j]).squeeze(1)  # (K,) instance indices of the bag
            n_top, n_low = self.split_sizes(real.numel())
            order = torch.argsort(attention[j][real], descending=True, stable=True)  # (K,) high -> low
            bag = self.dataset.index_of(case_id)
            key = real[order[:n_top]]
            low = real[order[real.numel() - n_low :]] if n_low > 0 else real[:0]
            self._key.append(torch.stack([torch.full_like(key, bag), key], dim=1))
            self._regular.append(torch.stack([torch.full_like(low, bag), low], dim=1))

    def _draw(self, pool: torch.Tensor, n: int) -> torch.Tensor:
        if n == 0:
            return pool[:0]
        if pool.shape[0] >= n:
            return pool[torch.randperm(pool.shape[0], generator=self.generator)[:n]]
        return pool[torch.randint(pool.shape[0], (n,), generator=self.generator)]

    def pools(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(key, regular)`` references to draw from: this process's pools, or with ``gather`` every rank's."""
        key, regular = self.key_pool, self.regular_pool
        if not self.gather:
            return key, regular
        key, regular = gather_rows(key), gather_rows(regular)
        if self.epoch_order is not None:
            first = {item: i for i, item in reversed(list(enumerate(self.epoch_order())))}
            key, regular = (_in_order(rows, first) for rows in (key, regular))
        return key, regular

    def count(self, epoch: int) -> int:
        """Virtual bags made at the end of ``epoch`` (for the next one): ``n_bags``, ramped when ``ramp_epochs``."""
        if epoch < self.start_epoch:
            return 0
        if self.ramp_epochs == 0:
            return self.n_bags
        return math.ceil(self.n_bags * min(1.0, (epoch - self.start_epoch + 1) / self.ramp_epochs))

    def make_bags(self, n: Optional[int] = None) -> List[torch.Tensor]:
        """Draw ``n`` (default ``n_bags``) virtual bags from the current pools (empty if a needed pool is empty)."""
        key, regular = self.pools()
        if key.shape[0] == 0 or (self.n_regular > 0 and regular.shape[0] == 0):
            return []
        bags = []
        for _ in range(self.n_bags if n is None else n):
            refs = torch.cat([self._draw(key, self.n_key), self._draw(regular, self.n_regular)])  # (N, 2)
            bags.append(refs[torch.randperm(refs.shape[0], generator=self.generator)])
        return bags

    def publish(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch >= self.start_epoch:
            self.virtual = self.make_bags(self.count(epoch))
            self.made_at_epoch = epoch
            if self.n_bags > 0 and not self.virtual:
                logger.info("epoch %d: no correctly predicted positive bag, no virtual bags next epoch.", epoch)
            self.sink(self.virtual)
        engine.state.metrics["n_virtual_bags"] = len(self.virtual)
        engine.state.metrics["key_pool_size"] = int(self.key_pool.shape[0])

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {
            "key_pool": self.key_pool,
            "regular_pool": self.regular_pool,
            "virtual": [v.clone() for v in self.virtual],
            "made_at_epoch": self.made_at_epoch,
            "rng_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._pending = []
        self._key = [state["key_pool"].long().clone()] if state["key_pool"].numel() else []
        self._regular = [state["regular_pool"].long().clone()] if state["regular_pool"].numel() else []
        self.virtual = [torch.as_tensor(v).long().clone() for v in state["virtual"]]
        self.made_at_epoch = int(state["made_at_epoch"])
        self.generator.set_state(state["rng_state"])
        self.sink(self.virtual)


def virtual_slots(dataset: BagDataset, n_bags: int | None = None, enabled: bool = True, gap_fraction: float = 1.0) -> int:
    """Virtual-bag capacity per epoch: ``n_bags``, or ``gap_fraction`` of ``n_negative - n_positive`` of ``dataset``
    when ``None`` (as :class:`VirtualBagHandler` counts them): what ``train.json`` gives ``EpochBags`` as its virtual slots."""
    if not enabled:
        return 0
    return balancing_count(dataset.labels, gap_fraction) if n_bags is None else int(n_bags)
