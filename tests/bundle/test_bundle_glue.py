"""The functions the bundle's configs call (``ctmil.bundle``) and the engine behaviour they rely on (fast)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine, Events

from ctmil import bundle as bu
from ctmil.data.bags import BagDataset
from ctmil.data.epochs import EpochBags
from ctmil.networks import MILNet
from ctmil.synthetic.phantoms import generate_cohort
from ctmil.train.engines import create_trainer
from ctmil.infer.model_io import recorded_operating_point
from ctmil.train.handlers import PredictionWriter, VirtualBagHandler
from ctmil.train.handlers.virtual_bags import virtual_slots
from ctmil.train.losses import MILSSLLoss
from ctmil.transforms import preprocessing_settings
from tests.bundle._datalist import write_bag_datalist
from tests.train._bags import TINY_NET, make_bags, one_thread  # noqa: F401 (fixture)

BUNDLE_CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "covid19_severity_mil" / "configs"


# ------------------------------------------------------------------------------------------------ configs
def test_configs_are_the_bundles_and_found_by_name():
    assert bu.config_dir().resolve() == BUNDLE_CONFIGS.resolve()  # ctmil/configs is the bundle's folder
    names = ("train.json", "cv.json", "demo.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json")
    paths = bu.config_files(*names)
    assert [Path(p).name for p in paths] == list(names) and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        bu.config_files("train.json", "nope.json")


# ------------------------------------------------------------------------------------------------ split_cases
def _table(n_patients: int = 10, per_patient: int = 2, n_severe_patients: int = 5) -> pd.DataFrame:
    rows = [{"case_id": f"p{p}_c{c}", "bag": f"/x/p{p}_c{c}.pt", "label": int(p < n_severe_patients), "patient": f"p{p}"}
            for p in range(n_patients) for c in range(per_patient)]
    return pd.DataFrame(rows, columns=bu.BAG_COLUMNS)


@pytest.mark.parametrize("n_severe, warned", [(1, True), (5, False)])
def test_a_one_class_validation_split_is_a_warning(caplog, n_severe, warned):
    """With one severe patient in ten, the held-out fifth cannot hold both classes on every seed: said, not nan."""
    with caplog.at_level("WARNING", logger="ctmil.bundle"):
        for seed in range(5):
            bu.split_cases(_table(n_severe_patients=n_severe), val_fraction=0.2, seed=seed)
    said = [r.getMessage() for r in caplog.records if "holds only one class" in r.getMessage()]
    assert bool(said) == warned and all("AUC is undefined" in m for m in said)


def test_split_cases_grouped_stratified_and_deterministic():
    cases = _table()
    train, val = bu.split_cases(cases, val_fraction=0.2, seed=3)
    assert set(train["case_id"]) | set(val["case_id"]) == set(cases["case_id"])
    assert not set(train["case_id"]) & set(val["case_id"])
    assert not set(train["patient"]) & set(val["patient"])  # a patient never straddles the split
    assert sorted(val["label"].unique()) == [0, 1]  # stratified: both classes held out
    assert len(val) == 4  # one of five folds: 2 of the 10 patients
    again = bu.split_cases(cases, 0.2, 3)
    pd.testing.assert_frame_equal(again[0], train)
    pd.testing.assert_frame_equal(again[1], val)
    others = [set(bu.split_cases(cases, 0.2, s)[1]["case_id"]) for s in range(4, 8)]
    assert any(o != set(val["case_id"]) for o in others)  # the seed matters


@pytest.mark.parametrize("fraction", [0, 0.0])
def test_split_cases_zero_fraction_trains_on_everything(fraction):
    train, val = bu.split_cases(_table(), fraction)
    assert len(train) == 20 and len(val) == 0
    assert bu.bag_dataset(val) is None  # no validation set


@pytest.mark.parametrize("fraction", [-0.1, 1, 1.0, 1.5, "0.2", True, None])
def test_split_cases_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        bu.split_cases(_table(), fraction)


# ------------------------------------------------------------------------------------------------ labels and datalists
def test_read_labels_reads_ids_as_text(tmp_path):
    (tmp_path / "labels.csv").write_text("case_id,study_uid,label\n0012,1.2.840.10,1\nNA,1.2.840.11,0\n7,,\n")
    assert bu.read_labels(tmp_path / "labels.csv") == {"0012": 1.0, "1.2.840.10": 1.0, "NA": 0.0, "1.2.840.11": 0.0}
    (tmp_path / "bad_label.csv").write_text("case_id,label\n0012,1\n7,x\n")
    with pytest.raises(ValueError, match="case '7'"):  # a label that is not 0/1/blank is an error, not a silent drop
        bu.read_labels(tmp_path / "bad_label.csv")
    assert bu.read_labels({12: 1, "a": 0}) == {"12": 1.0, "a": 0.0}
    assert bu.read_labels(None) == {}


def test_read_labels_needs_columns(tmp_path):
    pd.DataFrame({"id": ["a"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="case_id"):
        bu.read_labels(tmp_path / "bad.csv")


def test_bag_table_on_a_bag_datalist(tmp_path, monkeypatch, caplog):
    datalist = write_bag_datalist(tmp_path / "data", labels=(1, 0, 0))
    table = pd.read_csv(datalist, dtype=str)
    table["case_id"] = ["0012", "NA", "0003"]
    table["label"] = ["1", "0", ""]  # the third case has no label
    table["patient"] = ["p1", "", "p3"]
    table.to_csv(datalist, index=False)
    monkeypatch.chdir(tmp_path)  # relative bag paths resolve against the CSV's folder, not the working directory
    with caplog.at_level(logging.WARNING, logger="ctmil.bundle"):
        cases = bu.bag_table(datalist, tmp_path / "unused")
    assert "1 case(s) without a 0/1 label" in caplog.text
    assert list(cases.columns) == bu.BAG_COLUMNS
    assert cases["case_id"].tolist() == ["0012", "NA"] and cases["label"].tolist() == [1, 0]
    assert cases["patient"].tolist() == ["p1", "NA"]  # patient defaults to the case id
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in cases["bag"])
    assert not (tmp_path / "unused").exists()  # bags are used as they are: nothing preprocessed
    dataset = bu.bag_dataset(cases)
    assert dataset.case_ids == ["0012", "NA"] and dataset.labels == [1.0, 0.0]


def test_a_bag_datalist_made_with_other_preprocessing_is_refused(tmp_path):
    """bag_table runs the bags' check (ctmil.data.bag_settings, tested there) before the bags are used."""
    datalist = write_bag_datalist(tmp_path / "data", labels=(1, 0))
    for path in pd.read_csv(datalist)["bag"]:
        bag = torch.load(datalist.parent / path, weights_only=True)
        torch.save({**bag, "meta": {"preprocessing": preprocessing_settings(patch_norm="minmax")}}, datalist.parent / path)
    with pytest.raises(ValueError, match="made with patch_norm='minmax'"):
        bu.bag_table(datalist, tmp_path / "unused", preprocessing_settings())
    assert len(bu.bag_table(datalist, tmp_path / "unused", preprocessing_settings(patch_norm="minmax"))) == 2


