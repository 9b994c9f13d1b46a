"""The steps that run once when training completes, each after the steps it names (issue 20: no silent list order).

Model selection (:class:`~ctmil.train.handlers.BestWeights`) restores the chosen weights; the density fusion
(:class:`~ctmil.train.handlers.DensityFusionHandler`) is fitted on those weights; the operating point
(:class:`~ctmil.train.handlers.OperatingPointHandler`) is learnt on the fused network; the
:class:`~ctmil.train.handlers.ModelWriter` writes what all three made. Each takes the ones it depends on as constructor
arguments and calls their :meth:`EndOfTraining.ensure` before its own step, so the order in which a config lists or
attaches them does not matter, and each step runs once per run.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ignite.engine import Engine, Events

__all__ = ["EndOfTraining"]


class EndOfTraining:
    """Base of a step run once at ``COMPLETED``, after ``after`` (steps of this kind; ``None`` entries are skipped)."""

    def __init__(self, after: Iterable[Optional["EndOfTraining"]] = ()) -> None:
        self.after = [step for step in after if step is not None]
        self._done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.COMPLETED, self.ensure)

    def _reset(self, engine: Engine) -> None:
        self._done = False

    def ensure(self, engine: Engine) -> None:
        """Run the steps this one depends on, then this one, unless it already ran in this run."""
        if self._done:
            return
        self._done = True
        for step in self.after:
            step.ensure(engine)
        self.run(engine)

    def run(self, engine: Engine) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError
