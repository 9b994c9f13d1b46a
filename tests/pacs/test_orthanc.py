"""A real PACS round trip: phantom studies in a real Orthanc (DICOMweb with authentication, and DIMSE) on loopback,
``ctmil infer --from ... --push ...`` run exactly as docs/pacs.md shows it, the results found in the same studies
through Orthanc's own API and parsed back; the PACS stopped mid-batch, then the rerun sends only what is missing."""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import highdicom as hd
import pandas as pd
import pydicom
import pytest

from ctmil.cli import main
from ctmil.infer.dicom_read import read_sr_result
from ctmil.io.discovery import study_key
from ctmil.pacs.clients import DicomWebPacs
from ctmil.synthetic.chest import make_phantom
from ctmil.synthetic.dicom_writer import write_dicom_series
from tests.pacs.orthanc import PASSWORD, USER, started_orthanc

pytestmark = pytest.mark.xdist_group("orthanc")  # one Orthanc at a time on the 2-core machine

DOCS = Path(__file__).resolve().parents[2] / "docs" / "pacs.md"
SHAPE, SPACING = (32, 112, 112), (6.0, 3.0, 3.0)
SR, PM, SC = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.7"


def docs_command(protocol: str, orthanc, model: Path, out: Path, study_uid: str = "") -> list[str]:
    """The docs' ``ctmil infer --from PROTOCOL`` example, pointed at the test server (the rest of it as written)."""
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith(f"ctmil infer --from {protocol} ")]
    assert len(lines) == 1, f"docs/pacs.md should show one 'ctmil infer --from {protocol}' command"
    text = (lines[0].replace("https://pacs.example.org/dicom-web", orthanc.dicomweb)
            .replace("PACS@pacs.example.org:104", orthanc.dimse).replace("model.pt", str(model)))
    argv = shlex.split(text)[1:]
    argv[argv.index("--out") + 1] = str(out)
    if "--study" in argv:
        argv[argv.index("--study") + 1] = study_uid
    return argv


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[dict]:
    """Three phantom studies (patient names that must never reach an output), as DICOM files."""
    root = tmp_path_factory.mktemp("studies")
    out = []
    for i in range(3):
        vol, _, info = make_phantom(10 + i, shape=SHAPE, spacing=SPACING)
        files = write_dicom_series(vol, SPACING, root / f"s{i}", rng=i, patient_name=f"PACS^PATIENT{i}", patient_id=f"PID{i}",
                                   origin=info["origin_lps"])
        out.append({"files": files, "uid": str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)})
    return out


@pytest.fixture
def orthanc(tmp_path):
    server = started_orthanc(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("CTMIL_DICOMWEB_USER", USER)
    monkeypatch.setenv("CTMIL_DICOMWEB_PASSWORD", PASSWORD)


def _results(orthanc, study_uid: str) -> dict[str, list[dict]]:
    by_class: dict[str, list[dict]] = {}
    for series in orthanc.study_series(study_uid):
        by_class.setdefault(series["sop_class"], []).append(series)
    return by_class


def _check_study(orthanc, study_uid: str, row, top_slices: int = 3) -> None:
    """The study holds its CT plus one SR, one map and one overlay series, each once; the SR says what the CSV says."""
    found = _results(orthanc, study_uid)
    assert [s["n"] for s in found[SR]] == [1] and [s["n"] for s in found[PM]] == [1]
    assert [s["n"] for s in found[SC]] == [top_slices]
    path = Path(orthanc.root) / f"{study_key(study_uid)}.sr.dcm"
    path.write_bytes(orthanc.instance_file(found[SR][0]["instances"][0]))
    got = read_sr_result(path)
    assert got["study_uid"] == study_uid
    assert got["probability"] == pytest.approx(float(row["probability"]), abs=1e-6)
    assert got["prediction"] == int(row["prediction"]) and got["threshold"] == pytest.approx(float(row["threshold"]))
    assert hd.sr.srread(str(path)).SeriesDescription.startswith("ctmil")


def _no_secrets(out: Path, text: str) -> None:
    assert PASSWORD not in text
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".csv", ".json", ".html", ".log"):
            content = f.read_text(errors="replace")
            assert PASSWORD not in content and "PACS^PATIENT" not in content, f


