"""The bag trainer as the bundle builds it, on tiny bags: steps, updates, virtual bags, checkpoints, exact resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from ctmil.data.bags import BagDataset, collate_bags
from ctmil.networks import MILNet
from ctmil.train.engines import create_trainer, predict
from ctmil.train.losses import MILSSLLoss
from ctmil.networks.predict import STEP_OUTPUT_KEYS, BagInferer
from ctmil.train.steps import make_train_step
from ctmil.data.epochs import EpochBags
from tests.train._bags import CHANNEL_NET, CHANNELS, TINY_NET, make_bags, one_thread, train_tiny  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = [1, 0, 0, 0]  # 3 negatives - 1 positive = 2 virtual bags per epoch by default


@pytest.fixture(scope="module")
def bags():
    return BagDataset(make_bags(LABELS, 1, channels=CHANNELS))


def _initial(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in MILNet(**TINY_NET, **CHANNEL_NET).named_parameters()}


@pytest.mark.parametrize(
    "ssl,virtual", [("none", False), ("absolute", False), ("relative", False), ("absolute", True), ("relative", True)]
)
def test_two_epochs_update_exactly_the_used_parameters(bags, tmp_path, ssl, virtual):
    wf = train_tiny(tmp_path, bags, ssl=ssl, use_virtual_bags=virtual, threshold=0.0,
                    **{"train#virtual_bags#start_epoch": 1})
    model = wf.parser.get_parsed_content("network_def")
    before = _initial(0)  # train.json seeds with set_determinism(seed=0) before the network is built
    for name, value in model.named_parameters():
        used = not name.startswith("ssl_heads.") or name.startswith(f"ssl_heads.{ssl}.")
        assert (not torch.equal(before[name], value)) == used, name
    trainer = wf.parser.get_parsed_content("train#trainer")
    metrics = trainer.state.metrics
    assert metrics["loss"] > 0 and (metrics["ssl"] > 0) == (ssl != "none")
    assert wf.parser.get_parsed_content("train#dataloader").n_virtual == (2 if virtual else 0)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "model.json").is_file()


def test_train_step_output_and_skipped_slot(bags):
    model = MILNet(**TINY_NET, **CHANNEL_NET)
    step = make_train_step(model, torch.optim.Adam(model.parameters()), MILSSLLoss(ssl="relative"), inferer=BagInferer())
    assert step(None, None) is None
    out = step(None, collate_bags([bags[0], bags[2]]))
    assert set(STEP_OUTPUT_KEYS) | {"loss", "mil", "ssl"} <= set(out)
    assert out["prob"].shape == (2,) and out["attention"].shape == (2, 12)
    assert torch.allclose(out["attention"].sum(1), torch.ones(2))
    assert out["case_id"] == ["case0", "case2"] and not out["is_virtual"].any()
    assert isinstance(out["loss"], torch.Tensor) and out["loss"].dim() == 0  # no host sync per step


def test_virtual_bags_join_the_epoch_after_they_are_made(bags, tmp_path):
    seen: dict = {}

    def record(engine):
        out = engine.state.output
        if out is not None:
            seen.setdefault(engine.state.epoch, []).extend(out["is_virtual"].tolist())

    from ctmil.bundle import build_workflow
    from tests.train._bags import tiny_overrides

    wf = build_workflow(["train.json"], tiny_overrides(tmp_path, **{"train#dataset": bags, "threshold": 0.0,
                                                                    "train#virtual_bags#start_epoch": 1}))
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    wf.run()
    assert [sum(seen[e]) for e in (1, 2)] == [0, 2]  # made at the end of epoch 1, trained on in epoch 2
    assert [len(seen[e]) for e in (1, 2)] == [4, 6]
    assert trainer.state.epoch_length == 6  # 4 real bags + 2 virtual slots, every epoch


def test_resume_after_interruption_matches_uninterrupted_run(bags, tmp_path):
    from ctmil.bundle import build_workflow
    from tests.train._bags import tiny_overrides

    settings = {"threshold": 0.0, "seed": 5, "train#virtual_bags#start_epoch": 1, "tensorboard": True}
    full = train_tiny(tmp_path / "full", bags, **settings)
    interrupted = build_workflow(["train.json"], tiny_overrides(tmp_path / "resumed", **settings, **{"train#dataset": bags}))
    trainer = interrupted.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    interrupted.run()
    assert trainer.state.epoch == 1 and (tmp_path / "resumed" / "checkpoints" / "checkpoint_1.pt").exists()
    first = interrupted.parser.get_parsed_content("network_def")
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), full.parser.get_parsed_content("network_def").parameters()))

    resumed = train_tiny(tmp_path / "resumed", bags, **settings)
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    a, b = (w.parser.get_parsed_content("network_def") for w in (full, resumed))
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    va, vb = (w.parser.get_parsed_content("train#virtual_bags").virtual for w in (full, resumed))
    assert len(va) == 2 and all(torch.equal(x, y) for x, y in zip(va, vb))
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint_*"))
    assert ckpts == ["checkpoint_2.pt"]  # n_saved=1 keeps pruning after a resume
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "virtual_bags", "rng", "checkpointer"} <= set(state)
    assert any((tmp_path / "full" / "tensorboard").glob("events.out.tfevents.*"))


def test_predict_matches_the_model(bags):
    model = MILNet(**TINY_NET, **CHANNEL_NET)
    result = predict(model, bags, batch_size=4)
    assert result["case_id"] == bags.case_ids and result["label"] == [float(y) for y in LABELS]
    with torch.no_grad():
        expected = torch.sigmoid(model(bags[3]["patches"].unsqueeze(0))).item()
    assert result["prob"][3] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 12, 100])
def test_chunked_inferer_gives_the_same_outputs(bags, chunk):
    model = MILNet(**TINY_NET, **CHANNEL_NET).eval()
    x = collate_bags([bags[0], bags[1]])
    with torch.no_grad():
        whole, parts = BagInferer()(x["patches"], model, x["mask"]), BagInferer(chunk)(x["patches"], model, x["mask"])
    for key in ("logits", "attention", "bag_features"):
        assert torch.allclose(whole[key], parts[key], atol=1e-6), key


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_arguments(bags, bad):
    model = MILNet(**TINY_NET, **CHANNEL_NET)
    with pytest.raises(ValueError):
        BagInferer(bad)
    with pytest.raises(ValueError):
        create_trainer(model, torch.optim.Adam(model.parameters()), MILSSLLoss(), EpochBags(bags), max_epochs=bad)