@pytest.mark.parametrize("content, message", [
    ("case_id,bag\na,a.pt\n", "missing columns"),
    ("case_id,bag,label\na,a.pt,1\na,b.pt,0\n", "duplicate case ids"),
    ("case_id,bag,label\na,a.pt,\n", "no usable labelled case"),
])
def test_bag_table_rejects_bad_datalists(tmp_path, content, message):
    (tmp_path / "datalist.csv").write_text(content)
    with pytest.raises(ValueError, match=message):
        bu.bag_table(tmp_path / "datalist.csv", tmp_path / "cache")


def test_bag_table_preprocesses_ct_inputs(tmp_path, caplog):
    """CT inputs (NIfTI files, labels from a CSV) → bags in the cache; a broken file is left out with its reason;
    a second call reuses the cached bags."""
    cohort = generate_cohort(tmp_path / "c", n=3, seed=1, formats=("nifti",), shape=(10, 64, 64), spacing=(8.0, 5.0, 5.0),
                             progress=False)
    (tmp_path / "c" / "nifti" / "broken.nii.gz").write_bytes(b"not a nifti file")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"case_id": [*cohort["case_id"], "broken"], "label": [*cohort["label"], 1]}).to_csv(labels, index=False)
    nifti = sorted(str(p) for p in (tmp_path / "c" / "nifti").glob("*.nii.gz"))
    settings = {"min_slices": 4, "min_area_fraction": 0.2}
    with caplog.at_level(logging.WARNING, logger="ctmil.bundle"):
        cases = bu.bag_table(nifti, tmp_path / "cache", settings, labels=labels)
    assert sorted(cases["case_id"]) == sorted(cohort["case_id"])
    assert dict(zip(cases["case_id"], cases["label"])) == dict(zip(cohort["case_id"], cohort["label"].astype(int)))
    assert "case broken left out" in caplog.text
    bag = torch.load(cases["bag"].iloc[0], weights_only=True)
    assert bag["patches"].shape[1:] == (2, 60, 60) and bag["patches"].shape[0] % 12 == 0
    manifest = pd.read_csv(tmp_path / "cache" / "manifest.csv", dtype=str, keep_default_na=False)
    assert manifest.set_index("case_id").loc["broken", "status"] == "failed"
    again = bu.bag_table(nifti, tmp_path / "cache", settings, labels=labels)
    pd.testing.assert_frame_equal(again, cases)
    manifest = pd.read_csv(tmp_path / "cache" / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(manifest.loc[manifest["case_id"] != "broken", "status"]) == {"cached"}
    with pytest.raises(ValueError, match="no usable labelled case"):  # no labels for folder inputs
        bu.bag_table(nifti, tmp_path / "cache", settings)


# ------------------------------------------------------------------------------------------------ virtual slots
@pytest.mark.parametrize("labels", [(1, 0, 0, 0), (1, 1, 0), (0, 0, 0), (1, 0, 0, 0, 0, 1, 0)])
def test_virtual_slots_count_like_the_virtual_bag_handler(labels):
    dataset = BagDataset(make_bags(labels, [1, 2] * 4))  # bags of 12 and 24 patches
    handler = VirtualBagHandler(dataset, sink=lambda bags: None)
    assert virtual_slots(dataset) == handler.n_bags == max(0, labels.count(0) - labels.count(1))
    assert virtual_slots(dataset, n_bags=5) == VirtualBagHandler(dataset, sink=lambda bags: None, n_bags=5).n_bags == 5
    assert virtual_slots(dataset, n_bags=5, enabled=False) == 0


# ------------------------------------------------------------------------------------------------ engines and handlers
def _fake_evaluator():
    """An Engine whose step i returns case c<i> (label i % 2, prob i / 10); every third step returns None."""

    def step(engine, i):
        if i % 3 == 2:
            return None
        return {"case_id": [f"c{i}"], "prob": torch.tensor([i / 10]), "label": torch.tensor([float(i % 2)])}

    return Engine(step)


def test_prediction_writer_collects_one_epoch(tmp_path):
    engine = _fake_evaluator()
    writer = PredictionWriter(tmp_path, threshold=0.3)
    writer.attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(len(writer.rows)))
    engine.run(list(range(6)), max_epochs=2)
    assert seen == [4, 4]  # reset at every epoch: the second epoch does not append to the first
    table = pd.read_csv(tmp_path / "predictions.csv", dtype={"case_id": str})
    assert table.columns.tolist() == ["case_id", "raw_probability", "probability", "threshold", "prediction", "label"]
    assert table["case_id"].tolist() == ["c0", "c1", "c3", "c4"]  # None outputs skipped
    np.testing.assert_allclose(table["raw_probability"], [0.0, 0.1, 0.3, 0.4], atol=1e-7)
    assert (table["probability"] == table["raw_probability"]).all() and (table["threshold"] == 0.3).all()  # no operating point
    assert table["prediction"].tolist() == [0, 0, 1, 1]  # prob >= threshold
    assert table["label"].tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.usefixtures("one_thread")
