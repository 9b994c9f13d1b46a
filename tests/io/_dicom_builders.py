"""Builders and the pydicom oracle shared by the header-walker tests (tests/io/test_dicom_header*.py).

The fast header walker must read exactly what pydicom reads, locate raw 16-bit pixels only where they are,
and fall back to pydicom (or raise one of READ_ERRORS) for everything else.

Oracle: for every generated file ``read_header(path).values`` equals
``header_values(pydicom.dcmread(path, stop_before_pixels=True))`` (compared with value *types*, so 1 != 1.0),
and a non-None ``pixel_offset`` points at bytes that, read as little-endian int16/uint16, are pydicom's
``pixel_array``. Exotic byte layouts (undefined-length UN, odd padding) are spliced in by hand.
"""

import io
import struct
import warnings
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from ctmil.io.dicom_header import HEADER_TAGS, READ_ERRORS, SliceHeader, header_values, read_header

SYNTAX = {"implicit": ImplicitVRLittleEndian, "explicit": ExplicitVRLittleEndian}
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1002"
SOP_UID = "1.2.826.0.1.3680043.8.498.1003"
DECOY_UID = "9.9.9.9"  # put in sequence items / UN values: must never become a top-level value
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-314159"
UNDEFINED = 0xFFFFFFFF
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


# --------------------------------------------------------------------------------------------- builders


