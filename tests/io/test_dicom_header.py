"""The fast header walker must read exactly what pydicom reads, locate raw 16-bit pixels only where they are,
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


# --------------------------------------------------------------------------------------------- plain files


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("signed", [False, True])
def test_plain_slice(tmp_path, syntax, signed):
    path = save(ct_slice(signed=signed), tmp_path / "a.dcm", syntax)
    header = check(path)
    assert typed(header.values) == typed(expected_values(PixelRepresentation=int(signed)))
    assert header.transfer_syntax == SYNTAX[syntax] and header.media_sop_class == CTImageStorage
    assert header.pixel_offset == path.stat().st_size - 6 * 8 * 2 and header.dataset is None
    assert header.get("Rows") == 6 and header.get("NumberOfFrames", "none") == "none"
    assert read_header(str(path)) == header  # str and PathLike alike


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_non_square_image_pixels_are_row_major(tmp_path, syntax):
    path = save(ct_slice(rows=5, cols=9, signed=True, seed=7), tmp_path / "a.dcm", syntax)
    header = check(path)
    assert (header.values["Rows"], header.values["Columns"]) == (5, 9)


# --------------------------------------------------------------------------------------------- sequences


def _items(undefined_items: bool, nested: str | None, explicit: bool) -> list[bytes]:
    """Two items with decoys; with ``nested`` ('defined'/'undefined') a sequence inside the first item."""
    body = decoy_elements(explicit)
    if nested:
        inner = seq(0x00081140, [item(decoy_elements(explicit), nested == "undefined")] * 2, nested == "undefined", explicit)
        body = el(0x00080016, "UI", b"1.2.3.4\0", explicit) + inner + el(0x0020000E, "UI", (DECOY_UID + "\0").encode(), explicit)
    return [item(body, undefined_items), item(decoy_elements(explicit), not undefined_items)]


SEQUENCE_CASES = {
    # name: raw sequence bytes for (explicit) at (0008,1032) ProcedureCodeSequence, before SeriesDescription
    "defined": lambda x: seq(0x00081032, _items(False, None, x), False, x),
    "undefined": lambda x: seq(0x00081032, _items(True, None, x), True, x),
    "defined_in_undefined": lambda x: seq(0x00081032, _items(True, "defined", x), True, x),
    "undefined_in_defined": lambda x: seq(0x00081032, _items(False, "undefined", x), False, x),
    "undefined_in_undefined": lambda x: seq(0x00081032, _items(True, "undefined", x), True, x),
    "three_levels": lambda x: seq(
        0x00081032, [item(seq(0x00081140, [item(seq(0x00081199, [item(decoy_elements(x), True)], True, x), True)], True, x), True)], True, x
    ),
    "empty_defined": lambda x: seq(0x00081032, [], False, x),
    "empty_undefined": lambda x: seq(0x00081032, [], True, x),
    "empty_items": lambda x: seq(0x00081032, [item(b"", True), item(b"", False)], True, x),
}


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
def test_sequences_before_wanted_tags_are_skipped(tmp_path, syntax, case):
    raw = SEQUENCE_CASES[case](syntax == "explicit")
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", syntax, {0x00081032: raw})
    header = check(path)
    assert typed(header.values) == typed(expected_values())
    ds = pydicom.dcmread(path)
    assert "ProcedureCodeSequence" in ds  # pydicom sees the sequence where it was put


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("undefined", [False, True])
def test_sequences_written_by_pydicom(tmp_path, syntax, undefined):
    """Several real sequences in groups 0008 and 0018, nested, written by pydicom itself."""
    ds = ct_slice()
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, DECOY_UID
    ref.SeriesInstanceUID, ref.Rows = DECOY_UID, 999
    ref.is_undefined_length_sequence_item = undefined
    outer = Dataset()
    outer.SeriesInstanceUID = DECOY_UID
    outer.ReferencedImageSequence = Sequence([ref])
    outer.is_undefined_length_sequence_item = undefined
    ds.ReferencedImageSequence = Sequence([ref])  # (0008,1140)
    ds.SourceImageSequence = Sequence([outer, ref])  # (0008,2112), nested
    ds.ProcedureCodeSequence = Sequence([])  # (0008,1032), empty
    ds.CTAcquisitionTypeSequence = Sequence([Dataset()])  # (0018,9301), one empty item
    for name in ("ReferencedImageSequence", "SourceImageSequence", "ProcedureCodeSequence", "CTAcquisitionTypeSequence"):
        ds[name].is_undefined_length = undefined
    outer["ReferencedImageSequence"].is_undefined_length = not undefined
    path = save(ds, tmp_path / "a.dcm", syntax)
    assert path.read_bytes().count(b"\xfe\xff\xdd\xe0") == (4 if undefined else 1)  # sequence delimiters
    header = check(path)
    assert typed(header.values) == typed(expected_values())


# --------------------------------------------------------------------------------------------- private and UN


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_private_groups_before_and_after_group_0028(tmp_path, syntax):
    ds = ct_slice(signed=True)
    block = ds.private_block(0x0009, "CTMIL TEST", create=True)
    block.add_new(0x10, "LO", "private text")
    block.add_new(0x11, "OB", b"\x20\x00\x0e\x00" + b"x" * 31)  # starts like (0020,000E)
    block.add_new(0x12, "US", 4242)
    ds.private_block(0x0019, "SIEMENS CT VA0  COAD", create=True).add_new(0x92, "DS", "3.5")
    after = ds.private_block(0x0029, "CTMIL AFTER", create=True)
    after.add_new(0x10, "OB", bytes(range(256)) * 3)
    after.add_new(0x11, "LT", "after 0028")
    ds.private_block(0x7FD1, "GEIIS", create=True).add_new(0x10, "UL", 1)
    path = save(ds, tmp_path / "a.dcm", syntax)
    header = check(path)
    assert typed(header.values) == typed(expected_values(PixelRepresentation=1))


def test_un_element_with_lookalike_value_is_skipped(tmp_path):
    ds = ct_slice()
    block = ds.private_block(0x0009, "CTMIL TEST", create=True)
    lookalike = el(0x0020000E, None, (DECOY_UID + "\0").encode(), False) + el(0x00280010, None, struct.pack("<H", 999), False)
    block.add_new(0x10, "UN", lookalike)
    path = save(ds, tmp_path / "a.dcm", "explicit")
    assert b"UN\0\0" in path.read_bytes()
    header = check(path)
    assert typed(header.values) == typed(expected_values())


def test_wanted_tags_encoded_as_un(tmp_path):
    """Explicit VR files from some archives carry standard tags as UN; pydicom reads them by the dictionary VR."""
    ds = ct_slice()
    raw = {
        0x00180050: el(0x00180050, "UN", b"2.5 ", True),
        0x00200013: el(0x00200013, "UN", b" 42 ", True),
        0x00200032: el(0x00200032, "UN", b"1\\2\\3 ", True),
        0x00280011: el(0x00280011, "UN", struct.pack("<H", 8), True),
    }
    path = save_spliced(ds, tmp_path / "a.dcm", "explicit", raw)
    header = check(path)
    assert typed(header.values) == typed(expected_values(SliceThickness=2.5, InstanceNumber=42, ImagePositionPatient=(1.0, 2.0, 3.0)))


@pytest.mark.parametrize("where", ["top_level", "inside_sequence_item"])
def test_un_with_undefined_length_is_walked_as_implicit_sequence(tmp_path, where):
    # Per PS3.5 6.2.2 the content of an undefined-length UN is implicit VR little endian, whatever the file.
    implicit_items = [item(decoy_elements(False) + seq(0x00400556, [item(decoy_elements(False), True)], True, False), True), item(decoy_elements(False), False)]
    un = seq(0x00091010, implicit_items, True, True, vr="UN")
    creator = el(0x00090010, "LO", b"CTMIL UN", True)
    if where == "top_level":
        raw = {0x00090010: creator + un}
    else:
        body = el(0x00080016, "UI", b"1.2.3.4\0", True) + creator + un + el(0x0020000E, "UI", (DECOY_UID + "\0").encode(), True)
        raw = {0x00081032: seq(0x00081032, [item(body, True), item(decoy_elements(True), True)], True, True)}
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", "explicit", raw)
    header = check(path)
    assert typed(header.values) == typed(expected_values())


# --------------------------------------------------------------------------------------------- value formats


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_multi_values_padding_and_number_formats(tmp_path, syntax):
    x = syntax == "explicit"
    raw = {
        0x00080008: el(0x00080008, "CS", b"ORIGINAL\\ PRIMARY\\\\AXIAL ", x),  # an empty component, inner space
        0x0008103E: el(0x0008103E, "LO", b" Lung  ", x),
        0x00180050: el(0x00180050, "DS", b"1e-1", x),
        0x0020000D: el(0x0020000D, "UI", b"1.2.3\0", x),
        0x00200011: el(0x00200011, "IS", b" 12 ", x),
        0x00200013: el(0x00200013, "IS", b"+7", x),
        0x00200032: el(0x00200032, "DS", b"-1.5\\2.25\\-300 ", x),
        0x00200037: el(0x00200037, "DS", b"1.0\\0\\-0\\0 \\ 0.5E+0\\-2.5e-01", x),
        0x00280030: el(0x00280030, "DS", b" .5\\0.75", x),
        0x00281052: el(0x00281052, "DS", b"-1024.0 ", x),
        0x00281053: el(0x00281053, "DS", b"2.5E+00 ", x),
    }
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", syntax, raw)
    header = check(path)
    want = expected_values(
        ImageType=("ORIGINAL", "PRIMARY", "", "AXIAL"),
        SeriesDescription="Lung",
        SliceThickness=0.1,
        StudyInstanceUID="1.2.3",
        SeriesNumber=12,
        InstanceNumber=7,
        ImagePositionPatient=(-1.5, 2.25, -300.0),
        ImageOrientationPatient=(1.0, 0.0, -0.0, 0.0, 0.5, -0.25),
        PixelSpacing=(0.5, 0.75),
        RescaleIntercept=-1024.0,
        RescaleSlope=2.5,
    )
    assert typed(header.values) == typed(want)


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_single_valued_keyword_with_several_values_keeps_the_first(tmp_path, syntax):
    x = syntax == "explicit"
    raw = {0x00180050: el(0x00180050, "DS", b"2\\3 ", x), 0x0008103E: el(0x0008103E, "LO", b"a\\b ", x)}
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", syntax, raw)
    header = check(path)
    assert header.values["SliceThickness"] == 2.0 and header.values["SeriesDescription"] == "a"


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize(
    "tag, vr, value",
    [
        (0x0008103E, "LO", b""),
        (0x0008103E, "LO", b"    "),
        (0x00180050, "DS", b""),
        (0x00180050, "DS", b"  "),
        (0x00200011, "IS", b""),
        (0x00200032, "DS", b""),
        (0x00080005, "CS", b""),
        (0x00280008, "IS", b""),
        (0x0020000E, "UI", b"\0\0"),  # only padding
        (0x00080060, "CS", b"\0 "),
    ],
)
def test_empty_wanted_elements_are_left_out(tmp_path, syntax, tag, vr, value):
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", syntax, {tag: el(tag, vr, value, syntax == "explicit")})
    header = check(path)
    keyword = next(k for k, (t, _) in HEADER_TAGS.items() if t == tag)
    assert keyword not in header.values
    assert typed(header.values) == typed({k: v for k, v in expected_values().items() if k != keyword})


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_missing_optional_tags(tmp_path, syntax):
    ds = ct_slice()
    for name in ("SpecificCharacterSet", "ImageType", "SeriesDescription", "SliceThickness", "StudyDate", "SeriesNumber", "RescaleIntercept", "RescaleSlope"):
        del ds[name]
    header = check(save(ds, tmp_path / "a.dcm", syntax))
    assert typed(header.values) == typed(
        expected_values(SpecificCharacterSet=None, ImageType=None, SeriesDescription=None, SliceThickness=None, StudyDate=None, SeriesNumber=None, RescaleIntercept=None, RescaleSlope=None)
    )


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_missing_rows_means_no_pixel_offset(tmp_path, syntax):
    ds = ct_slice()
    del ds.Rows
    header = check(save(ds, tmp_path / "a.dcm", syntax), pixels=False)
    assert "Rows" not in header.values and header.values["Columns"] == 8


def test_unexpected_vr_of_a_wanted_tag_falls_back_to_pydicom_and_keeps_the_pixel_offset(tmp_path):
    ds = ct_slice(signed=True)
    ds.add_new(0x00180050, "FD", 2.5)  # SliceThickness as FD instead of DS
    path = save(ds, tmp_path / "a.dcm", "explicit")
    header = check(path, parsed_by="pydicom", pixels=True)
    assert header.values["SliceThickness"] == 2.5


def test_rows_as_ss_is_accepted(tmp_path):
    path = save_spliced(ct_slice(), tmp_path / "a.dcm", "explicit", {0x00280010: el(0x00280010, "SS", struct.pack("<h", 6), True)})
    header = check(path)
    assert header.values["Rows"] == 6


# Regression: text used to be decoded as latin-1 whatever SpecificCharacterSet said, so a UTF-8 (ISO_IR 192)
# SeriesDescription came back as mojibake; it is now decoded by the declared character set, as pydicom does.
@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("charset, text", [("ISO_IR 100", "Thorax nativ Lunge ü"), ("ISO_IR 192", "Thorax – Lunge ü")])
def test_series_description_in_declared_character_set(tmp_path, syntax, charset, text):
    ds = ct_slice()
    ds.SpecificCharacterSet = charset
    ds.SeriesDescription = text
    header = check(save(ds, tmp_path / "a.dcm", syntax), parsed_by=None)  # decoding or falling back: both fine
    assert header.values["SeriesDescription"] == text


# --------------------------------------------------------------------------------------------- big headers


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("size", [16000, 16384, 20000, 40000, 70000])
@pytest.mark.parametrize("kind", ["private_ob", "long_text", "defined_sequence"])
def test_headers_larger_than_the_first_read(tmp_path, syntax, size, kind):
    # Regression: the walker jumps over an unwanted value by `pos = start + length`; when `pos + 8` was past
    # the buffer it used to read only ONE more 16 KiB chunk and, if still short, took it for the end of the
    # file, silently dropping every later value (Rows, Columns, ...) for elements >= ~32 KiB (40000, 70000).
    ds = ct_slice(signed=True)
    if kind == "private_ob":
        ds.private_block(0x0009, "CTMIL BIG", create=True).add_new(0x10, "OB", bytes(range(256)) * (size // 256) + b"\x01" * (size % 256))
    elif kind == "long_text":  # (0010,4000) PatientComments LT, before every group 0018-0028 value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # > 64 KiB: pydicom writes it as UN in explicit VR
            ds.PatientComments = "x" * size
    else:
        big = Dataset()
        big.add_new(0x00081155, "UI", DECOY_UID)
        big.add_new(0x00090010, "LO", "CTMIL BIG")
        big.add_new(0x00091010, "OB", b"\x55" * size)
        ds.ReferencedImageSequence = Sequence([big])
    path = save(ds, tmp_path / "a.dcm", syntax)
    assert path.stat().st_size > size
    header = check(path)
    assert typed(header.values) == typed(expected_values(PixelRepresentation=1))


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("split", [2, 30, 62])  # elements start at even offsets
def test_long_wanted_value_across_the_buffer_boundary(tmp_path, syntax, split):
    """ImageOrientationPatient's value (64 bytes) starts in the first 16 KiB read and ends after it."""
    iop = ["0.99999999999999", "0.0000000000001", "0", "0", "0.99999999999999", "-0.000000000001"]
    pad = 16000
    for _ in range(2):  # once to measure, once with the padding that puts `split` value bytes before 16384
        ds = ct_slice()
        ds.private_block(0x0009, "CTMIL PAD", create=True).add_new(0x10, "OB", b"\0" * pad)
        ds.ImageOrientationPatient = iop
        path = save(ds, tmp_path / "a.dcm", syntax)
        value_start = path.read_bytes().index(b"0.99999999999999\\0.0000000000001")
        pad += 16384 - split - value_start
    assert value_start + split == 16384
    header = check(path)
    assert header.values["ImageOrientationPatient"] == tuple(float(v) for v in iop)


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("shift", range(0, 40, 2))
def test_element_headers_straddling_the_first_read(tmp_path, syntax, shift):
    """Move the data set so that element headers of wanted tags fall across byte 16384."""
    ds = ct_slice()
    ds.private_block(0x0009, "CTMIL PAD", create=True).add_new(0x10, "OB", b"\0" * (16384 - 500 + shift))
    check(save(ds, tmp_path / "a.dcm", syntax))


