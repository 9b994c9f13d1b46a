"""The two ways to talk to a PACS, behind one small interface (:class:`Pacs`):

* :class:`DicomWebPacs` -- DICOMweb with dicomweb-client: QIDO-RS to find studies, series and instances, WADO-RS to
  retrieve, STOW-RS to store;
* :class:`DimsePacs` -- DIMSE with pynetdicom: C-FIND to find, C-GET to retrieve (the images come back on the same
  association, so the PACS needs no route back to ctmil), C-STORE to store.

Every method raises :class:`~ctmil.pacs.address.PacsError` with one line when the PACS cannot be reached or refuses;
the message never carries credentials. Only what a retrieval needs is asked for: the CT series of a study.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import pydicom

from ctmil.io.atomic import atomic_open
from ctmil.pacs.address import Credentials, PacsAddress, PacsError

__all__ = ["DicomWebPacs", "DimsePacs", "Pacs", "connect"]

logger = logging.getLogger(__name__)

TIMEOUT_S = 30.0
PAGE = 500  # QIDO-RS results per request
RETRIES, RETRY_WAIT_MS = 3, 500  # DICOMweb requests: tries, and the back-off unit (waits of 1 s, then 2 s)
_STUDY, _SERIES, _SOP, _MODALITY = "0020000D", "0020000E", "00080018", "00080060"


class Pacs(Protocol):
    """What ctmil asks of a PACS."""

    address: PacsAddress

    def find_studies(self, study_uids: Sequence[str] = ()) -> list[str]:
        """The StudyInstanceUIDs of the studies with CT (of ``study_uids`` when given, else all)."""

    def ct_series(self, study_uid: str) -> list[str]:
        """The SeriesInstanceUIDs of a study's CT series."""

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> int:
        """Write a series' instances into ``folder`` (one ``<SOPInstanceUID>.dcm`` each); returns how many."""

    def instances(self, study_uid: str, series_uid: str) -> set[str]:
        """The SOPInstanceUIDs the PACS holds in a series (empty if it has none)."""

    def store(self, files: Sequence[Path]) -> None:
        """Store DICOM files; raises :class:`PacsError` unless every one was accepted."""


