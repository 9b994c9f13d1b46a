"""Reading the few header values discovery and HU conversion need from a DICOM file, fast.

Discovery reads the header of every file of an export, so its cost is paid per file. pydicom builds a full
element tree for each one; :func:`read_header` instead walks the little-endian data set once over the first
bytes of the file, keeps the raw values of :data:`HEADER_TAGS` and stops after group 0028. Sequences are
skipped by their length or, when undefined, by walking their items. It also locates uncompressed 16-bit
pixels (checking the pixel-data element header at the end of the file) so that they can be read straight
into the volume. Any file it does not handle — big-endian or deflated transfer syntaxes, malformed
elements — is read by pydicom instead, with the same result (``SliceHeader.parsed_by`` says which).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import Tag

#: keyword → (tag, VR) of every value read. VR decides the conversion (implicit-VR files carry none).
HEADER_TAGS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "ImageType": (0x00080008, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "Modality": (0x00080060, "CS"),
    "SeriesDescription": (0x0008103E, "LO"),
    "SliceThickness": (0x00180050, "DS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"),
    "ImageOrientationPatient": (0x00200037, "DS"),
    "SamplesPerPixel": (0x00280002, "US"),
    "NumberOfFrames": (0x00280008, "IS"),
    "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"),
    "PixelSpacing": (0x00280030, "DS"),
    "BitsAllocated": (0x00280100, "US"),
    "PixelRepresentation": (0x00280103, "US"),
    "RescaleIntercept": (0x00281052, "DS"),
    "RescaleSlope": (0x00281053, "DS"),
}
_BY_TAG = {tag: (keyword, vr) for keyword, (tag, vr) in HEADER_TAGS.items()}
_MULTI = {"ImageType", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}  # always tuples
_LAST_TAG = 0x0028FFFF  # every tag above lies in groups 0008–0028

IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_BIG_ENDIAN, _DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_PIXEL_DATA = b"\xe0\x7f\x10\x00"  # tag (7FE0,0010), little endian
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_HEAD_BYTES = 16384  # most CT headers end within this; more is read when not
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_TAG = struct.Struct("<HH")

#: what reading a damaged or non-DICOM file may raise (pydicom's fallback included); callers skip such files
READ_ERRORS = (
    InvalidDicomError, BytesLengthException, NotImplementedError, OSError, EOFError, ValueError, KeyError, TypeError,
    AttributeError, IndexError, struct.error,
)
#: VRs whose text may use the declared character set (the other text VRs read here are ASCII by the standard)
_CHARSET_VRS = {"LO"}
_DEFAULT_CHARSETS = {"", "ISO_IR 6", "ISO_IR 100"}  # both decode as latin-1


@dataclass
class SliceHeader:
    """The header values of one DICOM file that ctmil uses (no patient identifiers among them).

    ``values`` maps keywords of :data:`HEADER_TAGS` to Python values: ``str`` (UI, CS, LO, DA), ``int``
    (US, IS), ``float`` (DS), tuples for ImageType, ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing; absent or empty elements are left out. ``pixel_offset`` is the byte offset of raw
    little-endian 16-bit single-frame pixels when the file ends with them, else ``None``. ``dataset`` is a
    full pydicom dataset when one was given (its pixels are decoded from it).
    """

    path: str
    values: dict[str, Any]
    transfer_syntax: str = ""
    media_sop_class: str = ""
    pixel_offset: int | None = None
    parsed_by: str = "ctmil"
    dataset: pydicom.Dataset | None = field(default=None, repr=False)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.values.get(keyword, default)


class _Unsupported(Exception):
    """A layout the fast walker does not handle; pydicom reads the file instead."""


def _convert(keyword: str, vr: str, raw: bytes, encodings: list[str] | None = None) -> Any:
    if vr == "US":
        return _U16.unpack_from(raw)[0] if len(raw) >= 2 else None
    if encodings and vr in _CHARSET_VRS:
        text = decode_bytes(raw, encodings, {0x5C}).strip(" \0")
    else:
        text = raw.decode("latin-1").strip(" \0")
    if not text:
        return None
    if vr == "DS":
        values = tuple(float(v) for v in text.split("\\"))
    elif vr == "IS":
        values = tuple(int(float(v)) for v in text.split("\\"))
    else:
        values = tuple(v.strip(" \0") for v in text.split("\\"))
    return values if keyword in _MULTI else values[0]


class _Walker:
    """Little-endian data-set walker over a growing byte buffer of one open file."""

    def __init__(self, fp, implicit: bool, buf: bytes) -> None:
        self.fp, self.implicit, self.buf = fp, implicit, buf

    def need(self, end: int) -> None:
        while end > len(self.buf):
            more = self.fp.read(max(end - len(self.buf), _HEAD_BYTES))
            if not more:
                raise EOFError("file ends inside the header")
            self.buf += more

    def element(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """``(tag, vr, value_start, length)`` of the element at ``pos``."""
        self.need(pos + 8)
        group, elem = _TAG.unpack_from(self.buf, pos)
        tag = group << 16 | elem
        if implicit or group == 0xFFFE:  # item and delimiter tags never carry a VR
            return tag, None, pos + 8, _U32.unpack_from(self.buf, pos + 4)[0]
        vr = self.buf[pos + 4 : pos + 6]
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Unsupported("explicit VR expected")
        if vr in _LONG_VRS:
            self.need(pos + 12)
            return tag, vr, pos + 12, _U32.unpack_from(self.buf, pos + 8)[0]
        return tag, vr, pos + 8, _U16.unpack_from(self.buf, pos + 6)[0]

    def skip_undefined(self, pos: int, implicit: bool) -> int:
        """Skip the items of an undefined-length sequence starting at ``pos``; position after its delimiter."""
        while True:
            tag, _, start, length = self.element(pos, implicit)
            if tag == _SEQ_END:
                return start
            if tag != _ITEM:
                raise _Unsupported("malformed sequence")
            pos = start + length if length != 0xFFFFFFFF else self.skip_dataset(start, implicit, _ITEM_END)

    def skip_dataset(self, pos: int, implicit: bool, end_tag: int) -> int:
        """Skip the elements of an undefined-length item up to and past its ``end_tag`` delimiter."""
        while True:
            tag, vr, start, length = self.element(pos, implicit)
            if tag == end_tag:
                return start
            if length == 0xFFFFFFFF:
                pos = self.skip_undefined(start, implicit or vr == b"UN")
            else:
                pos = start + length

    def walk(self, pos: int) -> tuple[dict[int, tuple[bytes | None, bytes]], int]:
        """Raw values of the wanted tags from ``pos`` to the first tag past group 0028; the stop position."""
        found: dict[int, tuple[bytes | None, bytes]] = {}
        while True:
            if pos + 8 > len(self.buf):  # past the buffer (a long skipped element): read up to and beyond pos
                self.buf += self.fp.read(max(pos + 8 - len(self.buf), _HEAD_BYTES))
                if pos + 8 > len(self.buf):
                    return found, pos  # end of file: a header without pixel data
            tag, vr, start, length = self.element(pos, self.implicit)
            if tag > _LAST_TAG:
                return found, pos
            if length == 0xFFFFFFFF:
                pos = self.skip_undefined(start, self.implicit or vr == b"UN")
                continue
            if tag in _BY_TAG:
                self.need(start + length)
                found[tag] = (vr, self.buf[start : start + length])
            pos = start + length


def _file_meta(buf: bytes) -> tuple[dict[int, bytes], int]:
    """Group 0002 (always explicit VR little endian) of a file starting with the 128-byte preamble + DICM."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise InvalidDicomError("no DICOM preamble")
    meta, pos = {}, 132
    while pos + 8 <= len(buf):
        group, elem = _TAG.unpack_from(buf, pos)
        if group != 0x0002:
            return meta, pos
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, start = _U32.unpack_from(buf, pos + 8)[0], pos + 12
        else:
            length, start = _U16.unpack_from(buf, pos + 6)[0], pos + 8
        if start + length > len(buf):
            raise _Unsupported("file meta longer than the first read")
        meta[group << 16 | elem] = buf[start : start + length]
        pos = start + length
    raise _Unsupported("no data set after the file meta")


