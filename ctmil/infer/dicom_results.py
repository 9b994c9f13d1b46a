"""A case's results as DICOM objects in the source study (``ctmil infer --dicom``), built with highdicom.

For each DICOM study, into ``cases/<case>/dicom/``:

* ``sr.dcm`` -- a Comprehensive 3D SR, TID 1500 *Imaging Measurement Report*. Its one measurement group carries the
  severity finding as a coded qualitative evaluation, the calibrated probability and the threshold as numeric
  measurements, the algorithm identification (``ctmil``, its version, the model file's SHA-256) and references to
  the source slices the bag was made of; its evidence lists the whole source series.
* ``attention_map.dcm`` -- the attention painted on the CT (:func:`~ctmil.infer.attention_maps.paint_attention`) as a
  Parametric Map, one frame per slice that the bag used, each frame on its source slice (same position, orientation,
  pixel spacing and frame of reference). Stored as 16-bit integers with a real-world value map back to attention.
* ``overlay_sNNN.dcm`` -- Secondary Capture RGB pictures of the most attended slices (the lung window, the attention
  blended in, the lung box and patch grid in green), at the CT's own resolution, for reading on any viewer.

Every object has the source's Study Instance UID and patient/study attributes (copied from the source by highdicom:
nothing the input did not carry), a new series of its own, and UIDs derived from the study, the source series and the
model's hash (:func:`result_uid`): the same study run twice with the same model gives the same objects, so a PACS
keeps one copy. Why own code here: highdicom builds and checks the objects; which content items, codes and UIDs a
severity result needs is this module's choice.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctmil import __version__
from ctmil.infer.attention_maps import GRID
from ctmil.io.atomic import atomic_open
from ctmil.infer.overlays import _grid_lines, overlay_rgb
from ctmil.keys import Columns

__all__ = ["CODES", "DICOM_DIR", "ModelIdentity", "SEVERITY", "dicom_results_reason", "result_uid", "source_headers",
           "write_dicom_results"]

#: The folder of a case's DICOM results, under ``cases/<case>/``.
DICOM_DIR = "dicom"
MANUFACTURER = "ctmil"
BODY_PART = "CHEST"  # an unpaired part: no Laterality needed (the General Series module asks for one otherwise)
_SCHEME = "99CTMIL"  # private coding scheme for the concepts that have no standard code


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made the results: its file name, ctmil's version and the model file's SHA-256 (hex)."""

    name: str
    sha256: str
    version: str = __version__


def _codes():
    from pydicom.sr.coding import Code

    return {
        "severity": Code("246112005", "SCT", "Severity"),
        "severe": Code("24484000", "SCT", "Severe"),
        "non_severe": Code("NONSEVERE", _SCHEME, "Non-severe"),
        "covid": Code("840539006", "SCT", "COVID-19"),
        "lung": Code("39607008", "SCT", "Lung structure"),
        Columns.PROBABILITY: Code("PROBSEVERE", _SCHEME, "Probability of severe COVID-19"),
        Columns.THRESHOLD: Code("THRESHOLD", _SCHEME, "Decision threshold"),
        "procedure": Code("24627-2", "LN", "CT Chest"),
        "attention": Code("ATTENTION", _SCHEME, "MIL attention"),
        "no_units": Code("1", "UCUM", "no units"),
    }


CODES = _codes()
#: The severity finding's coded values by prediction (0 non-severe, 1 severe).
SEVERITY = {0: CODES["non_severe"], 1: CODES["severe"]}


#: The namespace of ctmil's name-based UUIDs (itself a name-based UUID of "ctmil results").
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "ctmil results")


def result_uid(*parts: object) -> str:
    """A DICOM UID derived from ``parts`` alone: the same parts always give the same UID. It is the ``2.25`` form of
    a name-based (SHA-1, version 5) UUID of the parts (ISO/IEC 9834-8, DICOM PS3.5 B.2), so it is unique without a
    registered root. (pydicom's ``generate_uid`` ignores its entropy sources without a prefix, and a prefix would be a
    root ctmil does not own.)"""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"