# --------------------------------------------------------------------------------------------- fallbacks


def test_big_endian_falls_back_to_pydicom(tmp_path):
    ds = ct_slice()
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    path = save(ds, tmp_path / "a.dcm", ExplicitVRBigEndian)
    header = check(path, parsed_by="pydicom", pixels=False)
    assert header.transfer_syntax == ExplicitVRBigEndian
    assert typed(header.values) == typed(expected_values())


@pytest.mark.parametrize("with_sequence", [False, True])
def test_deflated_is_inflated_and_walked(tmp_path, with_sequence):
    ds = ct_slice()
    if with_sequence:
        ds.ReferencedImageSequence = Sequence([Dataset()])
        ds.ReferencedImageSequence[0].SeriesInstanceUID = DECOY_UID
    path = save(ds, tmp_path / "a.dcm", DeflatedExplicitVRLittleEndian)
    assert SERIES_UID.encode() not in path.read_bytes()  # really deflated
    header = check(path, parsed_by="ctmil", pixels=False)
    assert typed(header.values) == typed(expected_values())


def test_deflated_by_hand_matches(tmp_path):
    """A deflated file built with zlib (not by pydicom's writer)."""
    plain = save(ct_slice(), tmp_path / "plain.dcm", "explicit").read_bytes()
    data = with_meta_syntax(plain, DeflatedExplicitVRLittleEndian)
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(data[:meta_end] + comp.compress(data[meta_end:]) + comp.flush())
    header = check(path, parsed_by="ctmil", pixels=False)
    assert typed(header.values) == typed(expected_values())


