"""Damaged files: read_header keeps its contract (a sane header or DicomReadError) for cut, corrupted and non-DICOM files."""

import io
import warnings

import numpy as np
import pydicom
import pytest

from tests.io._dicom_builders import (  # noqa: F401
    DECOY_UID,
    Dataset,
    ExplicitVRLittleEndian,
    HEADER_TAGS,
    READ_ERRORS,
    SOP_UID,
    Sequence,
    SliceHeader,
    ct_slice,
    expected_values,
    mark,
    read_header,
    reference,
    save,
    typed,
    with_meta_syntax,
)


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


