"""DICOM results (ctmil.infer.dicom_results): the SR, the Parametric Map and the overlays conform (dciodvfy), read back
to the row's values, lie on the source slices (a phantom with a known lesion), and have stable UIDs."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from ctmil.infer.attention_maps import paint_attention, top_attended_slices
from ctmil.infer.batch import CasePipeline, run_inference
from ctmil.infer.writer import InferenceOptions
from ctmil.infer.dicom_read import read_sr_result
from ctmil.infer.dicom_results import CODES, LEVELS, ModelIdentity, dicom_results_reason, result_uid, write_dicom_results
from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.dicom_writer import write_dicom_series
from ctmil.synthetic.nifti_writer import write_nifti

SHAPE, SPACING = (40, 128, 128), (5.0, 2.7, 2.7)
MODEL = ModelIdentity("model.pt", "0123456789abcdef" * 4)
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber", "StudyID",
               "ReferringPhysicianName", "StudyDate", "StudyTime", "InstitutionName", "OtherPatientIDs", "IssuerOfPatientID")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A severe phantom (its lesion mask known) written as a DICOM study, and its preprocessed bag."""
    vol, lesion, info = make_phantom(3, shape=SHAPE, spacing=SPACING, severe=True, involvement=0.35)
    root = tmp_path_factory.mktemp("dicom_results")
    files = write_dicom_series(vol, SPACING, root / "study", rng=0, patient_name="PHANTOM^LESION", patient_id="P123",
                               origin=info["origin_lps"])
    bag, _, _ = CasePipeline()({"image": str(root / "study"), "case_id": "lesion"})
    return {"root": root, "files": files, "bag": bag, "lesion": lesion}


def _on_lesion_attention(bag, lesion: np.ndarray) -> np.ndarray:
    """All attention on the patch that covers the most lesion pixels."""
    k = bag["patches"].shape[0]
    overlap = []
    for i in range(k):
        one = np.zeros(k)
        one[i] = 1.0
        painted = paint_attention(one, bag["slice_index"], bag["position"], bag["boxes"], bag["kept_slices"],
                                  bag["meta"]["spatial_shape"])
        overlap.append(float(((painted > 0) & (lesion > 0)).sum()))
    att = np.zeros(k)
    att[int(np.argmax(overlap))] = 1.0
    return att


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
    bag = study["bag"]
    att = _on_lesion_attention(bag, study["lesion"])
    painted = paint_attention(att, bag["slice_index"], bag["position"], bag["boxes"], bag["kept_slices"], bag["meta"]["spatial_shape"])
    top = top_attended_slices(att, bag["slice_index"], 2)
    row = {"probability": 0.873215, "threshold": 0.41, "prediction": 1}
    out = tmp_path_factory.mktemp("written")
    paths = write_dicom_results(bag, painted, top, row, MODEL, out / "a")
    again = write_dicom_results(bag, painted, top, row, MODEL, out / "b")
    other = write_dicom_results(bag, painted, top, row, ModelIdentity("other.pt", "f" * 64), out / "c")
    return {"paths": paths, "again": again, "other": other, "painted": painted, "top": top, "row": row}


def _sources(study) -> dict[str, pydicom.Dataset]:
    return {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in study["files"])}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools; .ci/run does)")
def test_every_object_passes_dciodvfy(written):
    assert [p.name for p in written["paths"]] == ["sr.dcm", "attention_map.dcm",
                                                  *(f"overlay_s{s:03d}.dcm" for s in written["top"])]
    for path in written["paths"]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


def test_sr_reads_back_to_the_row(written, study):
    got = read_sr_result(written["paths"][0])
    assert got == {"probability": pytest.approx(0.873215, abs=1e-9), "threshold": pytest.approx(0.41), "prediction": 1,
                   "model_sha256": MODEL.sha256, "study_uid": str(pydicom.dcmread(study["files"][0]).StudyInstanceUID)}
    sr = hd.sr.srread(str(written["paths"][0]))
    group = sr.content.get_image_measurement_groups()[0]
    assert group.get_qualitative_evaluations(name=CODES["severity"])[0].value == CODES["severe"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    # the group references the bag's slices; the evidence lists the whole source series
    referenced = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in _walk(sr) if i.get("ValueType") == "IMAGE"}
    in_bag = {str(pydicom.dcmread(study["bag"]["meta"]["series"]["slice_files"][s]).SOPInstanceUID)
              for s in study["bag"]["kept_slices"].tolist()}
    assert referenced == in_bag
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == set(_sources(study))