def _uncompressed_meta(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # Dataset.compress() wants to know where it starts
    return ds


@pytest.mark.parametrize("signed", [False, True])
def test_rle_lossless_is_read_by_ctmil_without_offset(tmp_path, signed):
    ds = _uncompressed_meta(ct_slice(signed=signed))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence.is_undefined_length = True
    path = save(ds, tmp_path / "a.dcm", RLELossless)
    header = check(path, parsed_by="ctmil", pixels=False)
    assert header.transfer_syntax == RLELossless
    assert typed(header.values) == typed(expected_values(PixelRepresentation=int(signed)))


def test_jpeg2000_lossless_is_read_by_ctmil_without_offset(tmp_path):
    pytest.importorskip("openjpeg", reason="no JPEG 2000 encoder installed")
    ds = _uncompressed_meta(ct_slice(rows=32, cols=32, signed=False))  # OpenJPEG needs >= 32 px here
    try:
        ds.compress(JPEG2000Lossless)
    except (RuntimeError, NotImplementedError, ValueError) as exc:  # no usable encoder plugin
        pytest.skip(f"JPEG 2000 encoding unavailable: {exc}")
    path = save(ds, tmp_path / "a.dcm", JPEG2000Lossless)
    header = check(path, parsed_by="ctmil", pixels=False)
    assert header.transfer_syntax == JPEG2000Lossless
    assert typed(header.values) == typed(expected_values(Rows=32, Columns=32))


# --------------------------------------------------------------------------------------------- no raw pixels


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize(
    "kind",
    ["8bit", "trailing_padding", "trailing_private", "multiframe", "multiframe_one", "rgb", "pixel_data_longer"],
)
def test_layouts_without_a_raw_pixel_offset(tmp_path, syntax, kind):
    changes = {}
    pixels = False
    if kind == "8bit":
        ds = ct_slice(bits=8)
        changes = {"BitsAllocated": 8}
    elif kind == "trailing_padding":
        ds = ct_slice()
        ds.DataSetTrailingPadding = b"\0" * 16
    elif kind == "trailing_private":
        ds = ct_slice()
        ds.private_block(0x7FE1, "CTMIL AFTER", create=True).add_new(0x10, "OB", b"\x01\x02")
    elif kind == "multiframe":
        ds = ct_slice(frames=2)
        changes = {"NumberOfFrames": 2}
    elif kind == "multiframe_one":  # NumberOfFrames 1 is a single frame: raw pixels are usable
        ds = ct_slice(frames=1)
        changes = {"NumberOfFrames": 1}
        pixels = True
    elif kind == "rgb":
        ds = ct_slice(samples=3)
        changes = {"SamplesPerPixel": 3}
    else:  # two bytes more pixel data than Rows*Columns*2
        ds = ct_slice()
        ds.PixelData = ds.PixelData + b"\0\0"
    path = save(ds, tmp_path / "a.dcm", syntax)
    if kind == "pixel_data_longer":  # pydicom would refuse pixel_array; header only
        header = read_header(path)
        assert header.pixel_offset is None and typed(header.values) == typed(reference(path))
        return
    header = check(path, pixels=pixels)
    assert typed(header.values) == typed(expected_values(**changes))


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
@pytest.mark.parametrize("kind", ["multiframe", "rgb"])
def test_pixel_values_that_mimic_a_pixel_data_header_are_not_taken_for_one(tmp_path, syntax, kind):
    """Multi-frame / RGB pixel data whose bytes just before the last Rows*Columns*2 happen to read like a
    (7FE0,0010) header of that length: only NumberOfFrames / SamplesPerPixel can tell."""
    ds = ct_slice(frames=2) if kind == "multiframe" else ct_slice(samples=3)
    nbytes = 6 * 8 * 2
    fake = b"\xe0\x7f\x10\x00" + (b"OW\0\0" if syntax == "explicit" else b"") + struct.pack("<I", nbytes)
    data = bytearray(ds.PixelData)
    data[len(data) - nbytes - len(fake) : len(data) - nbytes] = fake
    ds.PixelData = bytes(data)
    header = check(save(ds, tmp_path / "a.dcm", syntax), pixels=False)
    assert typed(header.values) == typed(expected_values(**({"NumberOfFrames": 2} if kind == "multiframe" else {"SamplesPerPixel": 3})))


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_pixels_as_ob_are_still_found(tmp_path, syntax):
    ds = ct_slice(signed=True)
    ds["PixelData"].VR = "OB"
    check(save(ds, tmp_path / "a.dcm", syntax))


# --------------------------------------------------------------------------------------------- broken files


def _assert_sane_or_read_error(path):
    """The contract for a damaged file: a SliceHeader with plausible values, or one of READ_ERRORS."""
    try:
        header = read_header(path)
    except READ_ERRORS:
        return None
    assert isinstance(header, SliceHeader)
    assert set(header.values) <= set(HEADER_TAGS)
    assert header.parsed_by in ("ctmil", "pydicom")
    if header.pixel_offset is not None:
        size = path.stat().st_size
        assert header.pixel_offset + header.values["Rows"] * header.values["Columns"] * 2 == size
    return header


def _unexpected_exceptions(path) -> str | None:
    """None when read_header keeps the contract, else the type and message of what escaped."""
    try:
        _assert_sane_or_read_error(path)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - exactly what the contract forbids
        return f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:90]}"
    return None


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    with pytest.raises(READ_ERRORS):
        read_header(path)


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is not DICOM\n" * 10,
        bytes(range(256)) * 3,
        b"\0" * 128 + b"DICN" + b"\x02\x00\x10\x00UI\x14\x00" + ExplicitVRLittleEndian.encode() + b"\0",
        b"\0" * 100,
        b"\0" * 131,
    ],
    ids=["text", "junk", "wrong_magic", "short", "preamble_without_magic"],
)
def test_non_dicom_raises_a_read_error(tmp_path, content):
    path = tmp_path / "x.dcm"
    path.write_bytes(content)
    with pytest.raises(READ_ERRORS):
        read_header(path)


