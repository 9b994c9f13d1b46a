"""Batch inference on a small synthetic export tree with an untrained MILNet; streaming (model loading: test_model_loading.py)."""

import logging
import shutil
import tracemalloc

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
import torch.nn as nn
from PIL import Image

from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.phantoms import make_phantom, write_nifti
from ctmil.networks import MILNet
from ctmil.infer.attention_maps import cell_index, paint_attention, relayout, voxel_mapping
from ctmil.infer.batch import CaseDataset, CasePipeline, case_loader, create_inference_evaluator, run_inference
from ctmil.infer.writer import PREDICTION_COLUMNS, InferenceOptions, InferenceWriter
from ctmil.infer.model_io import ModelError, load_model
from ctmil.transforms import LoadCT

SHAPE, SPACING = (16, 96, 96), (15.0, 3.6, 3.6)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def phantom():
    vol, _, info = make_phantom(0, shape=SHAPE, spacing=SPACING)
    return vol, info


@pytest.fixture(scope="module")
def model_path(untrained_model):
    return untrained_model


@pytest.fixture(scope="module")
def batch(tmp_path_factory, phantom, model_path):
    """An export folder (a DICOM study of 'PHANTOM^SECRET', a NIfTI, a slice-image folder, a broken NIfTI, a
    3-slice study) run through run_inference once, with every log record collected."""
    vol, info = phantom
    root = tmp_path_factory.mktemp("infer")
    export = root / "export"
    files = write_dicom_series(vol, SPACING, export / "a", rng=0, patient_name="PHANTOM^SECRET", patient_id="SECRET123",
                               origin=info["origin_lps"])
    write_dicom_series(vol[:3], SPACING, export / "b", rng=1, patient_name="PHANTOM^SECRET", patient_id="SECRET123")
    write_nifti(vol, SPACING, export / "nifti" / "case_n.nii.gz", origin=info["origin_lps"])
    (export / "nifti" / "broken.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    windowed = np.clip((vol.astype(np.float32) + 1350) / 1500, 0, 1)
    (export / "slices_c").mkdir()
    for s in range(vol.shape[0]):
        Image.fromarray((windowed[s] * 255).astype(np.uint8)).save(export / "slices_c" / f"s{s}.png")
    handler, root_logger = _Collect(), logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        predictions, n_failed = run_inference([export], model_path, root / "out", InferenceOptions(top_slices=1, save_features=True), progress=False)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return {"export": export, "out": root / "out", "predictions": predictions, "n_failed": n_failed,
            "records": handler.records, "study_uid": study_uid, "dicom_files": files}


def test_one_row_per_study_and_failures_listed(batch):
    p = batch["predictions"].set_index("case_id")
    assert list(batch["predictions"].columns) == PREDICTION_COLUMNS
    sources = batch["predictions"].set_index("case_id")["source"]
    assert sources["case_n"] == "nifti/case_n.nii.gz" and sources["slices_c"] == "slices_c"  # relative to the input
    assert not any(str(batch["export"]) in str(s) for s in sources)
    assert len(p) == 5 and batch["n_failed"] == 2
    ok = p[p["status"] == "ok"]
    assert set(ok["input_kind"]) == {"dicom", "nifti", "slices"}
    assert ok["probability"].astype(float).between(0, 1).all()
    assert (ok["prediction"].astype(int) == (ok["probability"].astype(float) >= 0.5)).all()
    assert (ok["K"].astype(int) == 12 * ok["n_slices_kept"].astype(int)).all() and (ok["n_slices"].astype(int) == SHAPE[0]).all()
    assert p.loc["case_n", "probability"] == pytest.approx(ok[ok["input_kind"] == "dicom"]["probability"].iloc[0], abs=1e-4)
    failed = p[p["status"] == "failed"]
    assert "unreadable NIfTI" in failed.loc["broken", "error"]
    assert any("too few slices" in e for e in failed["error"])
    assert failed["probability"].isna().all() or (failed["probability"] == "").all()
    on_disk = pd.read_csv(batch["out"] / "predictions.csv")
    assert on_disk["case_id"].tolist() == batch["predictions"]["case_id"].tolist()
    dicom = ok[ok["input_kind"] == "dicom"].iloc[0]
    assert dicom.name.startswith("st-") and "THORAX" in dicom["series"]
    for _, row in ok.iterrows():
        for rel in [row["attention_path"], row["features_path"], *row["overlay_paths"].split(";")]:
            assert (batch["out"] / rel).is_file()
        assert len(row["overlay_paths"].split(";")) == 1 and str(row["top_slices"]).isdigit()
    features = pd.read_csv(batch["out"] / "features.csv")
    assert len(features) == 3 and features.shape[1] == 1 + 512


def _recompute(source, model_path):
    """The bag and attention of one input, recomputed (preprocessing and the network are deterministic)."""
    model = load_model(model_path)
    bag, _, _ = CasePipeline(model.preprocessing)({"image": source, "case_id": "x", "label": None})
    pred = model.predict(bag["patches"])
    return bag, pred.attention


def test_nifti_attention_map_matches_input_grid_and_attention_mass(batch, model_path):
    source = batch["export"] / "nifti" / "case_n.nii.gz"
    ref = nib.load(str(source))
    att = nib.load(str(batch["out"] / "cases" / "case_n" / "attention.nii.gz"))
    assert att.shape == ref.shape and np.allclose(att.affine, ref.affine)
    bag, attention = _recompute(str(source), model_path)
    shape = bag["meta"]["spatial_shape"]
    affine = np.asarray(bag["meta"]["affine"])
    painted = relayout(att.get_fdata(dtype=np.float32), *voxel_mapping(att.affine, att.shape, affine, shape))  # back to (S, H, W)
    np.testing.assert_allclose(painted, paint_attention(attention, bag["slice_index"], bag["position"], bag["boxes"],
                                                        bag["kept_slices"], shape), rtol=1e-5, atol=1e-9)
    kept = bag["kept_slices"].numpy()
    assert not np.delete(painted, kept, axis=0).any()
    total = 0.0
    for s, (r0, c0, r1, c1) in zip(kept, bag["boxes"].numpy()):
        region = painted[s, r0:r1, c0:c1]
        outside = painted[s].copy()
        outside[r0:r1, c0:c1] = 0
        assert not outside.any()
        rows, cols = cell_index(r1 - r0, 3), cell_index(c1 - c0, 4)
        cell_of = rows[:, None] * 4 + cols[None, :]
        cells = np.array([region[cell_of == p].mean() for p in range(12)])  # one value per patch cell
        assert np.allclose([region[cell_of == p].std() for p in range(12)], 0)
        mass = attention[bag["slice_index"].numpy() == s].sum()
        assert cells.sum() == pytest.approx(mass, rel=1e-4)
        total += cells.sum()
    assert total == pytest.approx(1.0, rel=1e-4)
    # world coordinates: the most attended voxel of the map is the CT voxel it was painted on
    v = np.unravel_index(np.argmax(att.get_fdata()), att.shape)
    ct = LoadCT()(str(source))
    s, r, c = np.rint(np.linalg.inv(affine) @ att.affine @ np.array([*v, 1.0])).astype(int)[:3]
    assert ref.get_fdata()[v] == ct[0, s, r, c]


def test_dicom_attention_map_is_aligned_with_the_series(batch):
    p = batch["predictions"]
    row = p[p["input_kind"] == "dicom"].iloc[0]
    att = nib.load(str(batch["out"] / row["attention_path"]))
    assert att.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (columns, rows, slices)
    ds = pydicom.dcmread(batch["dicom_files"][0])  # slice 0 (array order of write_dicom_series)
    lps = np.asarray(ds.ImagePositionPatient, float)
    origin = att.affine @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(origin[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    nifti_row = p[p["case_id"] == "case_n"].iloc[0]
    same = nib.load(str(batch["out"] / nifti_row["attention_path"]))
    # same phantom through DICOM and NIfTI: the two maps paint the same world points
    a, b = att.get_fdata(), same.get_fdata()
    for v in zip(*np.nonzero(a > np.quantile(a[a > 0], 0.99))):
        w = np.linalg.inv(same.affine) @ att.affine @ np.array([*v, 1.0])
        assert b[tuple(np.rint(w).astype(int)[:3])] == pytest.approx(a[v], rel=1e-3)


def test_no_patient_identifiers_in_outputs_or_logs(batch):
    secrets = [b"SECRET", batch["study_uid"].encode()]
    files = [f for f in batch["out"].rglob("*") if f.is_file()]
    assert len(files) >= 10
    for f in files:
        data = f.read_bytes()
        if f.suffix == ".gz":
            import gzip

            data = gzip.decompress(data)
        for secret in secrets:
            assert secret not in data, f.name
    assert batch["records"], "no log records were collected"
    for record in batch["records"]:
        text = logging.Formatter().format(record)
        assert "SECRET" not in text and batch["study_uid"] not in text


def test_cases_stream_one_at_a_time(batch, model_path, tmp_path):
    """The infer workflow loads a case only when the previous one is predicted and written."""
    source = str(batch["export"] / "nifti" / "case_n.nii.gz")
    events = []

    class Spy(CaseDataset):
        def __getitem__(self, i):
            events.append(f"load {i}")
            return super().__getitem__(i)

    class SpyWriter(InferenceWriter):
        def collect(self, engine):
            super().collect(engine)
            events.append(f"written {engine.state.output['row']['case_id']}")

    cases = [{"case_id": f"c{i}", "image": source, "label": None} for i in range(2)]
    writer = SpyWriter(tmp_path, InferenceOptions(save_overlays=False))
    model = load_model(model_path)
    evaluator = create_inference_evaluator(model, case_loader(Spy(cases, model.preprocessing)), val_handlers=[writer])
    evaluator.run()
    assert events == ["load 0", "written c0", "load 1", "written c1"]
    assert sorted(p.name for p in (tmp_path / "cases").iterdir()) == ["c0", "c1"]
    assert evaluator.state.predictions["status"].tolist() == ["ok", "ok"]


def test_memory_stays_flat_over_many_cases(batch, model_path, tmp_path):
    """Peak traced memory for 6 cases is close to that for 1 (a batch keeping volumes would need ~6x)."""
    source = batch["export"] / "nifti" / "case_n.nii.gz"
    one, six = tmp_path / "one", tmp_path / "six"
    one.mkdir()
    six.mkdir()
    shutil.copy(source, one / "c0.nii.gz")
    for i in range(6):
        shutil.copy(source, six / f"c{i}.nii.gz")
    model = load_model(model_path)
    kwargs = dict(options=InferenceOptions(save_overlays=False), progress=False)  # imports and caches were warmed by `batch`
    peaks = []
    for folder in (one, six):
        tracemalloc.start()
        try:
            table, n_failed = run_inference([folder], model, tmp_path / f"out_{folder.name}", **kwargs)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert n_failed == 0
    volume_bytes = int(np.prod(SHAPE)) * 4
    assert peaks[0] > volume_bytes  # the measurement sees a loaded volume
    assert peaks[1] < peaks[0] + 2 * volume_bytes, peaks  # keeping 6 volumes would add 5 * volume_bytes at least


def test_interrupted_batch_keeps_the_finished_rows(batch, model_path, tmp_path):
    """predictions.csv is rewritten after every case: an interruption leaves the cases done so far."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        shutil.copy(batch["export"] / "nifti" / "case_n.nii.gz", folder / f"c{i}.nii.gz")
    model = load_model(model_path)
    predict, calls = model.predict, []

    def interrupted(patches, density=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(patches, density)

    model.predict = interrupted
    with pytest.raises(KeyboardInterrupt):
        run_inference([folder], model, tmp_path / "out", InferenceOptions(save_overlays=False), progress=False)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table["case_id"].tolist() == ["c0"] and table["status"].tolist() == ["ok"]
    assert not list((tmp_path / "out").glob(".*.tmp"))


def _bag(k_slices=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(12 * k_slices, 1, 60, 60, generator=g)


class _LogitsOnly(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3, 4)).unsqueeze(1)  # (B, 1)


def test_torchscript_models(tmp_path, batch):
    torch.manual_seed(3)
    net = MILNet().eval()
    torch.jit.script(net).save(str(tmp_path / "milnet.ts"))
    with pytest.raises(ModelError, match="--allow-torchscript"):
        load_model(tmp_path / "milnet.ts")  # a program, not weights: refused by default
    model = load_model(tmp_path / "milnet.ts", allow_torchscript=True)
    assert model.kind == "torchscript" and model.strategy == "parts"
    x = _bag(2)
    with torch.no_grad():
        ref = net.forward_all(x[None])
    pred = model.predict(x)
    assert pred.logit == pytest.approx(float(ref["logits"]), abs=1e-5)
    np.testing.assert_allclose(pred.attention, ref["attention"][0].numpy(), atol=1e-6)
    # no model.json beside it: the one channel the scripted network keeps decides the preprocessing
    assert model.preprocessing == {"patch_norm": "minmax"}
    table, n_failed = run_inference(batch["export"] / "nifti" / "case_n.nii.gz", model, tmp_path / "one", progress=False)
    assert n_failed == 0 and table.iloc[0]["K"] % 12 == 0

    torch.jit.script(_LogitsOnly()).save(str(tmp_path / "plain.ts"))
    plain = load_model(tmp_path / "plain.ts", allow_torchscript=True)
    assert plain.strategy == "logits" and not plain.has_attention
    source = batch["export"] / "nifti" / "case_n.nii.gz"
    table, n_failed = run_inference(source, plain, tmp_path / "out", progress=False)
    row = table.iloc[0]
    assert n_failed == 0 and row["status"] == "ok" and 0 <= row["probability"] <= 1
    assert row["attention_path"] == "" and not (tmp_path / "out" / "cases" / "case_n" / "attention.nii.gz").exists()


def test_usage_errors(tmp_path, model_path):
    with pytest.raises(ModelError, match="not found"):
        run_inference(tmp_path, tmp_path / "missing.pt", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="threshold"):
        run_inference(tmp_path, model_path, tmp_path / "out", InferenceOptions(threshold=1.5), progress=False)
    with pytest.raises(ValueError, match="no CT found in the inputs"):
        run_inference([], model_path, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()  # inputs without any CT: a usage error (issue 25), not a batch of one failed case
    with pytest.raises(ValueError, match=r"no CT found in the inputs \(no DICOM images"):
        run_inference(tmp_path / "empty", model_path, tmp_path / "out", progress=False)


@pytest.mark.parametrize("overrides, expected", [
    ({}, {}),
    ({"options#top_slices": 5, "output_dir": "x"}, {"top_slices": 5}),
    ({"options#save_maps": False, "options#map_mode": "slice"}, {"save_maps": False, "map_mode": "slice"}),
])
def test_set_options_fields_reach_the_options_object(overrides, expected):
    """``ctmil infer --set options#<field>=...`` changes the options object run_inference hands the workflow (and is
    taken out of the overrides, which no longer hold a '#' path into it)."""
    from dataclasses import asdict

    from ctmil.infer.batch import with_overrides

    given = dict(overrides)
    got = with_overrides(InferenceOptions(dicom=True), given)
    assert {k: v for k, v in asdict(got).items() if v != asdict(InferenceOptions(dicom=True))[k]} == expected
    assert not any(k.startswith("options#") for k in given) and got.dicom


def test_unknown_options_field_is_one_line():
    from ctmil.infer.batch import with_overrides

    with pytest.raises(ValueError, match="InferenceOptions has no field 'top_slice'"):
        with_overrides(InferenceOptions(), {"options#top_slice": 5})
