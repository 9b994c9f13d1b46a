"""BestWeights: model selection on the inner validation cases (train.json's ``select_best``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ignite.engine import Engine, Events

from ctmil.data.bags import BagDataset
from ctmil.train.handlers import BestWeights
from tests.train._bags import CHANNELS, make_bags, one_thread, train_tiny  # noqa: F401 (a fixture)


def _run(metrics, mode="max"):
    """A trainer of len(metrics) epochs whose 'validation' after epoch e reports metrics[e - 1]; the network's
    weight is set to e during epoch e. Returns the handler and the network after the run."""
    net = torch.nn.Linear(1, 1, bias=False)
    evaluator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: None)
    handler = BestWeights(net, evaluator, "val_auc", mode)
    handler.attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch(engine):
        with torch.no_grad():
            net.weight.fill_(float(engine.state.epoch))
        evaluator.state.metrics = {"val_auc": metrics[engine.state.epoch - 1]}
        evaluator.fire_event(Events.COMPLETED)

    trainer.run([0], max_epochs=len(metrics))
    return handler, net, trainer


@pytest.mark.parametrize("metrics,mode,epoch", [
    ([0.5, 0.8, 0.8, 0.6], "max", 3),  # a tie goes to the later epoch
    ([0.9, 0.1, 0.5], "max", 1),
    ([0.4, float("nan"), 0.3], "min", 3),  # nan never wins
    ([0.2, 0.7, 0.7], "min", 1),
])
def test_the_best_epoch_is_restored_at_the_end(metrics, mode, epoch):
    handler, net, trainer = _run(metrics, mode)
    assert float(net.weight) == epoch and handler.epoch == epoch


def test_without_a_finite_metric_the_last_weights_stay():
    handler, net, trainer = _run([float("nan"), float("nan")])
    assert float(net.weight) == 2 and handler.weights is None


def test_its_state_survives_a_checkpoint():
    handler, _, _ = _run([0.5, 0.9, 0.7])
    other = BestWeights(torch.nn.Linear(1, 1, bias=False), Engine(lambda e, b: None))
    other.load_state_dict(handler.state_dict())
    assert (other.best, other.epoch) == (0.9, 2) and float(other.weights["weight"]) == 2


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        BestWeights(torch.nn.Linear(1, 1), Engine(lambda e, b: None), mode="best")


@pytest.mark.usefixtures("one_thread")
def test_select_best_in_the_workflow_writes_the_selected_epochs_weights(tmp_path):
    labels = [1, 0, 0, 1, 0, 0, 1, 0]
    workflow = train_tiny(tmp_path, BagDataset(make_bags(labels, channels=CHANNELS)), max_epochs=3, val_interval=1, select_best=True,
                          **{"validate#dataset": BagDataset(make_bags([1, 0, 1, 0, 0], channels=CHANNELS))})
    record = json.loads((tmp_path / "model.json").read_text())
    selected = record["selected_epoch"]
    assert 1 <= selected <= 3 and record["select_best"] is True
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    last = torch.load(tmp_path / "checkpoints" / "checkpoint_3.pt", weights_only=True)  # the one checkpoint kept
    kept = last["best_weights"]
    assert kept["epoch"] == selected
    assert all(torch.equal(saved[k], kept["weights"][k]) for k in kept["weights"] if not k.startswith("fusion."))
    moved = [k for k in last["model"] if not k.startswith("fusion.") and not torch.equal(saved[k], last["model"][k])]
    assert bool(moved) == (selected != 3)  # model.pt is not the last epoch's weights unless the last epoch won
    assert math.isfinite(workflow.parser.get_parsed_content("train#best_weights").best)
