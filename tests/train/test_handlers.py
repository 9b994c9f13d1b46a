"""Checkpoint, model and prediction writers on Engines whose update does almost nothing."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from ctmil.train.handlers.checkpoint import CheckpointHandler
from ctmil.train.handlers import ModelWriter, PredictionWriter
from ctmil.networks import MILNet

OUTPUTS = [
    {"prob": torch.tensor([0.9, 0.3]), "label": torch.tensor([1.0, 0.0]), "case_id": ["a", "b"]},
    None,  # a skipped virtual-bag slot
    {"prob": torch.tensor([0.6]), "label": torch.tensor([0.0]), "case_id": ["c"]},
]


class Counter:
    """A stateful object: counts the iterations it saw."""

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, state):
        self.n = int(state["n"])


def test_checkpoint_saves_prunes_and_resumes(tmp_path):
    counter = Counter()
    trainer = Engine(lambda e, b: setattr(counter, "n", counter.n + 1))
    handler = CheckpointHandler({"counter": counter}, tmp_path / "ck", every=2, n_saved=1, resume=False)
    handler.attach(trainer)  # adds the trainer itself to what is saved
    trainer.run([0, 1, 2], max_epochs=5)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["checkpoint_4.pt"]
    assert torch.load(handler.latest(), weights_only=True)["counter"]["n"] == 12

    counter2 = Counter()
    trainer2 = Engine(lambda e, b: setattr(counter2, "n", counter2.n + 1))
    handler2 = CheckpointHandler({"counter": counter2, "optional": None}, tmp_path / "ck", every=2, n_saved=1)
    handler2.attach(trainer2)  # resume=True: loads the latest checkpoint when the run starts
    seen = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append((e.state.epoch, counter2.n)))
    trainer2.run([0, 1, 2], max_epochs=6)
    assert seen == [(5, 12), (6, 15)]  # continued after epoch 4 with the restored counter
    assert counter2.n == 18
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["checkpoint_6.pt"]


def test_checkpoint_resume_without_files(tmp_path):
    handler = CheckpointHandler({"counter": Counter()}, tmp_path / "none")
    assert handler.latest() is None and not handler.resume()




def test_checkpoint_on_a_reading_rank_resumes_but_never_writes(tmp_path):
    counter = Counter()
    trainer = Engine(lambda e, b: setattr(counter, "n", counter.n + 1))
    CheckpointHandler({"counter": counter}, tmp_path / "ck", save=False).attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert counter.n == 4 and not list((tmp_path / "ck").glob("*.pt"))


def test_checkpoint_of_a_finished_run_trains_nothing_more(tmp_path):
    counter = Counter()
    trainer = Engine(lambda e, b: setattr(counter, "n", counter.n + 1))
    CheckpointHandler({"counter": counter}, tmp_path / "ck").attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    again, trainer2 = Counter(), None
    trainer2 = Engine(lambda e, b: setattr(again, "n", again.n + 1))
    CheckpointHandler({"counter": again}, tmp_path / "ck").attach(trainer2)
    trainer2.run([0, 1], max_epochs=2)
    assert again.n == 4 and trainer2.state.epoch == 2  # restored, no extra iteration


def test_model_writer_writes_weights_only_and_how_to_rebuild(tmp_path):
    import json

    net = MILNet(feature_dim=16, attention_dim=8, ssl_hidden=8, gated=False)
    trainer = Engine(lambda e, b: None)
    ModelWriter(net, tmp_path / "m", info={"ssl": "absolute", "preprocessing": {"spatial_size": (180, 240)}}).attach(trainer)
    ModelWriter(net, tmp_path / "never", save=False).attach(trainer)
    trainer.run([0], max_epochs=2)
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["network"]["gated"] is False and info["network"]["feature_dim"] == 16
    assert info["preprocessing"]["spatial_size"] == [180, 240] and info["epochs"] == 2 and info["ssl"] == "absolute"
    rebuilt = MILNet(**info["network"])
    rebuilt.load_state_dict(state)
    assert not (tmp_path / "never").exists()


def test_prediction_writer_collects_one_epoch_and_skips_empty_slots(tmp_path):
    import pandas as pd

    evaluator = Engine(lambda e, b: b)
    PredictionWriter(tmp_path, threshold=0.5).attach(evaluator)
    evaluator.run(OUTPUTS, max_epochs=2)  # the second epoch replaces the first: one row per case
    table = pd.read_csv(tmp_path / "predictions.csv", dtype={"case_id": str})
    assert table["case_id"].tolist() == ["a", "b", "c"]
    assert table["prediction"].tolist() == [1, 0, 1] and table["label"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("names, expected", [(["val_auc", "f1"], ["val_auc", "f1"]), (["val_auc", "nope"], ["val_auc"])])
def test_metrics_writer_writes_a_header_and_the_metrics_it_finds(tmp_path, names, expected):
    import pandas as pd

    from ctmil.train.handlers import MetricsWriter

    engine = Engine(lambda e, b: None)
    MetricsWriter(tmp_path, names).attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)  # before the writer, at EPOCH_COMPLETED
    def _metrics(e):
        e.state.metrics.update(val_auc=0.75, f1=0.5)

    engine.run([0], max_epochs=1)
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert table.columns.tolist() == ["metric", "value"] and table["metric"].tolist() == expected
    assert table.set_index("metric")["value"]["val_auc"] == 0.75