def _walk(dataset):
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_same_study_new_series_and_no_identifier_the_input_did_not_carry(written, study):
    source = pydicom.dcmread(study["files"][0])
    series = set()
    for path in written["paths"]:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        series.add((ds.SOPClassUID, ds.SeriesInstanceUID))
        for keyword in IDENTIFYING:
            value = str(ds.get(keyword, "") or "")
            assert value in ("", str(source.get(keyword, "") or "")), f"{path.name} {keyword}={value!r}"
    assert len({uid for _, uid in series}) == 3  # SR, map, overlays: a series each


def test_uids_are_stable_per_study_and_model(written):
    uids = lambda paths: [(str(pydicom.dcmread(p).SeriesInstanceUID), str(pydicom.dcmread(p).SOPInstanceUID)) for p in paths]  # noqa: E731
    assert uids(written["paths"]) == uids(written["again"])
    assert not set(uids(written["paths"])) & set(uids(written["other"]))
    assert result_uid("a", "b") == result_uid("a", "b") != result_uid("a", "c")
    assert result_uid("a").startswith("2.25.") and len(result_uid("a")) <= 64


def test_parametric_map_lies_on_the_source_slices_and_on_the_lesion(written, study):
    pm = pydicom.dcmread(written["paths"][1])
    sources = _sources(study)
    frames = pm.pixel_array.reshape(-1, pm.Rows, pm.Columns)
    slope = float(pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope) \
        if "RealWorldValueMappingSequence" in pm.SharedFunctionalGroupsSequence[0] \
        else float(pm.PerFrameFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope)
    assert slope == pytest.approx(1.0 / LEVELS)
    slice_files = study["bag"]["meta"]["series"]["slice_files"]
    index_of = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): s for s, f in enumerate(slice_files)}
    shared = pm.SharedFunctionalGroupsSequence[0]
    lesion_hits = 0
    assert frames.shape[0] == len(study["bag"]["kept_slices"])
    for i, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[str(ref)]
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient], abs=1e-3)
        assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == pytest.approx(
            [float(v) for v in source.ImageOrientationPatient], abs=1e-4)
        assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx([float(v) for v in source.PixelSpacing])
        s = index_of[str(ref)]
        np.testing.assert_allclose(frames[i] * slope, written["painted"][s], atol=1.0 / LEVELS)
        lesion_hits += int(((frames[i] > 0) & (study["lesion"][s] > 0)).sum())
    attended = sum(int((f > 0).sum()) for f in frames)
    assert attended > 0 and lesion_hits / attended > 0.3  # the attended patch holds lesion pixels on the same slice


