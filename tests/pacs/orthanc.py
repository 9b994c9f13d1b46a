"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) started on loopback ports with a temporary storage
folder, for the PACS round-trip tests. Tests skip with the reason when the packages are absent (``.ci/run`` installs
them, as it does Chromium)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "ctmil", "not-a-real-secret"  # the test PACS's one account (DICOMweb is authenticated, as a hospital's is)
CALLING_AE = "CTMIL"


def skip_reason() -> str:
    if not Path(ORTHANC).is_file():
        return "Orthanc not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)"
    if not DICOMWEB_PLUGIN.is_file():
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc process: ``http_port`` (REST and DICOMweb, authenticated), ``dicom_port`` (DIMSE, AE ``ORTHANC``)."""

    root: Path
    http_port: int = field(default_factory=_free_port)
    dicom_port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        return {
            "Name": "ctmil-test", "StorageDirectory": str(self.root / "storage"), "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "HttpTimeout": 30,
            "DicomModalities": {"ctmil": {"AET": CALLING_AE, "Host": "127.0.0.1", "Port": 1, "AllowGet": True,
                                          "AllowStore": True, "AllowFind": True, "AllowEcho": True}},
            "DicomCheckModalityHost": False, "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1", "Ssl": False},
            "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 4,
        }

    def start(self, timeout: float = 60.0) -> "Orthanc":
        (self.root / "storage").mkdir(parents=True, exist_ok=True)
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(self.config()))
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.get("/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    # Orthanc's own REST API, to check what the PACS holds

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, auth=(USER, PASSWORD), timeout=30, **kwargs)

    def upload(self, files) -> None:
        for f in files:
            r = requests.post(self.url + "/instances", data=Path(f).read_bytes(), auth=(USER, PASSWORD), timeout=30)
            r.raise_for_status()

    def study_series(self, study_uid: str) -> list[dict]:
        """The series of the study with this StudyInstanceUID: ``[{"modality", "sop_class", "n", "instances"}]``."""
        found = requests.post(self.url + "/tools/lookup", data=study_uid, auth=(USER, PASSWORD), timeout=30).json()
        studies = [f["ID"] for f in found if f["Type"] == "Study"]
        if not studies:
            return []
        out = []
        for series in self.get(f"/studies/{studies[0]}/series").json():
            instances = series["Instances"]
            tags = self.get(f"/instances/{instances[0]}/simplified-tags").json()
            out.append({"modality": series["MainDicomTags"].get("Modality", ""), "sop_class": tags.get("SOPClassUID", ""),
                        "n": len(instances), "instances": instances, "series_uid": series["MainDicomTags"]["SeriesInstanceUID"]})
        return out

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file").content


def started_orthanc(root: Path) -> Orthanc:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return Orthanc(root).start()