def test_trainer_averages_the_steps_that_ran_and_sets_each_epoch():
    """The trainer's epoch losses are means over the steps that ran (unused virtual-bag slots yield ``None``
    batches, which are skipped), and the data learns the epoch before its first batch."""
    torch.manual_seed(0)
    dataset = BagDataset(make_bags([1, 0, 0, 0]))
    data = EpochBags(dataset, virtual_slots=2, seed=0)  # 4 real batches + 2 empty slots per epoch
    network = MILNet(**TINY_NET)
    trainer = create_trainer(network, torch.optim.Adam(network.parameters(), 1e-3), MILSSLLoss(), data, max_epochs=2)
    steps = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        out = engine.state.output
        losses = None if out is None else {k: float(out[k]) for k in ("loss", "mil", "ssl")}
        steps.append((engine.state.epoch, data.epoch, losses))

    epoch_means = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_means.update({e.state.epoch: dict(e.state.metrics)}))
    trainer.run()
    assert [(e, d) for e, d, _ in steps] == [(1, 1)] * 6 + [(2, 2)] * 6
    assert [out is None for _, _, out in steps] == ([False] * 4 + [True] * 2) * 2
    for epoch in (1, 2):
        ran = [out for e, _, out in steps if e == epoch and out is not None]
        for name in ("loss", "mil", "ssl"):
            assert epoch_means[epoch][name] == pytest.approx(np.mean([out[name] for out in ran]), rel=1e-6)


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_evaluation_operating_point_falls_back_to_the_config_threshold(tmp_path, threshold):
    """evaluate.json scores at the model's recorded point; a checkpoint without model.json gets @threshold, uncalibrated."""
    torch.save({}, tmp_path / "model.pt")
    point = recorded_operating_point(tmp_path / "model.pt", default_threshold=threshold)
    assert point["threshold"] == threshold and point["calibration"] == {"method": "none"}
    recorded = {"calibration": {"method": "platt", "coef": 2.0, "intercept": -1.0}, "threshold": 0.42, "rule": "youden"}
    (tmp_path / "model.json").write_text(json.dumps({"operating_point": recorded}))
    point = recorded_operating_point(tmp_path / "model.pt", default_threshold=threshold)
    assert point["threshold"] == 0.42 and point["calibration"]["method"] == "platt"