def dicom_results_reason(meta: Mapping) -> str:
    """``""`` when a case can get DICOM results, else the one-line reason it gets none."""
    kind = meta.get("input_kind")
    if kind != "dicom":
        return f"no DICOM results: the input is {'a NIfTI file' if kind == 'nifti' else 'slice images'}, not a DICOM series"
    series = meta.get("series") or {}
    if not series.get("slice_files"):
        return "no DICOM results: the series' files are not known"
    return ""


#: Type 2 patient and study attributes the results copy from the source (highdicom needs them present).
TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "AccessionNumber")


def source_headers(meta: Mapping) -> list:
    """The source series' headers (pydicom datasets without pixels), in the volume's slice order."""
    import pydicom

    headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in meta["series"]["slice_files"]]
    for header in headers:  # Type 2 attributes a de-identified export may have dropped: present and empty, as allowed
        for keyword in TYPE2_COPIED:
            if keyword not in header:
                setattr(header, keyword, "")
    return headers


def _orientation_letters(vector: Sequence[float]) -> str:
    """The patient-orientation letter of a direction cosine (its largest component)."""
    axis = int(np.argmax(np.abs(vector)))
    return ("LR", "PA", "HF")[axis][0 if vector[axis] > 0 else 1]


def _algorithm(model: ModelIdentity):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name="ctmil", version=model.version,
                                         parameters=[f"model {model.name}", f"model sha256 {model.sha256}"])


