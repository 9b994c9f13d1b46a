"""Reading the few header values discovery and HU conversion need from a DICOM file, fast and safely.

Discovery reads the header of every file of an export, so its cost is paid per file, and any file may be
hostile. pydicom builds a full element tree for each one; :func:`read_header` instead walks the
little-endian data set once (:mod:`ctmil.io.dicom_walker`: iterative, lengths checked against the file size,
a fixed read window, deflated data sets inflated with a cap), keeps the raw values of :data:`HEADER_TAGS` and
stops after group 0028. It also locates uncompressed 16-bit pixels (checking the pixel-data element header at
the end of the file) so that they can be read straight into the volume. Layouts it does not handle
(big-endian, implicit data in an explicit file, an unexpected VR) are read by pydicom from a bounded
in-memory copy of the file (``SliceHeader.parsed_by`` says which). Whatever goes wrong, :func:`read_header`
raises only :class:`DicomReadError` with a one-line reason.

Text values are cut at the first control character and length-limited, so a wrong declared length cannot
carry neighbouring elements (a patient's name) into a value.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import Tag

from ctmil.io.dicom_walker import LONG_VRS, DicomReadError, FileSource, Unsupported, Walker, inflate

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
    "FrameOfReferenceUID": (0x00200052, "UI"),
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
_PIXEL_DATA = b"\xe0\x7f\x10\x00"  # tag (7FE0,0010), little endian
_HEAD_BYTES = 16384  # the file meta group must end within this
_FALLBACK_BYTES = 64 << 20  # pydicom reads at most this much of a file, from memory
_U16 = struct.Struct("<H")
_TAG = struct.Struct("<HH")
TEXT_LIMIT = 64  # characters kept of a text value (LO, the free-text VR read here, allows 64)
_MAX_IS = 2**31 - 1  # IS is a 32-bit signed integer string
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # a text value ends at its first control character

#: what reading a damaged or non-DICOM file may raise (pydicom's fallback included); callers skip such files
READ_ERRORS = (
    DicomReadError, InvalidDicomError, BytesLengthException, NotImplementedError, OSError, EOFError, ValueError, KeyError, TypeError,
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
    data_start: int | None = None  # byte offset of the (deflated) data set after the file meta
    checked: bool = False  # image size and geometry found usable by scan_dicom_tree (not checked again on loading)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self.values.get(keyword, default)


def clean_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut at its first control character, stripped of padding and limited to ``limit`` characters."""
    control = _CONTROL.search(text)
    if control:
        text = text[: control.start()]
    return text.strip(" \0")[:limit]


def _number(keyword: str, vr: str, text: str) -> float | int:
    """One DS (float, possibly not finite: geometry checks reject those) or IS (bounded int) value."""
    try:
        value = float(text)
    except ValueError:
        raise DicomReadError(f"{keyword} is not a number ({text[:16]!r})") from None
    if vr == "DS":
        return value
    if not math.isfinite(value) or abs(value) > _MAX_IS:
        raise DicomReadError(f"{keyword} is not a 32-bit integer ({text[:16]!r})")
    return int(text) if text.lstrip("+-").isdigit() else int(value)


def _convert(keyword: str, vr: str, raw: bytes, encodings: list[str] | None = None) -> Any:
    if vr == "US":
        return _U16.unpack_from(raw)[0] if len(raw) >= 2 else None
    if encodings and vr in _CHARSET_VRS:
        text = decode_bytes(raw, encodings, {0x5C})
    else:
        text = raw.decode("latin-1")
    text = clean_text(text, TEXT_LIMIT if vr in _CHARSET_VRS else 1024)
    if not text:
        return None
    if vr in ("DS", "IS"):
        values = tuple(_number(keyword, vr, v.strip(" \0")) for v in text.split("\\"))
    else:
        values = tuple(v.strip(" \0") for v in text.split("\\"))
    return values if keyword in _MULTI else values[0]


