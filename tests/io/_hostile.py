"""Writers of hostile DICOM files and series, the cases of issue 11 (tests only; never patient data).

Single files start from one valid slice written by :mod:`ctmil.synthetic.dicom_writer`, then their bytes are
edited: a marker element (``MARK``, a 16-byte LO at a private tag before group 0010) is swapped for hand-made
bytes. Series are written by ``write_dicom_series`` and edited with pydicom, which accepts NaN in DS values.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from ctmil.synthetic.dicom_writer import ct_series_datasets, save_dataset, write_dicom_series
from tests.conftest import simple_chest

MARK_TAG = 0x00091010  # private, lies between the wanted tags of group 0008 and those of 0020
MARKER = b"@@HOSTILEMARK@@@"  # 16 bytes
UNDEFINED, ITEM, ITEM_END, SEQ_END = 0xFFFFFFFF, 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def _tag(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def base_dataset(rows: int = 32, cols: int = 32, seed: int = 12345):
    vol = simple_chest(n_slices=1, size=max(rows, cols))[:, :rows, :cols]
    ds = ct_series_datasets(vol, (2.0, 1.0, 1.0), rng=seed, patient_name="DOE^JANE", patient_id="SECRET42")[0]
    ds.add_new(0x00090010, "LO", "CTMIL HOSTILE")  # private creator of the marker block
    ds.add_new(MARK_TAG, "LO", MARKER.decode())
    return ds


def write_base(path: Path, syntax: str = "explicit", **kw) -> bytes:
    save_dataset(base_dataset(**kw), path, syntax)
    return path.read_bytes()


def splice(path: Path, raw: bytes, syntax: str = "explicit") -> Path:
    """Write the base slice with the marker element replaced by ``raw`` (encoded element bytes)."""
    data = write_base(path, syntax)
    at = data.index(MARKER) - 8
    assert data[at : at + 4] == _tag(MARK_TAG)
    path.write_bytes(data[:at] + raw + data[at + 8 + len(MARKER) :])
    return path


def element(tag: int, vr: str, value: bytes, explicit: bool = True, length: int | None = None) -> bytes:
    length = len(value) if length is None else length
    if not explicit or tag >> 16 == 0xFFFE:
        return _tag(tag) + struct.pack("<I", length) + value
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return _tag(tag) + vr.encode() + b"\0\0" + struct.pack("<I", length) + value
    return _tag(tag) + vr.encode() + struct.pack("<H", length) + value


def nested_sequences(depth: int, explicit: bool = True) -> bytes:
    """``depth`` undefined-length sequences, each in an undefined-length item of the one above."""
    opening = element(MARK_TAG, "SQ", b"", explicit, UNDEFINED) + element(ITEM, "", b"", explicit, UNDEFINED)
    closing = element(ITEM_END, "", b"", explicit) + element(SEQ_END, "", b"", explicit)
    return opening * depth + closing * depth


def write_is_value(path: Path, text: bytes, keyword: str = "SeriesNumber") -> Path:
    """A slice whose IS value (SeriesNumber or InstanceNumber) is ``text`` (``inf``, ``1e999``, ``nan``)."""
    tag = {"SeriesNumber": 0x00200011, "InstanceNumber": 0x00200013}[keyword]
    ds = base_dataset()
    ds[tag].value = 77777777  # 8 digits, a unique byte pattern to replace
    save_dataset(ds, path)
    data = path.read_bytes()
    old = _tag(tag) + b"IS\x08\x0077777777"
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, _tag(tag) + b"IS\x08\x00" + text.ljust(8)[:8]))
    return path


def write_huge_length(path: Path, syntax: str = "explicit", length: int = 0xFFFFFFFE) -> Path:
    """An element before the image tags declaring ``length`` bytes (about 4 GiB), the file being small."""
    return splice(path, element(MARK_TAG, "OB", b"", syntax == "explicit", length), syntax)


def write_deflated_garbage(path: Path, seed: int = 0) -> Path:
    """The deflated transfer syntax in the file meta, then random bytes."""
    ds = base_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    path.write_bytes(data[:meta_end] + np.random.default_rng(seed).bytes(2048))
    return path


def write_deflate_bomb(path: Path, megabytes: int = 24) -> Path:
    """A deflated slice holding, before its image tags, a private OB of ``megabytes`` zeros (a ~1000:1 ratio)."""
    ds = base_dataset()
    ds.add_new(0x00091011, "OB", bytes(megabytes << 20))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def write_huge_rle(path: Path, size: int = 30000) -> Path:
    """An RLE slice whose header claims ``size``×``size`` pixels (the compressed data is for 32×32)."""
    ds = base_dataset()
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.Rows = ds.Columns = size
    ds.save_as(path, enforce_file_format=True)
    return path


def write_swallowing_description(path: Path) -> Path:
    """A SeriesDescription whose declared length runs on past the PatientName stored after it."""
    data = write_base(path)
    at = data.index(_tag(0x0008103E) + b"LO")
    end = data.index(b"DOE^JANE") + 8
    length = end - (at + 8) + (end - at) % 2
    path.write_bytes(data[: at + 6] + struct.pack("<H", length) + data[at + 8 :])
    return path


HOSTILE_FILES = {
    "is_inf": lambda p: write_is_value(p, b"inf"),
    "is_1e999": lambda p: write_is_value(p, b"1e999"),
    "is_nan_instance": lambda p: write_is_value(p, b"nan", "InstanceNumber"),
    "nested_300": lambda p: splice(p, nested_sequences(300)),
    "nested_300_implicit": lambda p: splice(p, nested_sequences(300, False), "implicit"),
    "deflated_garbage": write_deflated_garbage,
    "huge_length_explicit": write_huge_length,
    "huge_length_implicit": lambda p: write_huge_length(p, "implicit"),
    "huge_rle": write_huge_rle,
    "deflate_bomb": write_deflate_bomb,
    "swallowing_description": write_swallowing_description,
}


def write_series(folder: Path, n: int = 12, seed: int = 0, **kw) -> list[Path]:
    """A small valid axial chest series (lungs found by the default chain), file ``k`` holding slice ``k``."""
    return write_dicom_series(simple_chest(n_slices=n), (5.0, 1.5, 1.5), folder, rng=seed, shuffle_file_names=False, **kw)


def edit(paths, indices, **values) -> None:
    """Set header values (e.g. ``ImagePositionPatient=["nan", 0, 0]``) on the files at ``indices``."""
    for i in indices:
        ds = pydicom.dcmread(paths[i])
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(paths[i])
