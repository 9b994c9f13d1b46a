"""Unit tests of the bundle glue ``ctmil.bundle`` (fast, no preprocessing)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
import torch
from ignite.engine import Engine

from ctmil.data.bags import BagDataset
from ctmil import bundle as bu


def _cases(n_patients: int = 10, per_patient: int = 2, n_severe_patients: int = 5) -> list[dict]:
    return [
        {"case_id": f"p{p}_c{c}", "patient": f"p{p}", "label": float(p < n_severe_patients), "image": f"/x/p{p}_c{c}.nii.gz"}
        for p in range(n_patients) for c in range(per_patient)
    ]


def test_split_cases_grouped_stratified_and_deterministic():
    cases = _cases()
    train, val = bu.split_cases(cases, val_fraction=0.2, seed=3)
    ids = lambda part: {c["case_id"] for c in part}  # noqa: E731
    assert ids(train) | ids(val) == ids(cases) and not ids(train) & ids(val)
    assert not {c["patient"] for c in train} & {c["patient"] for c in val}  # a patient never straddles the split
    assert {c["label"] for c in val} == {0.0, 1.0}  # stratified: both classes held out
    assert 2 <= len(val) <= 6
    assert bu.split_cases(cases, 0.2, 3) == (train, val)
    assert bu.split_cases(cases, 0.2, 4) != (train, val)


@pytest.mark.parametrize("fraction, sizes", [(0, (20, 0)), (0.0, (20, 0)), (1, (0, 20)), (1.0, (0, 20))])
def test_split_cases_all_or_nothing(fraction, sizes):
    train, val = bu.split_cases(_cases(), fraction)
    assert (len(train), len(val)) == sizes


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.2", True, None])
def test_split_cases_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        bu.split_cases(_cases(), fraction)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_load_cases_drops_unusable_and_unlabelled(tmp_path, caplog):
    for name in ("a", "b", "c"):
        _touch(tmp_path / "nifti" / f"{name}.nii.gz")
    pd.DataFrame({
        "case_id": ["a", "b", "c", "gone"],
        "image": ["nifti/a.nii.gz", "nifti/b.nii.gz", "nifti/c.nii.gz", "nifti/gone.nii.gz"],
        "label": [1, 0, None, 1],
    }).to_csv(tmp_path / "datalist.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="ctmil.bundle"):
        cases = bu.load_cases(tmp_path / "datalist.csv")
    assert [(c["case_id"], c["label"]) for c in cases] == [("a", 1.0), ("b", 0.0)]
    assert "case c left out: no 0/1 label" in caplog.text and "case gone left out: input not found" in caplog.text
    assert [c["case_id"] for c in bu.load_cases(str(tmp_path / "datalist.csv"), require_label=False)] == ["a", "b", "c"]


def test_load_cases_labels_for_folders(tmp_path):
    for name in ("a", "b"):
        _touch(tmp_path / "cts" / f"{name}.nii.gz")
    pd.DataFrame({"case_id": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "labels.csv", index=False)
    cases = bu.load_cases(tmp_path / "cts", labels=tmp_path / "labels.csv")
    assert {c["case_id"]: c["label"] for c in cases} == {"a": 0.0, "b": 1.0}
    assert [c["case_id"] for c in bu.load_cases([tmp_path / "cts"], labels={"a": 1})] == ["a"]
    with pytest.raises(ValueError, match="no usable labelled case"):
        bu.load_cases(tmp_path / "cts")


def test_read_labels_needs_columns(tmp_path):
    pd.DataFrame({"id": ["a"], "label": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="case_id"):
        bu.read_labels(tmp_path / "bad.csv")
    assert bu.read_labels(None) == {}


def test_preprocessed_bags_rejects_empty_split(tmp_path):
    with pytest.raises(ValueError, match="no cases"):
        bu.preprocessed_bags([], tmp_path)


def _bag(k: int, label: float) -> dict:
    return {"patches": torch.rand(k, 1, 60, 60), "position": torch.arange(k) % 12, "slice_index": torch.arange(k) // 12,
            "label": torch.tensor(label)}


def test_n_virtual_bags_counts_like_the_handler():
    dataset = BagDataset([_bag(12, 1.0), _bag(12, 0.0), _bag(24, 0.0), _bag(12, 0.0)])
    assert bu.n_virtual_bags(dataset) == 2  # 3 negatives - 1 positive
    assert bu.n_virtual_bags(dataset, n_bags=5) == 5


def test_step_losses():
    assert bu.step_losses(None) is None
    assert bu.step_losses({"loss": 1.5, "mil": 1.0, "ssl": torch.tensor(2.0), "prob": torch.ones(1)}) == {"loss": 1.5, "mil": 1.0, "ssl": 2.0}


def _outputs(n_iter: int):
    """Step outputs of a fake evaluator: batch i holds case c<i> (label i % 2) and, every 3rd, a skipped step."""
    def step(engine, i):
        if i % 3 == 2:
            return None
        return {"case_id": [f"c{i}"], "prob": torch.tensor([i / 10]), "label": torch.tensor([float(i % 2)]),
                "loss": float(i), "mil": 0.0, "ssl": float(2 * i)}
    return Engine(step), list(range(n_iter))


def test_prediction_writer_collects_one_epoch(tmp_path):
    engine, data = _outputs(6)
    writer = bu.PredictionWriter(tmp_path, threshold=0.3)
    writer.attach(engine)
    engine.run(data, max_epochs=2)  # the file holds the last epoch only
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert table["case_id"].tolist() == ["c0", "c1", "c3", "c4"]
    assert table["prediction"].tolist() == [0, 0, 1, 1]
    assert table["label"].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_step_averages_skip_none_and_epoch_setter():
    engine, data = _outputs(6)
    bu.StepAverages().attach(engine)

    class Recorder:
        epochs: list = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    recorder = Recorder()
    bu.EpochSetter(recorder).attach(engine)
    engine.run(data, max_epochs=2)
    assert engine.state.metrics["loss"] == pytest.approx((0 + 1 + 3 + 4) / 4)  # steps 2 and 5 were skipped
    assert engine.state.metrics["ssl"] == pytest.approx(2 * 8 / 4)
    assert recorder.epochs == [1, 2]


def test_load_inference_model_records_bundle_preprocessing(tmp_path):
    from ctmil.networks import MILNet

    torch.save(MILNet().state_dict(), tmp_path / "model.pt")
    model = bu.load_inference_model(tmp_path / "model.pt", "cpu", {"min_slices": 5, "spatial_size": [180, 240]})
    assert model.preprocessing == {"min_slices": 5, "spatial_size": (180, 240)}
    assert bu.load_inference_model(tmp_path / "model.pt").preprocessing == {}