def _file_meta(buf: bytes) -> tuple[dict[int, bytes], int]:
    """Group 0002 (always explicit VR little endian) of a file starting with the 128-byte preamble + DICM."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise DicomReadError("not DICOM (no preamble and DICM prefix)")
    meta, pos = {}, 132
    while pos + 8 <= len(buf):
        group, elem = _TAG.unpack_from(buf, pos)
        if group != 0x0002:
            return meta, pos
        vr = buf[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            length, start = struct.unpack_from("<I", buf, pos + 8)[0] if pos + 12 <= len(buf) else 0, pos + 12
        else:
            length, start = _U16.unpack_from(buf, pos + 6)[0], pos + 8
        if start + length > len(buf):
            raise Unsupported("file meta longer than the first read")
        meta[group << 16 | elem] = buf[start : start + length]
        pos = start + length
    raise Unsupported("no data set after the file meta")


def _pixel_offset(fd: int, values: dict[str, Any], syntax: str, header_end: int) -> int | None:
    """Offset of the pixel values when the file ends with one uncompressed 16-bit frame, else ``None``."""
    if syntax not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    if values.get("BitsAllocated") != 16 or values.get("SamplesPerPixel", 1) != 1 or values.get("NumberOfFrames", 1) != 1:
        return None
    nbytes = int(values.get("Rows") or 0) * int(values.get("Columns") or 0) * 2
    header_len = 8 if syntax == IMPLICIT_LE else 12  # tag, (VR, reserved,) 32-bit length
    start = os.fstat(fd).st_size - nbytes
    if nbytes == 0 or start - header_len < header_end:
        return None
    head = os.pread(fd, header_len, start - header_len)
    ok = head[:4] == _PIXEL_DATA and (header_len == 8 or (head[4:6] in (b"OW", b"OB") and head[6:8] == b"\0\0"))
    return start if ok and int.from_bytes(head[-4:], "little") == nbytes else None


def _items(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def header_values(ds: pydicom.Dataset) -> dict[str, Any]:
    """The :data:`HEADER_TAGS` values of a pydicom dataset, converted and cleaned as :func:`read_header` does.

    Raises:
        DicomReadError: a number that is not one (an IS of ``inf``, a DS of ``abc``).
    """
    values = {}
    for keyword, (tag, vr) in HEADER_TAGS.items():
        elem = ds.get(tag)
        if elem is None or elem.value is None or elem.value == "" or elem.value == b"":
            continue
        items = _items(elem.value)
        if vr == "US":
            values[keyword] = int(items[0])
            continue
        if vr in ("DS", "IS"):
            items = [_number(keyword, vr, str(v).strip(" \0")) for v in items]
        else:
            items = [clean_text(str(v), TEXT_LIMIT if vr in _CHARSET_VRS else 1024) for v in items]
            if not items[0]:
                continue
        values[keyword] = tuple(items) if keyword in _MULTI else items[0]
    return values


def _read_with_pydicom(path: str, fd: int) -> SliceHeader:
    """pydicom reads the header from an in-memory copy of at most ``_FALLBACK_BYTES`` (no huge reads)."""
    size = os.fstat(fd).st_size
    buf = io.BytesIO(os.pread(fd, min(size, _FALLBACK_BYTES), 0))
    ds = read_partial(buf, stop_when=lambda tag, vr, length: tag > _LAST_TAG, specific_tags=[Tag(t) for t, _ in HEADER_TAGS.values()])
    values = header_values(ds)
    syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", ""))
    header = SliceHeader(path, values, syntax, str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")), parsed_by="pydicom")
    if "Rows" in values and "Columns" in values:
        header.pixel_offset = _pixel_offset(fd, values, syntax, buf.tell())
    return header


def _walk_values(walker: Walker, pos: int) -> tuple[dict[str, Any], int]:
    """The converted :data:`HEADER_TAGS` values of the data set at ``pos``; the position where the walk stopped."""
    raw, end = walker.walk(pos, _BY_TAG, _LAST_TAG)
    values = {}
    charset = raw.get(HEADER_TAGS["SpecificCharacterSet"][0], (None, b""))[1].decode("latin-1").strip(" \0")
    encodings = None if charset in _DEFAULT_CHARSETS else convert_encodings(charset.split("\\"))
    for tag, (vr, data) in raw.items():
        keyword, expected = _BY_TAG[tag]
        if vr is not None and vr.decode("latin-1") != expected and not (vr == b"UN" or (expected == "US" and vr == b"SS")):
            raise Unsupported(f"unexpected VR {vr!r} for {keyword}")
        value = _convert(keyword, expected, data, encodings)
        if value is not None:
            values[keyword] = value
    return values, end


def _read_header(path: str, fp) -> SliceHeader:
    fd = fp.fileno()
    buf = os.pread(fd, _HEAD_BYTES, 0)
    try:
        meta, pos = _file_meta(buf)
        syntax = meta.get(0x00020010, b"").decode("latin-1").strip(" \0")
        if syntax == _BIG_ENDIAN or not syntax:
            raise Unsupported(f"transfer syntax {syntax or 'missing'}")
        if syntax == _DEFLATED:
            try:
                values, end = _walk_values(Walker(inflate(FileSource(fd), pos), False), 0)
            except Unsupported as err:
                raise DicomReadError(f"deflated data set in a layout not read here ({err})") from None
        else:
            values, end = _walk_values(Walker(FileSource(fd), syntax == IMPLICIT_LE), pos)
    except (Unsupported, UnicodeDecodeError, LookupError):
        return _read_with_pydicom(path, fd)
    header = SliceHeader(path, values, syntax, meta.get(0x00020002, b"").decode("latin-1").strip(" \0"), data_start=pos)
    if "Rows" in values and "Columns" in values:
        header.pixel_offset = _pixel_offset(fd, values, syntax, end)
    return header


def read_header(path: str | os.PathLike) -> SliceHeader:
    """Header values and raw-pixel offset of one DICOM file.

    Raises:
        DicomReadError: the file is not readable DICOM, with a one-line reason. Nothing else, whatever the bytes.
    """
    path = str(path)
    try:
        with open(path, "rb") as fp:
            return _read_header(path, fp)
    except DicomReadError:
        raise
    except OSError as err:
        raise DicomReadError(f"cannot read the file ({err.strerror or type(err).__name__})") from None
    except BaseException as err:  # pydicom's fallback raises many types (and MemoryError/RecursionError on hostile files)
        if isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        text = " ".join(str(err).split())[:120]
        raise DicomReadError(f"not readable DICOM ({type(err).__name__}{': ' + text if text else ''})") from None
