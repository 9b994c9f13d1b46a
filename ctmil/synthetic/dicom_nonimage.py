"""DICOM objects without pixel data that a hospital export contains: a dose-report SR and an empty DICOMDIR."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from ctmil.synthetic.dicom_modules import PatientStudy, file_meta, make_uid, patient_study_module
from ctmil.synthetic.seeding import as_generator

__all__ = ["X_RAY_DOSE_SR_STORAGE", "dose_report_dataset", "dicomdir_dataset"]

X_RAY_DOSE_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.67")


def _code(value: str, meaning: str) -> Dataset:
    """A DCM coded concept."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def dose_report_dataset(
    *,
    rng: np.random.Generator | int,
    patient_id: str,
    patient_name: str | None,
    study_uid: str,
    study_date: str = "20200415",
    ctdi_vol: float = 8.5,
) -> Dataset:
    """A minimal X-Ray Radiation Dose SR object (Modality SR, no pixel data) belonging to ``study_uid``."""
    rng = as_generator(rng)
    ds = Dataset()
    sop = make_uid(rng)
    ds.file_meta = file_meta(X_RAY_DOSE_SR_STORAGE, sop, ExplicitVRLittleEndian)
    patient_study_module(ds, PatientStudy(patient_id, patient_name, study_uid, study_date, "101500", ""))
    ds.SOPClassUID = X_RAY_DOSE_SR_STORAGE
    ds.SOPInstanceUID = sop
    ds.Modality = "SR"
    ds.Manufacturer = "ctmil"
    ds.SeriesInstanceUID = make_uid(rng)
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    ds.InstanceNumber = 1
    ds.ContentDate = study_date
    ds.ContentTime = "102000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ConceptNameCodeSequence = DicomSequence([_code("113701", "X-Ray Radiation Dose Report")])
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = DicomSequence([_code("113830", "Mean CTDIvol")])
    item.TextValue = f"{ctdi_vol:.1f} mGy (synthetic)"
    ds.ContentSequence = DicomSequence([item])
    return ds


def dicomdir_dataset(*, rng: np.random.Generator | int) -> Dataset:
    """A minimal, empty DICOMDIR (Media Storage Directory Storage, no directory records, no pixel data)."""
    rng = as_generator(rng)
    ds = Dataset()
    ds.file_meta = file_meta("1.2.840.10008.1.3.10", make_uid(rng), ExplicitVRLittleEndian)
    ds.FileSetID = "CTMIL"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = DicomSequence([])
    return ds