def test_preamble_and_magic_only_is_an_empty_header(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    header = _assert_sane_or_read_error(path)
    if header is not None:  # pydicom reads it as an empty data set
        assert header.values == {} and header.pixel_offset is None and header.parsed_by == "pydicom"


def test_missing_and_directory_paths_raise_read_errors(tmp_path):
    with pytest.raises(READ_ERRORS):
        read_header(tmp_path / "nope.dcm")
    with pytest.raises(READ_ERRORS):
        read_header(tmp_path)


@pytest.mark.parametrize("seed", range(12))
def test_preamble_then_garbage(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + rng.integers(0, 256, 64 + 97 * seed, dtype=np.uint8).tobytes())
    header = _assert_sane_or_read_error(path)
    assert header is None or header.pixel_offset is None


def _rows_value_offset(data: bytes, explicit: bool) -> int:
    head = b"\x28\x00\x10\x00" + (b"US\x02\x00" if explicit else b"\x02\x00\x00\x00")
    assert data.count(head) == 1
    return data.index(head) + 8


# Regression: a file cut inside a US value (here Rows) makes the walker raise EOFError, the pydicom fallback
# then reads a 1-byte US value and raises pydicom.errors.BytesLengthException (derived from Exception only);
# it is in READ_ERRORS now, so scan_dicom_tree / load_dicom_series skip the file instead of crashing.
@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_cut_inside_a_us_value_raises_a_read_error(tmp_path, syntax):
    full = save(ct_slice(), tmp_path / "full.dcm", syntax).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[: _rows_value_offset(full, syntax == "explicit") + 1])
    try:
        header = read_header(path)
    except READ_ERRORS:
        return
    assert "Rows" not in header.values and header.pixel_offset is None