def build_sr(sources: list, kept: Sequence[int], row: Mapping, model: ModelIdentity, uids: Mapping[str, str]):
    """The TID 1500 Comprehensive 3D SR of one case (see the module docstring)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid("device", model.sha256), name="ctmil", manufacturer_name=MANUFACTURER,
            model_name=model.name[:64]))
    algorithm = _algorithm(model)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids["tracking"], identifier="COVID-19 severity"),
        finding_type=CODES["covid"],
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(CODES["lung"])],
        measurements=[
            hd.sr.Measurement(name=CODES[Columns.PROBABILITY], value=float(row[Columns.PROBABILITY]), unit=CODES["no_units"],
                              algorithm_id=algorithm),
            hd.sr.Measurement(name=CODES[Columns.THRESHOLD], value=float(row[Columns.THRESHOLD]), unit=CODES["no_units"]),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(CODES["severity"], SEVERITY[int(row[Columns.PREDICTION])])],
        source_images=[hd.sr.SourceImageForMeasurementGroup(sources[s].SOPClassUID, sources[s].SOPInstanceUID)
                       for s in kept],
    )
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=CODES["procedure"], imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=sources, content=report, series_instance_uid=uids["sr_series"], series_number=9701,
        sop_instance_uid=uids["sr"], instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = "ctmil COVID-19 severity (SR)"
    return sr


#: The Parametric Map's 16-bit levels: attention a is stored as round(a * LEVELS) (a is in [0, 1]).
LEVELS = 65535


def build_parametric_map(sources: list, kept: Sequence[int], painted: np.ndarray, model: ModelIdentity,
                         uids: Mapping[str, str], mode: str = "bag"):
    """The attention map of the ``kept`` slices as a Parametric Map on those source slices."""
    import highdicom as hd

    frames = np.round(np.clip(painted[list(kept)], 0.0, 1.0) * LEVELS).astype(np.uint16)  # (n, rows, cols)
    explanation = "attention per patch, summing to 1 over the bag" if mode == "bag" else "attention per patch, summing to 1 per slice"
    mapping = hd.pm.RealWorldValueMapping(lut_label="ATTENTION", lut_explanation=explanation, unit=CODES["no_units"],
                                          value_range=(0, LEVELS), slope=1.0 / LEVELS, intercept=0.0,
                                          quantity_definition=CODES["attention"])
    pm = hd.pm.ParametricMap(
        source_images=[sources[s] for s in kept], pixel_array=frames, series_instance_uid=uids["map_series"],
        series_number=9702, sop_instance_uid=uids["map"], instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="ctmil", software_versions=model.version, device_serial_number=model.sha256[:16],
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=LEVELS / 2, window_width=LEVELS)],
        content_label="ATTENTION",
        content_description="ctmil attention map")
    pm.SeriesDescription, pm.BodyPartExamined = "ctmil attention map", BODY_PART
    return pm


def build_overlay(source, ct_slice: np.ndarray, painted_slice: np.ndarray, box: Sequence[int], vmax: float,
                  intensity: str, uids: Mapping[str, str], index: int, number: int):
    """A Secondary Capture RGB picture of one slice: the CT, the attention blended in, the lung box and grid."""
    import highdicom as hd
    from PIL import Image, ImageDraw
    from pydicom.dataset import Dataset

    rgb = (overlay_rgb(ct_slice, painted_slice, intensity=intensity, vmax=vmax) * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(rgb)
    _grid_lines(ImageDraw.Draw(image), box, GRID, (1.0, 1.0), (0, 255, 0))
    orientation = [float(v) for v in source.ImageOrientationPatient]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.asarray(image), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=uids["overlay_series"], series_number=9703,
        sop_instance_uid=result_uid(uids["overlay_series"], index), instance_number=number, manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(v) for v in source.PixelSpacing),
        patient_orientation=(_orientation_letters(orientation[:3]), _orientation_letters(orientation[3:])))
    sc.SeriesDescription, sc.BodyPartExamined = "ctmil attention overlays", BODY_PART
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    sc.ImageComments = f"attention on source slice {source.SOPInstanceUID}"
    return sc


def result_uids(sources: list, model: ModelIdentity, settings: Mapping | None = None) -> dict[str, str]:
    """The objects' UIDs, derived from the study, the source series, the model and the ``settings`` that shape what
    the objects say (:func:`result_uid`): the same inputs give the same UIDs (a PACS keeps one copy), a result made
    otherwise (another threshold, map mode, number of overlays, ctmil version) gets new ones."""
    shaped = json.dumps({"version": model.version, **dict(settings or {})}, sort_keys=True, default=str)
    base = (sources[0].StudyInstanceUID, sources[0].SeriesInstanceUID, model.sha256, shaped)
    names = ("sr_series", "sr", "tracking", "map_series", "map", "overlay_series")
    return {name: result_uid(*base, name) for name in names}


def write_dicom_results(bag: Mapping, painted: "np.ndarray | None", top: Sequence[int], row: Mapping, model: ModelIdentity,
                        folder: "str | os.PathLike[str]", mode: str = "bag") -> list[Path]:
    """Write one case's SR, Parametric Map and overlays into ``folder`` (atomically each); returns their paths.

    ``painted``: the ``(S, H, W)`` attention map (``None``: a model without attention, the SR alone); ``top``: the slices to draw overlays of; ``row``: the case's
    ``predictions.csv`` row (``probability``, ``threshold``, ``prediction``).
    """
    meta = bag["meta"]
    sources = source_headers(meta)
    if len(sources) != int(meta["spatial_shape"][0]):
        raise ValueError(f"{len(sources)} source files for {meta['spatial_shape'][0]} slices")
    kept = [int(s) for s in np.asarray(bag["kept_slices"]).tolist()]
    uids = result_uids(sources, model, {Columns.THRESHOLD: round(float(row[Columns.THRESHOLD]), 6), "map_mode": mode,
                                        "top_slices": len(list(top)), "attention": painted is not None})
    objects = [("sr.dcm", build_sr(sources, kept, row, model, uids))]
    if painted is not None:
        objects.append(("attention_map.dcm", build_parametric_map(sources, kept, painted, model, uids, mode)))
        ct = bag["ct"].as_tensor()[0].numpy() if hasattr(bag["ct"], "as_tensor") else np.asarray(bag["ct"])[0]
        boxes = dict(zip(kept, np.asarray(bag["boxes"]).tolist()))
        vmax = float(painted.max())
    for number, s in enumerate((int(v) for v in top if painted is not None), 1):
        objects.append((f"overlay_s{s:03d}.dcm", build_overlay(sources[s], ct[s], painted[s], boxes[s], vmax,
                                                               meta.get("intensity", "hu"), uids, s, number)))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, dataset in objects:
        with atomic_open(folder / name, "wb") as fh:
            dataset.save_as(fh, enforce_file_format=True)
        paths.append(folder / name)
    return paths
