"""Training on tiny bags: steps, parameter updates, virtual bags in the data, checkpoints and exact resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from ctmil.data.bags import BagDataset, collate_bags
from ctmil.train.steps import STEP_OUTPUT_KEYS, make_train_step
from ctmil.train.losses import MILSSLLoss
from ctmil.train.trainer import TrainConfig, VirtualBagConfig, build_model, build_training, fit, predict, run_training
from tests.train._bags import TINY_NET, make_bags, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = [1, 0, 0, 0]  # 3 negatives - 1 positive = 2 virtual bags per epoch by default


@pytest.fixture(scope="module")
def bags():
    return BagDataset(make_bags(LABELS, 1))


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize(
    "ssl,virtual", [("none", False), ("absolute", False), ("relative", False), ("absolute", True), ("relative", True)]
)
def test_two_epochs_update_exactly_the_used_parameters(bags, ssl, virtual):
    model = build_model(TINY_NET, seed=0)
    before = _params(model)
    config = TrainConfig(
        epochs=2, ssl=ssl, virtual=VirtualBagConfig(start_epoch=1) if virtual else None, threshold=0.0
    )
    training = fit(model, bags, config)
    changed = {k: not torch.equal(before[k], v) for k, v in model.named_parameters()}
    for name, did in changed.items():
        used = not name.startswith("ssl_heads.") or name.startswith(f"ssl_heads.{ssl}.")
        assert did == used, name
    metrics = training.trainer.state.metrics
    assert metrics["loss"] > 0 and (metrics["ssl"] > 0) == (ssl != "none")
    assert training.data.n_virtual == (2 if virtual else 0)  # n_neg - n_pos virtual bags after epoch 1


def test_train_step_output_and_skipped_slot(bags):
    model = build_model(TINY_NET, seed=0)
    step = make_train_step(model, torch.optim.Adam(model.parameters()), MILSSLLoss(ssl="relative"))
    assert step(None, None) is None
    batch = collate_bags([bags[0], bags[2]])
    out = step(None, batch)
    assert set(STEP_OUTPUT_KEYS) | {"loss", "mil", "ssl"} <= set(out)
    assert out["prob"].shape == (2,) and out["attention"].shape == (2, 12)
    assert torch.allclose(out["attention"].sum(1), torch.ones(2))
    assert out["case_id"] == ["case0", "case2"] and not out["is_virtual"].any()


def test_virtual_bags_join_the_epoch_after_they_are_made(bags):
    config = TrainConfig(epochs=2, ssl="absolute", virtual=VirtualBagConfig(start_epoch=1), threshold=0.0, progress=True)
    training = build_training(build_model(TINY_NET, seed=0), bags, config)
    seen = {}

    def record(engine):
        out = engine.state.output
        if out is not None:
            seen.setdefault(engine.state.epoch, []).extend(out["is_virtual"].tolist())

    training.trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    run_training(training)
    assert [sum(seen[e]) for e in (1, 2)] == [0, 2]  # made at the end of epoch 1, trained on in epoch 2
    assert [len(seen[e]) for e in (1, 2)] == [4, 6]
    assert training.trainer.state.epoch_length == 6  # 4 real bags + 2 virtual slots, every epoch


def test_resume_after_interruption_matches_uninterrupted_run(bags, tmp_path):
    config = TrainConfig(
        epochs=2, ssl="absolute", virtual=VirtualBagConfig(start_epoch=1), threshold=0.0, seed=5, tensorboard=True
    )
    full = fit(build_model(TINY_NET, seed=1), bags, config, out_dir=tmp_path / "full")

    interrupted = build_training(build_model(TINY_NET, seed=1), bags, config, out_dir=tmp_path / "resumed")
    interrupted.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    run_training(interrupted)
    assert interrupted.trainer.state.epoch == 1 and len(interrupted.virtual_bags.virtual) == 2
    assert not all(torch.equal(a, b) for a, b in zip(interrupted.model.parameters(), full.model.parameters()))

    resumed = fit(build_model(TINY_NET, seed=123), bags, config, out_dir=tmp_path / "resumed")
    assert resumed.trainer.state.epoch == 2
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(full.virtual_bags.virtual, resumed.virtual_bags.virtual))
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint_2.pt"]  # n_saved=1 keeps pruning after a resume
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "virtual_bags", "rng", "checkpointer"} <= set(state)
    assert any((tmp_path / "full" / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_matches_the_model(bags):
    model = build_model(TINY_NET, seed=0)
    result = predict(model, bags, batch_size=4)
    assert result["case_id"] == bags.case_ids and result["label"] == [float(y) for y in LABELS]
    with torch.no_grad():
        expected = torch.sigmoid(model(bags[3]["patches"].unsqueeze(0))).item()
    assert result["prob"][3] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"batch_size": 0}, {"ssl": "both"}, {"eval_every": -1}])
def test_bad_train_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_train_config_from_dict_rejects_unknown_keys():
    assert TrainConfig.from_dict({"epochs": 3, "virtual": {"start_epoch": 2}}).virtual.start_epoch == 2
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"epoch": 3})