# Regression (same): cut inside the 4-byte value of (0002,0000) FileMetaInformationGroupLength → BytesLengthException.
def test_cut_inside_the_file_meta_group_length_raises_a_read_error(tmp_path):
    full = save(ct_slice(), tmp_path / "full.dcm", "explicit").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[:142])
    with pytest.raises(READ_ERRORS):
        read_header(path)


# Regression (same): a damaged VR in an explicit-VR file sends the file to pydicom, which raises
# NotImplementedError("Unknown Value Representation ...") — now in READ_ERRORS.
def test_damaged_vr_raises_a_read_error_or_reads(tmp_path):
    full = save(ct_slice(), tmp_path / "full.dcm", "explicit").read_bytes()
    at = _rows_value_offset(full, True) - 4
    path = tmp_path / "bad.dcm"
    path.write_bytes(full[:at] + b"U\xff" + full[at + 2 :])
    assert _unexpected_exceptions(path) is None


# Regression (READ_ERRORS, see above): scan_dicom_tree crashed with BytesLengthException instead of skipping.
def test_scan_skips_a_truncated_file(tmp_path):
    """The consequence of the contract: discovery skips a broken file and keeps the others."""
    from ctmil.io.dicom_series import scan_dicom_tree

    for k in range(3):
        ds = ct_slice(seed=k)
        ds.SOPInstanceUID = f"{SOP_UID}.{k}"
        ds.InstanceNumber = str(k + 1)
        ds.ImagePositionPatient = ["0", "0", str(k)]
        save(ds, tmp_path / f"{k}.dcm", "explicit")
    full = (tmp_path / "2.dcm").read_bytes()
    (tmp_path / "2.dcm").write_bytes(full[: _rows_value_offset(full, True) + 1])  # used to crash here
    studies, skipped = scan_dicom_tree(tmp_path, keep_headers=True)
    assert [p for p, _ in skipped] == [str(tmp_path / "2.dcm")]
    (series,) = next(iter(studies.values()))
    assert len(series.slices) == 2