def test_dicomweb_round_trip_as_in_the_docs(orthanc, studies, untrained_model, tmp_path, credentials, capsys, caplog):
    for study in studies[:2]:
        orthanc.upload(study["files"])
    out = tmp_path / "results"
    with caplog.at_level(logging.DEBUG):  # -v: every library's debug records too, none of them with a credential
        code = main([*docs_command("dicomweb", orthanc, untrained_model, out), "-v"])
    err = capsys.readouterr().err
    assert code == 0, err
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 2 and set(predictions["status"]) == {"ok"}
    transfers = pd.read_csv(out / "pacs.csv", keep_default_na=False)
    assert sorted(transfers["direction"]) == ["pull", "pull", "push", "push"]
    assert set(transfers["status"]) == {"ok"} and set(transfers.loc[transfers["direction"] == "push", "n_sent"]) == {5}
    by_case = predictions.set_index("case_id")
    for study in studies[:2]:
        _check_study(orthanc, study["uid"], by_case.loc[study_key(study["uid"])])
    _no_secrets(out, err + caplog.text)


def test_dimse_round_trip_as_in_the_docs(orthanc, studies, untrained_model, tmp_path, capsys):
    for study in studies[:2]:
        orthanc.upload(study["files"])
    out = tmp_path / "results-dimse"
    code = main(docs_command("dimse", orthanc, untrained_model, out, study_uid=studies[1]["uid"]))
    assert code == 0, capsys.readouterr().err
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 1  # --study: that study only
    _check_study(orthanc, studies[1]["uid"], predictions.iloc[0])
    assert not _results(orthanc, studies[0]["uid"]).get(SR)  # the other study was left alone


def test_pacs_gone_mid_batch_then_rerun_sends_only_what_is_missing(orthanc, studies, untrained_model, tmp_path, credentials,
                                                                     capsys, monkeypatch):
    for study in studies:
        orthanc.upload(study["files"])
    out = tmp_path / "results"
    argv = ["infer", "--from", "dicomweb", orthanc.dicomweb, "--push", "dicomweb", orthanc.dicomweb,
            "--model", str(untrained_model), "--out", str(out), "--top-slices", "2", "-q"]
    store = DicomWebPacs.store
    calls = []

    def store_then_fail(self, files):
        calls.append(len(files))
        store(self, files)
        if len(calls) == 1:
            orthanc.stop()  # the PACS goes away after the first case's results are stored

    monkeypatch.setattr(DicomWebPacs, "store", store_then_fail)
    assert main(argv) == 3
    err = capsys.readouterr().err
    failed_lines = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed_lines) == 2 and all("(push): " in line and "cannot reach the PACS" in line for line in failed_lines)
    first = pd.read_csv(out / "pacs.csv", keep_default_na=False).set_index(["direction", "case_id"])
    assert sorted(first.loc["push", "status"]) == ["failed", "failed", "ok"]
    assert (first.loc["push", "error"] != "").sum() == 2 and all("\n" not in e for e in first["error"])

    monkeypatch.setattr(DicomWebPacs, "store", store)
    orthanc.start()
    assert main(argv) == 0, capsys.readouterr().err
    again = pd.read_csv(out / "pacs.csv", keep_default_na=False).set_index(["direction", "case_id"])
    assert set(again.loc["pull", "status"]) == {"cached"}  # nothing retrieved twice
    pushed = again.loc["push"]
    ok_before = first.loc["push"].index[first.loc["push", "status"] == "ok"][0]
    assert (pushed.loc[ok_before, "n_sent"], pushed.loc[ok_before, "n_present"]) == (0, 4)  # SR + map + 2 overlays
    assert sorted(pushed["n_sent"]) == [0, 4, 4]
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    for study in studies:  # each study holds each result exactly once
        found = _results(orthanc, study["uid"])
        assert [s["n"] for s in found[SR]] == [1] and [s["n"] for s in found[PM]] == [1] and [s["n"] for s in found[SC]] == [2]
    assert len(predictions) == 3 and set(predictions["status"]) == {"ok"}