def ca_bundle() -> str:
    """The certificate authorities to trust for HTTPS: ``CTMIL_DICOMWEB_CA_BUNDLE``, else ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` (as requests reads them), else ``""`` (the system's)."""
    for name in ("CTMIL_DICOMWEB_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    return ""


def connect(address: PacsAddress, credentials: Credentials | None = None, ae_title: str = "CTMIL") -> Pacs:
    """The client of ``address``: :class:`DicomWebPacs` (with ``credentials``) or :class:`DimsePacs` (calling as
    ``ae_title``)."""
    if address.kind == "dicomweb":
        return DicomWebPacs(address, credentials or Credentials())
    return DimsePacs(address, ae_title)


def _save(dataset: pydicom.Dataset, folder: Path) -> None:
    """``folder/<SOPInstanceUID>.dcm``, written to a temporary name and renamed (never half a file)."""
    with atomic_open(folder / f"{dataset.SOPInstanceUID}.dcm", "wb") as fh:
        dataset.save_as(fh, enforce_file_format=True)


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


class DicomWebPacs:
    """A DICOMweb PACS (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client, authenticated by ``credentials``."""

    def __init__(self, address: PacsAddress, credentials: Credentials) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.address = address
        session = requests.Session()
        session.trust_env = False  # no proxy or .netrc from the environment: exactly the credentials given ...
        session.verify = ca_bundle() or True  # ... but a site's own certificate authority, where one is named
        if credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials.user:
            session.auth = (credentials.user, credentials.password)
        self.client = DICOMwebClient(url=address.url, session=session, timeout=TIMEOUT_S)
        # dicomweb-client retries every failed request (a lost connection too) with exponential back-off; 3 tries over
        # about 3 s ride out a blip without making a PACS that went away cost a minute per case
        self.client.set_http_retry_params(retry=True, max_attempts=RETRIES, wait_exponential_multiplier=RETRY_WAIT_MS)

    def _call(self, what: str, fn, *args, missing=None, **kwargs):
        """``fn(...)`` with its failures as one-line :class:`PacsError`; ``missing``: what an HTTP 404 means
        (some servers answer a search in a series they do not hold yet with 404, not an empty list)."""
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as err:
            code = getattr(err.response, "status_code", "?")
            if code == 404 and missing is not None:
                return missing
            hint = " (check the credentials)" if code in (401, 403) else ""
            raise PacsError(f"{self.address}: {what} refused with HTTP {code}{hint}") from None
        except requests.RequestException as err:
            raise PacsError(f"{self.address}: {what} failed, cannot reach the PACS ({type(err).__name__})") from None

    def _search(self, what: str, fn, **kwargs) -> list[dict]:
        """Every match of a QIDO-RS search, page by page (``PAGE`` at a time). Pages stop at a short page, or at one
        that brings nothing new (a server that ignores ``offset``)."""
        found, seen = [], set()
        while True:
            page = self._call(what, fn, limit=PAGE, offset=len(found), missing=[], **kwargs)
            new = [item for item in page if repr(sorted(item.items())) not in seen]
            seen.update(repr(sorted(item.items())) for item in new)
            found += new
            if len(page) < PAGE or not new:
                return found

    def find_studies(self, study_uids: Sequence[str] = ()) -> list[str]:
        if not study_uids:
            found = self._search("study search", self.client.search_for_studies, fields=["StudyInstanceUID"],
                                 search_filters={"ModalitiesInStudy": "CT"})
            return sorted({_value(s, _STUDY) for s in found} - {""})
        present = []
        for uid in study_uids:
            found = self._call("study search", self.client.search_for_studies, search_filters={"StudyInstanceUID": uid})
            present += [uid] if found else []
        return present

    def ct_series(self, study_uid: str) -> list[str]:
        found = self._search("series search", self.client.search_for_series, study_instance_uid=study_uid,
                             fields=["Modality"])
        return [_value(s, _SERIES) for s in found if _value(s, _MODALITY) == "CT"]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> int:
        folder.mkdir(parents=True, exist_ok=True)

        def fetch() -> int:
            n = 0
            for dataset in self.client.iter_series(study_uid, series_uid):
                _save(dataset, folder)
                n += 1
            return n

        return self._call("retrieval", fetch)

    def instances(self, study_uid: str, series_uid: str) -> set[str]:
        found = self._search("instance search", self.client.search_for_instances, study_instance_uid=study_uid,
                             series_instance_uid=series_uid, fields=["SOPInstanceUID"])
        return {_value(i, _SOP) for i in found} - {""}

    def store(self, files: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(str(f)) for f in files]
        if not datasets:
            return
        answer = self._call("storage", self.client.store_instances, datasets=datasets,
                            study_instance_uid=str(datasets[0].StudyInstanceUID))
        failed = list(getattr(answer, "FailedSOPSequence", []) or [])
        if failed:
            raise PacsError(f"{self.address}: the PACS refused {len(failed)} of {len(datasets)} objects "
                            f"(failure reason {failed[0].get('FailureReason', '?')})")


class DimsePacs:
    """A DIMSE PACS through pynetdicom: C-FIND, C-GET (study root), C-STORE, calling as ``ae_title``."""

    def __init__(self, address: PacsAddress, ae_title: str = "CTMIL") -> None:
        self.address = address
        self.ae_title = ae_title

    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        ae.connection_timeout = TIMEOUT_S
        return ae

    def _guard(self, what: str, fn, *args, **kwargs):
        """``fn(...)``, with what pynetdicom raises when the connection breaks or a context was refused (RuntimeError,
        ValueError, OSError) as a one-line :class:`PacsError`."""
        try:
            return fn(*args, **kwargs)
        except PacsError:
            raise
        except (RuntimeError, ValueError, OSError) as err:
            text = " ".join(str(err).split())[:120]
            raise PacsError(f"{self.address}: {what} failed ({type(err).__name__}: {text})") from None

    def _associate(self, ae, what: str, **kwargs):
        assoc = ae.associate(self.address.host, self.address.port, ae_title=self.address.ae_title, **kwargs)
        if not assoc.is_established:
            state = "rejected the association" if assoc.is_rejected else "cannot be reached"
            raise PacsError(f"{self.address}: {what} failed, the PACS {state}")
        return assoc

    def _find(self, level: str, query: dict) -> list[pydicom.Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = level
        for keyword, value in query.items():
            setattr(identifier, keyword, value)
        assoc = self._associate(ae, f"{level.lower()} search")
        found = []
        try:
            for status, answer in self._guard(f"{level.lower()} search", lambda: list(assoc.send_c_find(identifier, FIND))):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError(f"{self.address}: {level.lower()} search failed, the connection was lost")
                if code in (0xFF00, 0xFF01) and answer is not None:
                    found.append(answer)
                elif code != 0x0000:
                    raise PacsError(f"{self.address}: {level.lower()} search refused (status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def find_studies(self, study_uids: Sequence[str] = ()) -> list[str]:
        if not study_uids:
            found = self._find("STUDY", {"StudyInstanceUID": "", "ModalitiesInStudy": "CT"})
            return sorted({str(s.StudyInstanceUID) for s in found})
        present = []
        for uid in study_uids:
            present += [uid] if self._find("STUDY", {"StudyInstanceUID": uid}) else []
        return present

    def ct_series(self, study_uid: str) -> list[str]:
        found = self._find("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": ""})
        return [str(s.SeriesInstanceUID) for s in found if str(s.get("Modality", "")) == "CT"]

    def instances(self, study_uid: str, series_uid: str) -> set[str]:
        found = self._find("IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": ""})
        return {str(i.SOPInstanceUID) for i in found}

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> int:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        folder.mkdir(parents=True, exist_ok=True)
        ae = self._ae()
        ae.add_requested_context(GET)
        storage = (CTImageStorage, EnhancedCTImageStorage)
        for sop_class in storage:
            ae.add_requested_context(sop_class)
        written = []

        def on_store(event) -> int:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            _save(dataset, folder)
            written.append(dataset.SOPInstanceUID)
            return 0x0000

        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID, identifier.SeriesInstanceUID = study_uid, series_uid
        assoc = self._associate(ae, "retrieval", ext_neg=[build_role(c, scp_role=True) for c in storage],
                                evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            for status, _ in self._guard("retrieval", lambda: list(assoc.send_c_get(identifier, GET))):
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError(f"{self.address}: retrieval failed, the connection was lost")
                if code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                    raise PacsError(f"{self.address}: retrieval refused (status 0x{code:04X})")
                if code == 0xB000:
                    raise PacsError(f"{self.address}: retrieval incomplete, some images were not sent")
        finally:
            if assoc.is_established:
                assoc.release()
        return len(written)

    def store(self, files: Sequence[Path]) -> None:
        datasets = [pydicom.dcmread(str(f)) for f in files]
        if not datasets:
            return
        ae = self._ae()
        for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
            ae.add_requested_context(sop_class, syntax)
        assoc = self._associate(ae, "storage")
        try:
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            refused = sorted({d.SOPClassUID.name for d in datasets if str(d.SOPClassUID) not in accepted})
            if refused:
                raise PacsError(f"{self.address}: the PACS does not accept {', '.join(refused)}")
            for dataset in datasets:
                status = self._guard("storage", assoc.send_c_store, dataset)
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsError(f"{self.address}: storage failed, the connection was lost")
                if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                    raise PacsError(f"{self.address}: storage of a {dataset.SOPClassUID.name} refused (status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()


def group_by_series(files: Iterable[Path]) -> dict[tuple[str, str], dict[str, Path]]:
    """DICOM files by ``(StudyInstanceUID, SeriesInstanceUID)``, each a ``{SOPInstanceUID: path}``."""
    out: dict[tuple[str, str], dict[str, Path]] = {}
    for f in files:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        out.setdefault((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)), {})[str(ds.SOPInstanceUID)] = Path(f)
    return out