# Regression (READ_ERRORS, see above): 8 cuts used to raise BytesLengthException.
@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_truncated_anywhere(tmp_path, syntax):
    """Cut all through the header and at a few places in the pixels: only READ_ERRORS escape, no pixel
    offset, values are pydicom's for the same cut file, and those the walker parses itself are complete."""
    ds = ct_slice()
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds.ReferencedImageSequence[0].SeriesInstanceUID = DECOY_UID
    ds.ReferencedImageSequence.is_undefined_length = True
    full = save(ds, tmp_path / "full.dcm", syntax).read_bytes()
    whole = typed(reference(tmp_path / "full.dcm"))
    pixel_start = len(full) - 6 * 8 * 2
    path = tmp_path / "cut.dcm"
    escaped, disagree, read_errors, walked = [], [], 0, 0
    cuts = list(range(200)) + list(range(200, pixel_start, 3)) + [pixel_start + 1, pixel_start + 50, len(full) - 1]
    for cut in cuts:  # every byte through the file meta, then every third (both parities of element starts)
        path.write_bytes(full[:cut])
        problem = _unexpected_exceptions(path)
        if problem:
            escaped.append((cut, problem))
            continue
        try:
            header = read_header(path)
        except READ_ERRORS:
            read_errors += 1
            continue
        assert header.pixel_offset is None, cut
        got = typed(header.values)
        if header.parsed_by == "ctmil":
            walked += 1
            assert all(whole[k] == v for k, v in got.items()), cut  # only complete elements
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref = typed(reference(path))
            except Exception:  # noqa: BLE001 - pydicom gives up on this cut: nothing to compare
                continue
        if got != ref:
            disagree.append((cut, header.parsed_by))
    # every cut before the magic raises, and so does every cut inside a header element (it runs past the end of
    # the file); cuts between elements and in the pixels are walked
    assert read_errors >= 132 + 100 and walked > 50
    assert not disagree, disagree[:10]
    assert not escaped, f"{len(escaped)} cuts raised outside READ_ERRORS, e.g. {escaped[:4]}"


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_cut_in_the_pixels_keeps_header_values(tmp_path, syntax):
    full = save(ct_slice(), tmp_path / "full.dcm", syntax).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[:-37])
    header = read_header(path)
    assert header.parsed_by == "ctmil" and header.pixel_offset is None
    assert typed(header.values) == typed(expected_values())