def test_dimse_pacs_gone_mid_batch_is_one_line_per_case(orthanc, studies, untrained_model, tmp_path, capsys, monkeypatch):
    """Over DIMSE too: the PACS stops after the first case's C-STORE; the others fail in one line each, exit 3, and the
    rerun sends only what is missing."""
    from ctmil.pacs.clients import DimsePacs

    for study in studies[:2]:
        orthanc.upload(study["files"])
    out = tmp_path / "results"
    argv = ["infer", "--from", "dimse", orthanc.dimse, "--push", "dimse", orthanc.dimse, "--model", str(untrained_model),
            "--out", str(out), "--top-slices", "1", "-q"]
    store = DimsePacs.store

    def store_then_fail(self, files):
        store(self, files)
        orthanc.stop()

    monkeypatch.setattr(DimsePacs, "store", store_then_fail)
    assert main(argv) == 3
    failed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "(push): " in failed[0] and "ORTHANC@127.0.0.1" in failed[0]
    monkeypatch.setattr(DimsePacs, "store", store)
    orthanc.start()
    assert main(argv) == 0
    pushed = pd.read_csv(out / "pacs.csv", keep_default_na=False).query("direction == 'push'")
    assert sorted(pushed["n_sent"]) == [0, 3] and sorted(pushed["n_present"]) == [0, 3]
    for study in studies[:2]:
        found = _results(orthanc, study["uid"])
        assert [s["n"] for s in found[SR]] == [1] and [s["n"] for s in found[SC]] == [1]


@pytest.mark.parametrize("argv_tail, message", [
    (["--from", "dicomweb", "https://alice:hunter2@pacs/dicom-web"], "--from: a DICOMweb URL must not carry a user or password"),
    (["--from", "dimse", "pacs:104"], "--from: 'pacs:104' is not a DIMSE address AE@host:port"),
    (["--push", "smb", "x"], "--push: unknown PACS protocol 'smb'"),
    (["--study", "1.2.3"], "--study needs --from PROTOCOL ADDRESS"),
    ([], "give the CT to predict: input paths, or --from"),
    (["--from", "dicomweb", "https://pacs/dicom-web?token=hunter2"], "--from: a DICOMweb URL must be the service's root"),
    (["--from", "dimse", "PACS@host:104", "--ae-title", "A_TITLE_FAR_TOO_LONG"], "--ae-title: 'A_TITLE_FAR_TOO_LONG' is not an AE title"),
    (["--from", "dicomweb", "https://pacs/dicom-web", "--credentials", "/nonexistent.json"], "credentials file not found"),
])
def test_pacs_usage_errors_come_before_any_work(untrained_model, tmp_path, capsys, argv_tail, message):
    out = tmp_path / "out"
    assert main(["infer", "--model", str(untrained_model), "--out", str(out), *argv_tail]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"] or (len(err) == 1 and err[0].startswith(f"error: {message}")), err
    assert "hunter2" not in "\n".join(err) and not out.exists()


def test_unreachable_pacs_is_one_line_and_exit_1(untrained_model, tmp_path, capsys, credentials):
    from tests.pacs.orthanc import _free_port

    code = main(["infer", "--from", "dicomweb", f"http://127.0.0.1:{_free_port()}/dicom-web", "--model", str(untrained_model),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and re.match(r"error: http://127\.0\.0\.1:\d+/dicom-web: study search failed, cannot reach", err[0])