def test_overlays_are_the_source_slices_in_colour(written, study):
    sources = _sources(study)
    for path, s in zip(written["paths"][2:], written["top"].tolist()):
        sc = pydicom.dcmread(path)
        ref = sources[str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert str(ref.SOPInstanceUID) == str(pydicom.dcmread(study["bag"]["meta"]["series"]["slice_files"][s]).SOPInstanceUID)
        assert (sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (ref.Rows, ref.Columns, 3, "RGB")
        rgb = sc.pixel_array.astype(int)
        painted = written["painted"][s] > 0
        colour = np.abs(rgb[..., 0] - rgb[..., 2]) > 30  # attention is blended in colour, the CT is grey
        assert colour[~painted].mean() < 0.05
        assert not painted.any() or colour[painted].mean() > 0.5
    assert any((written["painted"][s] > 0).any() for s in written["top"].tolist())


@pytest.mark.parametrize("meta, reason", [
    ({"input_kind": "nifti"}, "no DICOM results: the input is a NIfTI file, not a DICOM series"),
    ({"input_kind": "slices"}, "no DICOM results: the input is slice images, not a DICOM series"),
    ({"input_kind": "dicom", "series": {}}, "no DICOM results: the series' files are not known"),
    ({"input_kind": "dicom", "series": {"slice_files": ["x"]}}, ""),
])
def test_which_inputs_get_dicom_results(meta, reason):
    assert dicom_results_reason(meta) == reason


def test_run_inference_writes_dicom_for_dicom_studies_only(study, untrained_model, tmp_path):
    vol, _, info = make_phantom(1, shape=SHAPE, spacing=SPACING)
    write_nifti(vol, SPACING, tmp_path / "in" / "case_n.nii.gz", origin=info["origin_lps"])
    shutil.copytree(study["root"] / "study", tmp_path / "in" / "study")
    predictions, n_failed = run_inference([tmp_path / "in"], untrained_model, tmp_path / "out", InferenceOptions(top_slices=2, dicom=True), progress=False)
    assert n_failed == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("input_kind")
    dicom, nifti = table.loc["dicom"], table.loc["nifti"]
    assert nifti["dicom_paths"] == "" and "no DICOM results: the input is a NIfTI file" in nifti["warning"]
    paths = dicom["dicom_paths"].split(";")
    assert [p.rsplit("/", 1)[-1] for p in paths][:2] == ["sr.dcm", "attention_map.dcm"] and len(paths) == 4
    got = read_sr_result(tmp_path / "out" / paths[0])
    assert got["probability"] == pytest.approx(float(dicom["probability"]), abs=1e-6)
    assert got["threshold"] == pytest.approx(float(dicom["threshold"]))
    assert got["prediction"] == int(dicom["prediction"])


def test_the_docs_files_only_command(study, untrained_model, tmp_path, capsys):
    """docs/pacs.md's ``ctmil infer export/ --dicom ...`` as written, on a phantom export; every object passes dciodvfy."""
    import shlex
    from pathlib import Path

    from ctmil.cli import main

    docs = Path(__file__).resolve().parents[2] / "docs" / "pacs.md"
    line = next(line for line in docs.read_text().splitlines() if line.startswith("ctmil infer export/ --dicom"))
    shutil.copytree(study["root"] / "study", tmp_path / "export" / "study")
    argv = [w.replace("export/", str(tmp_path / "export")).replace("model.pt", str(untrained_model))
            for w in shlex.split(line)[1:]]
    argv[argv.index("--out") + 1] = str(tmp_path / "results")
    assert main(argv) == 0, capsys.readouterr().err
    written = sorted((tmp_path / "results" / "cases").glob("*/dicom/*.dcm"))
    assert [p.name for p in written][-1] == "sr.dcm" and len(written) == 5  # SR, map, 3 overlays (--top-slices 3)
    if shutil.which("dciodvfy"):
        for path in written:
            result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            assert not [x for x in (result.stdout + result.stderr).splitlines() if x.startswith("Error")], path.name


@pytest.mark.parametrize("change", [{"threshold": 0.42}, {"mode": "slice"}, {"top": 1}, {"model": "e" * 64}])
def test_a_result_made_otherwise_gets_new_uids(study, written, tmp_path, change):
    """Same study and model, but another threshold, map mode, number of overlays or model: new objects, never the old
    UIDs with new content (a PACS would keep the stale one)."""
    row = {**written["row"], "threshold": change.get("threshold", written["row"]["threshold"])}
    model = ModelIdentity("model.pt", change["model"]) if "model" in change else MODEL
    top = written["top"][: change.get("top", len(written["top"]))]
    paths = write_dicom_results(study["bag"], written["painted"], top, row, model, tmp_path / "d", change.get("mode", "bag"))
    before = {str(pydicom.dcmread(p).SOPInstanceUID) for p in written["paths"]}
    assert not before & {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}


def _stripped_study(study, tmp_path, drop):
    folder = tmp_path / "in" / "study"
    folder.mkdir(parents=True)
    for f in study["files"]:
        ds = pydicom.dcmread(f)
        for keyword in drop:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(folder / f.name)
    return tmp_path / "in"


def test_a_de_identified_study_still_gets_its_results(study, untrained_model, tmp_path):
    """Type 2 attributes an anonymiser dropped (PatientID, PatientName, StudyID ...) are written empty."""
    export = _stripped_study(study, tmp_path, ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID",
                                               "AccessionNumber", "ReferringPhysicianName"))
    predictions, n_failed = run_inference([export], untrained_model, tmp_path / "out", InferenceOptions(top_slices=1, dicom=True), progress=False)
    row = predictions.iloc[0]
    assert n_failed == 0 and len(row["dicom_paths"].split(";")) == 3 and "no DICOM results" not in row["warning"]
    sr = pydicom.dcmread(tmp_path / "out" / row["dicom_paths"].split(";")[0])
    assert sr.PatientID == "" and sr.PatientName == ""


def test_a_study_the_objects_cannot_be_made_for_keeps_its_prediction(study, untrained_model, tmp_path):
    export = _stripped_study(study, tmp_path, ("FrameOfReferenceUID",))
    predictions, n_failed = run_inference([export], untrained_model, tmp_path / "out", InferenceOptions(top_slices=1, dicom=True), progress=False)
    row = predictions.iloc[0]
    assert n_failed == 0 and row["status"] == "ok" and 0.0 <= row["probability"] <= 1.0
    assert row["dicom_paths"] == "" and "no DICOM results: " in row["warning"]
    assert not list((tmp_path / "out" / "cases").glob("*/dicom/*.dcm"))  # no half set of objects