# Regression (READ_ERRORS, see above): used to raise NotImplementedError / BytesLengthException.
@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_corrupted_bytes_fuzz(tmp_path, syntax):
    """Random byte corruption in the header: a sane header or one of READ_ERRORS, nothing else."""
    ds = ct_slice()
    ds.ReferencedImageSequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedImageSequence[0].SeriesInstanceUID = DECOY_UID
    full = bytearray(save(ds, tmp_path / "full.dcm", syntax).read_bytes())
    header_end = len(full) - 6 * 8 * 2
    rng = np.random.default_rng(1234)
    path = tmp_path / "bad.dcm"
    escaped = []
    for trial in range(200):
        data = bytearray(full)
        for pos in rng.integers(132, header_end, size=rng.integers(1, 4)):
            data[pos] = rng.choice([0x00, 0xFF, 0x7F, 0x80, int(rng.integers(0, 256))])
        path.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem = _unexpected_exceptions(path)
        if problem:
            escaped.append((trial, problem))
    assert not escaped, f"{len(escaped)}/200 corrupted files raised outside READ_ERRORS, e.g. {escaped[:4]}"


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_meta_without_transfer_syntax_falls_back(tmp_path, syntax):
    """No (0002,0010): pydicom guesses the encoding; no raw pixel offset without a known syntax."""
    path = tmp_path / "a.dcm"
    path.write_bytes(with_meta_syntax(save(ct_slice(), path, syntax).read_bytes(), None))
    header = read_header(path)
    assert header.parsed_by == "pydicom" and header.transfer_syntax == "" and header.pixel_offset is None
    assert typed(header.values) == typed(expected_values())


