"""Validation, checkpoint and TensorBoard handlers on Engines whose update does almost nothing."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from ctmil.train.handlers.checkpoint import CheckpointHandler
from ctmil.train.handlers.tensorboard import TensorBoardHandler
from ctmil.train.handlers.validation import ValidationHandler
from ctmil.evaluate.metrics import BagMetrics, binary_metrics

VAL_BATCHES = [
    {"prob": torch.tensor([0.9, 0.3]), "label": torch.tensor([1.0, 0.0])},
    {"prob": torch.tensor([0.6, 0.2]), "label": torch.tensor([0.0, 1.0])},
]


class Counter:
    """A stateful object: counts the iterations it saw."""

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, state):
        self.n = int(state["n"])


@pytest.mark.parametrize("interval,epochs,expected", [(1, 3, [1, 2, 3]), (2, 5, [2, 4, 5]), (4, 3, [3])])
def test_validation_runs_on_schedule_and_publishes_metrics(interval, epochs, expected):
    evaluator = Engine(lambda e, b: b)
    BagMetrics().attach(evaluator, "bag_metrics")
    handler = ValidationHandler(evaluator, VAL_BATCHES, interval=interval)
    trainer = Engine(lambda e, b: None)
    handler.attach(trainer)
    trainer.run([0, 1], max_epochs=epochs)
    assert [int(h["epoch"]) for h in handler.history] == expected
    reference = binary_metrics([0.9, 0.3, 0.6, 0.2], [1, 0, 0, 1])
    for name, value in reference.items():
        assert trainer.state.metrics[f"val_{name}"] == pytest.approx(value)
        assert handler.history[-1][name] == pytest.approx(value)
    restored = ValidationHandler(evaluator, VAL_BATCHES, interval=interval)
    restored.load_state_dict(handler.state_dict())
    assert restored.history == handler.history


def test_validation_rejects_bad_interval():
    with pytest.raises(ValueError):
        ValidationHandler(Engine(lambda e, b: b), [], interval=0)


def test_checkpoint_saves_prunes_and_resumes(tmp_path):
    counter = Counter()
    trainer = Engine(lambda e, b: setattr(counter, "n", counter.n + 1))
    handler = CheckpointHandler({"counter": counter, "trainer": trainer}, tmp_path / "ck", every=2, n_saved=1)
    handler.attach(trainer)
    trainer.run([0, 1, 2], max_epochs=5)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["checkpoint_4.pt"]
    assert torch.load(handler.latest(), weights_only=True)["counter"]["n"] == 12

    counter2 = Counter()
    trainer2 = Engine(lambda e, b: setattr(counter2, "n", counter2.n + 1))
    handler2 = CheckpointHandler({"counter": counter2, "trainer": trainer2}, tmp_path / "ck", every=2, n_saved=1)
    handler2.attach(trainer2)
    assert handler2.resume()
    assert counter2.n == 12 and trainer2.state.epoch == 4
    trainer2.run([0, 1, 2], max_epochs=6)
    assert counter2.n == 18
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["checkpoint_6.pt"]


def test_checkpoint_resume_without_files(tmp_path):
    handler = CheckpointHandler({"counter": Counter()}, tmp_path / "none")
    assert handler.latest() is None and not handler.resume()


def test_tensorboard_writes_scalar_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Engine(lambda e, b: None)

    def put_metrics(engine):
        engine.state.metrics.update({"loss": 1.0 / engine.state.epoch, "bag_metrics": {"auc": 0.5}, "flag": True})

    trainer.add_event_handler(Events.EPOCH_COMPLETED, put_metrics)
    TensorBoardHandler(tmp_path / "tb").attach(trainer)
    trainer.run([0], max_epochs=3)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/loss"]
    assert [(s.step, round(s.value, 4)) for s in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
