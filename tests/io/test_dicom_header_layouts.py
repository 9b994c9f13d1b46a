"""Header walker layouts: headers larger than the first read, pydicom fallbacks, files without raw pixels, DICOMDIR and privacy."""

import io
import struct
import warnings
import zlib

import numpy as np
import pydicom
import pytest

from tests.io._dicom_builders import (  # noqa: F401
    CTImageStorage,
    DECOY_UID,
    Dataset,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    FileMetaDataset,
    FileSet,
    JPEG2000Lossless,
    PATIENT_ID,
    PATIENT_NAME,
    RLELossless,
    SERIES_UID,
    SOP_UID,
    Sequence,
    check,
    ct_slice,
    expected_values,
    header_values,
    mark,
    read_header,
    reference,
    save,
    typed,
    with_meta_syntax,
)


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