@pytest.mark.parametrize("syntax, parsed_by", [("implicit", "pydicom"), ("explicit", "ctmil")])
def test_unknown_transfer_syntax(tmp_path, syntax, parsed_by):
    """A private syntax UID: the walker tries explicit VR LE and leaves an implicit data set to pydicom;
    raw pixels are never assumed."""
    uid = "1.2.826.0.1.3680043.8.498.77"
    path = tmp_path / "a.dcm"
    path.write_bytes(with_meta_syntax(save(ct_slice(), path, syntax).read_bytes(), uid))
    header = read_header(path)
    assert header.parsed_by == parsed_by and header.transfer_syntax == uid and header.pixel_offset is None
    assert typed(header.values) == typed(expected_values())


# --------------------------------------------------------------------------------------------- DICOMDIR, privacy


def test_dicomdir_media_class(tmp_path):
    ds = ct_slice()
    ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "120000", "1", "", ""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = SOP_UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fs = FileSet()
    fs.add(ds)
    fs.write(tmp_path / "export")
    path = tmp_path / "export" / "DICOMDIR"
    header = read_header(path)
    assert header.media_sop_class == "1.2.840.10008.1.3.10"
    assert header.parsed_by == "ctmil" and header.pixel_offset is None
    assert typed(header.values) == typed(reference(path))
    assert "SeriesInstanceUID" not in header.values  # only inside directory records


def test_minimal_dicomdir_built_by_hand(tmp_path):
    ds = Dataset()
    ds.FileSetID = "CTMIL"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = Sequence([Dataset()])
    ds.DirectoryRecordSequence[0].SeriesInstanceUID = DECOY_UID
    ds.SOPInstanceUID = SOP_UID
    path = save(ds, tmp_path / "DICOMDIR", "explicit", media_class="1.2.840.10008.1.3.10")
    header = read_header(path)
    assert header.media_sop_class == "1.2.840.10008.1.3.10" and header.values == {}
    assert header.parsed_by == "ctmil" and header.pixel_offset is None


@pytest.mark.parametrize("syntax", ["implicit", "explicit"])
def test_no_patient_identifiers_in_values(tmp_path, syntax):
    ds = ct_slice()
    ds.OtherPatientIDs = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    header = check(save(ds, tmp_path / "a.dcm", syntax))
    assert not {"PatientName", "PatientID", "PatientBirthDate"} & set(header.values)
    flat = repr(header.values) + repr(header)
    assert PATIENT_NAME not in flat and PATIENT_ID not in flat and "Doe" not in flat


def test_header_values_matches_on_in_memory_dataset():
    """header_values itself on a pydicom dataset, independent of any file."""
    ds = ct_slice()
    assert typed(header_values(ds)) == typed(expected_values())


def test_header_values_from_bytes_roundtrip():
    ds = ct_slice()
    buf = io.BytesIO()
    save(ds, buf, "implicit")
    buf.seek(0)
    assert typed(header_values(pydicom.dcmread(buf, stop_before_pixels=True))) == typed(expected_values())