def ct_slice(rows=6, cols=8, bits=16, signed=False, samples=1, frames=None, seed=0) -> Dataset:
    """A small CT slice with every HEADER_TAGS element set (pixels pseudo-random, full 16-bit range)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = SOP_UID
    ds.StudyDate = "20200401"
    ds.Modality = "CT"
    ds.SeriesDescription = "Thorax 1.0 B31f"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.SliceThickness = "1.25"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.SeriesNumber = "3"
    ds.InstanceNumber = "17"
    ds.ImagePositionPatient = ["-150.5", "-160.25", "-300"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames is not None:
        ds.NumberOfFrames = str(frames)
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(seed)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[bits, signed]
    info = np.iinfo(dtype)
    shape = (frames or 1, rows, cols, samples)
    pixels = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    if bits == 16:
        pixels.flat[0], pixels.flat[1] = info.min, info.max  # sign handling shows
    ds.PixelData = pixels.tobytes()
    return ds


def save(ds: Dataset, path, syntax=ExplicitVRLittleEndian, media_class=None):
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = media_class or ds.get("SOPClassUID", CTImageStorage)
    fm.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", SOP_UID)
    fm.TransferSyntaxUID = SYNTAX.get(syntax, syntax)
    ds.file_meta = fm
    ds.save_as(path, enforce_file_format=True)
    return path


def el(tag: int, vr: str | None, value: bytes, explicit: bool, length: int | None = None) -> bytes:
    """One little-endian element, encoded by hand (``length`` overrides, e.g. ``UNDEFINED``)."""
    length = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit or vr is None or tag >> 16 == 0xFFFE:
        return head + struct.pack("<I", length) + value
    if vr in LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length) + value
    return head + vr.encode() + struct.pack("<H", length) + value


def item(body: bytes, undefined: bool) -> bytes:
    if undefined:
        return el(ITEM, None, body, False, UNDEFINED) + el(ITEM_END, None, b"", False)
    return el(ITEM, None, body, False)


def seq(tag: int, items: list[bytes], undefined: bool, explicit: bool, vr: str = "SQ") -> bytes:
    body = b"".join(items)
    if undefined:
        return el(tag, vr, body, explicit, UNDEFINED) + el(SEQ_END, None, b"", False)
    return el(tag, vr, body, explicit)


def decoy_elements(explicit: bool) -> bytes:
    """Wanted-tag lookalikes (with other values) as they would appear inside an item, in tag order."""
    return b"".join(
        [
            el(0x00080016, "UI", b"1.2.3.4\0", explicit),
            el(0x00080060, "CS", b"MR", explicit),
            el(0x0020000E, "UI", (DECOY_UID + "\0").encode(), explicit),
            el(0x00200032, "DS", b"7\\7\\7 ", explicit),
            el(0x00280010, "US", struct.pack("<H", 999), explicit),
            el(0x00400555, "SQ", b"", explicit),  # a tag past group 0028 inside an item must not stop the walk
        ]
    )


def mark(ds: Dataset, tag: int) -> bytes:
    """Put a marker element at ``tag``; :func:`save_spliced` swaps its encoded bytes for hand-made ones."""
    marker = b"@@MARK%08X@@" % tag  # 16 bytes, LO: 8 header bytes in both implicit and explicit VR
    ds.add_new(tag, "LO", marker.decode())
    return marker


def save_spliced(ds: Dataset, path, syntax: str, raw: dict[int, bytes]):
    """Save ``ds`` with the elements at the tags of ``raw`` replaced by the given encoded bytes."""
    markers = {tag: mark(ds, tag) for tag in raw}
    save(ds, path, syntax)
    data = path.read_bytes()
    for tag, marker in markers.items():
        assert data.count(marker) == 1
        at = data.index(marker) - 8
        assert data[at : at + 4] == struct.pack("<HH", tag >> 16, tag & 0xFFFF) and len(marker) == 16
        assert data[at + 4 : at + 8] in (b"LO\x10\x00", b"\x10\x00\x00\x00")  # explicit / implicit header
        data = data[:at] + raw[tag] + data[at + 24 :]
    path.write_bytes(data)
    return path


def with_meta_syntax(data: bytes, uid: str | None) -> bytes:
    """File bytes with the (0002,0010) TransferSyntaxUID replaced (or removed), group length fixed."""
    at = data.index(b"\x02\x00\x10\x00UI")
    end = at + 8 + struct.unpack_from("<H", data, at + 6)[0]
    new = b"" if uid is None else el(0x00020010, "UI", (uid + "\0" * (len(uid) % 2)).encode(), True)
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    group_length = struct.unpack_from("<I", data, 140)[0] + len(new) - (end - at)
    return data[:140] + struct.pack("<I", group_length) + data[144:at] + new + data[end:]


# --------------------------------------------------------------------------------------------- oracle


def typed(values: dict) -> dict:
    """Values with their types, so that an int where a float is due (or a str for a tuple) shows."""

    def one(v):
        return (type(v).__name__, tuple(one(x) for x in v)) if isinstance(v, tuple) else (type(v).__name__, v)

    return {k: one(v) for k, v in values.items()}


def reference(path) -> dict:
    return header_values(pydicom.dcmread(path, stop_before_pixels=True))


def check(path, parsed_by="ctmil", pixels=True) -> SliceHeader:
    """read_header agrees with pydicom; ``parsed_by`` None: either reader will do; ``pixels``: whether a raw
    pixel offset must be found."""
    header = read_header(path)
    assert isinstance(header, SliceHeader) and header.path == str(path)
    assert header.parsed_by == parsed_by if parsed_by else header.parsed_by in ("ctmil", "pydicom")
    assert typed(header.values) == typed(reference(path))
    assert set(header.values) <= set(HEADER_TAGS)
    ds = pydicom.dcmread(path)
    assert header.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert header.media_sop_class == ds.file_meta.MediaStorageSOPClassUID
    if pixels:
        assert header.pixel_offset is not None
        rows, cols = header.values["Rows"], header.values["Columns"]
        dtype = "<i2" if header.values.get("PixelRepresentation") == 1 else "<u2"
        raw = path.read_bytes()
        assert header.pixel_offset + rows * cols * 2 == len(raw)
        np.testing.assert_array_equal(np.frombuffer(raw, dtype, rows * cols, header.pixel_offset).reshape(rows, cols), ds.pixel_array)
    else:
        assert header.pixel_offset is None
    return header


def expected_values(**changes) -> dict:
    """The values of an unchanged :func:`ct_slice`, written out independently of pydicom."""
    values = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "SOPClassUID": str(CTImageStorage),
        "StudyDate": "20200401",
        "Modality": "CT",
        "SeriesDescription": "Thorax 1.0 B31f",
        "SliceThickness": 1.25,
        "StudyInstanceUID": STUDY_UID,
        "SeriesInstanceUID": SERIES_UID,
        "SeriesNumber": 3,
        "InstanceNumber": 17,
        "ImagePositionPatient": (-150.5, -160.25, -300.0),
        "ImageOrientationPatient": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        "SamplesPerPixel": 1,
        "Rows": 6,
        "Columns": 8,
        "PixelSpacing": (0.703125, 0.703125),
        "BitsAllocated": 16,
        "PixelRepresentation": 0,
        "RescaleIntercept": -1024.0,
        "RescaleSlope": 1.0,
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