def _pixel_offset(fp, values: dict[str, Any], syntax: str, header_end: int) -> int | None:
    """Offset of the pixel values when the file ends with one uncompressed 16-bit frame, else ``None``."""
    if syntax not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    if values.get("BitsAllocated") != 16 or values.get("SamplesPerPixel", 1) != 1 or values.get("NumberOfFrames", 1) != 1:
        return None
    nbytes = int(values.get("Rows") or 0) * int(values.get("Columns") or 0) * 2
    header_len = 8 if syntax == IMPLICIT_LE else 12  # tag, (VR, reserved,) 32-bit length
    start = os.fstat(fp.fileno()).st_size - nbytes
    if nbytes == 0 or start - header_len < header_end:
        return None
    head = os.pread(fp.fileno(), header_len, start - header_len)
    ok = head[:4] == _PIXEL_DATA and (header_len == 8 or (head[4:6] in (b"OW", b"OB") and head[6:8] == b"\0\0"))
    return start if ok and int.from_bytes(head[-4:], "little") == nbytes else None


def header_values(ds: pydicom.Dataset) -> dict[str, Any]:
    """The :data:`HEADER_TAGS` values of a pydicom dataset, converted as :func:`read_header` does."""
    values = {}
    for keyword, (tag, vr) in HEADER_TAGS.items():
        elem = ds.get(tag)
        if elem is None or elem.value is None or elem.value == "" or elem.value == b"":
            continue
        value = elem.value
        if vr == "US":
            values[keyword] = int(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
            continue
        items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        if vr == "DS":
            items = [float(v) for v in items]
        elif vr == "IS":
            items = [int(v) for v in items]
        else:
            items = [str(v).strip(" \0") for v in items]
        values[keyword] = tuple(items) if keyword in _MULTI else items[0]
    return values


def _read_with_pydicom(path: str, fp) -> SliceHeader:
    fp.seek(0)
    # on a damaged file pydicom raises one of READ_ERRORS (BytesLengthException, NotImplementedError, ...)
    ds = read_partial(fp, stop_when=lambda tag, vr, length: tag > _LAST_TAG, specific_tags=[Tag(t) for t, _ in HEADER_TAGS.values()])
    values = header_values(ds)
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    header = SliceHeader(path, values, syntax, str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")), parsed_by="pydicom")
    if "Rows" in values and "Columns" in values:
        header.pixel_offset = _pixel_offset(fp, values, syntax, fp.tell())
    return header


def read_header(path: str | os.PathLike) -> SliceHeader:
    """Header values and raw-pixel offset of one DICOM file.

    Raises:
        InvalidDicomError, OSError, ...: the file is not readable DICOM (see :data:`READ_ERRORS`).
    """
    path = str(path)
    with open(path, "rb") as fp:
        buf = fp.read(_HEAD_BYTES)
        try:
            meta, pos = _file_meta(buf)
            syntax = meta.get(0x00020010, b"").decode("latin-1").strip(" \0")
            if syntax in (_BIG_ENDIAN, _DEFLATED) or not syntax:
                raise _Unsupported(f"transfer syntax {syntax or 'missing'}")
            walker = _Walker(fp, syntax == IMPLICIT_LE, buf)
            raw, end = walker.walk(pos)
            values = {}
            charset = raw.get(HEADER_TAGS["SpecificCharacterSet"][0], (None, b""))[1].decode("latin-1").strip(" \0")
            encodings = None if charset in _DEFAULT_CHARSETS else convert_encodings(charset.split("\\"))
            for tag, (vr, data) in raw.items():
                keyword, expected = _BY_TAG[tag]
                if vr is not None and vr.decode("latin-1") != expected and not (vr == b"UN" or (expected == "US" and vr == b"SS")):
                    raise _Unsupported(f"unexpected VR {vr!r} for {keyword}")
                value = _convert(keyword, expected, data, encodings)
                if value is not None:
                    values[keyword] = value
        except (_Unsupported, struct.error, ValueError, UnicodeDecodeError, EOFError):
            return _read_with_pydicom(path, fp)
        media = meta.get(0x00020002, b"").decode("latin-1").strip(" \0")
        header = SliceHeader(path, values, syntax, media)
        if "Rows" in values and "Columns" in values:
            header.pixel_offset = _pixel_offset(fp, values, syntax, end)
        return header
