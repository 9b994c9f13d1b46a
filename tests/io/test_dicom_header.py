"""The fast header walker must read exactly what pydicom reads: plain files, sequences, private and UN elements, value formats (builders and oracle: tests/io/_dicom_builders.py)."""

import struct

import pydicom
import pytest

from tests.io._dicom_builders import (  # noqa: F401
    CTImageStorage,
    DECOY_UID,
    Dataset,
    HEADER_TAGS,
    SYNTAX,
    Sequence,
    check,
    ct_slice,
    decoy_elements,
    el,
    expected_values,
    item,
    mark,
    read_header,
    save,
    save_spliced,
    seq,
    typed,
)


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


