"""scp_node.dicom.header_scan agrees with pydicom's dcmread on every value it returns, or declines.

The scan replaces dcmread on the C-STORE path only because it is faster; it must never give a
different value. Each case compares every indexed element (type and value) with dcmread's,
on real CT and PET, on phantoms, on encodings made to be awkward (implicit VR, nested
undefined-length sequences, character sets, multi-values, empty values) and on mutated bytes.
"""

from __future__ import annotations

import random
from pathlib import Path

import pydicom
import pytest
from header_constructs import indexed_ct, with_nested_sequence
from node_process import PhantomFiles
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from scp_node.dicom.header_scan import SCAN_BYTES, scan_bytes, scan_header
from scp_node.dicom.instance_header import (
    HEADER_TAGS,
    _header_of,
    header_of_first_bytes,
    plain_values,
    read_header,
)


def _by_pydicom(path: Path) -> dict[str, object]:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    return {keyword: ds.get(keyword) for keyword in HEADER_TAGS}


def _by_scan(path: Path) -> dict[str, object] | None:
    ds = scan_header(path, HEADER_TAGS)
    return None if ds is None else {keyword: ds.get(keyword) for keyword in HEADER_TAGS}


def _assert_agrees(path: Path) -> bool:
    """The scan's values equal dcmread's (same types), and so does the header made from its
    first bytes (by plain_values where they are plain); False when the scan declined."""
    scanned = _by_scan(path)
    if scanned is None:
        return False
    expected = _by_pydicom(path)
    assert scanned == expected, path
    assert {k: type(v) for k, v in scanned.items()} == {k: type(v) for k, v in expected.items()}
    header = header_of_first_bytes(path.read_bytes()[:SCAN_BYTES])
    if header is not None:
        by_pydicom = _header_of(dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS))
        assert header == by_pydicom, path
    return True


def _is_plain(path: Path) -> bool:
    """Whether the header of `path` is read by plain_values, without pydicom's decoding."""
    scanned = scan_bytes(path.read_bytes()[:SCAN_BYTES], HEADER_TAGS, whole_file=False)
    return scanned is not None and plain_values(scanned.elements) is not None


def _save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_ct_and_pet_are_scanned_and_agree(shared_data: Path) -> None:
    files = sorted(shared_data.rglob("*.dcm"))
    assert files, f"no .dcm under {shared_data}"
    declined = [path for path in files if not _assert_agrees(path)]
    assert declined == []  # conformant scanner output never needs the slow path
    assert [path for path in files if not _is_plain(path)] == []  # nor pydicom's decoding


def test_phantom_files_are_scanned_and_agree(phantom_pet_ct: PhantomFiles) -> None:
    assert all(_assert_agrees(path) for path in phantom_pet_ct.files)


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_nested_sequences_before_the_indexed_elements(
    tmp_path: Path, syntax: str, undefined: bool
) -> None:
    path = _save(with_nested_sequence(indexed_ct(), undefined), tmp_path / "ct.dcm", syntax)
    assert (b"\xfe\xff\xdd\xe0" in path.read_bytes()) == undefined  # sequence delimiter
    assert _assert_agrees(path)


@pytest.mark.parametrize(
    ("charset", "patient_id"),
    [("ISO_IR 100", "Müller-7"), ("ISO_IR 192", "山田-7"), ("ISO_IR 144", "Иванов")],
)
def test_values_are_decoded_in_the_files_character_set(
    tmp_path: Path, charset: str, patient_id: str
) -> None:
    path = _save(
        indexed_ct(SpecificCharacterSet=charset, PatientID=patient_id), tmp_path / "ct.dcm"
    )
    assert _assert_agrees(path)
    assert read_header(path).patient_id == patient_id
    assert not _is_plain(path)  # not ASCII, or ISO_IR 144: pydicom decodes it


@pytest.mark.parametrize(
    "elements",
    [
        {"PatientID": "A\\B"},  # a multi-value where one is expected
        {"Modality": ""},
        {"AccessionNumber": ""},
        {"StudyInstanceUID": "1.2.3.4 "},
        {"PatientBirthDate": None},
    ],
    ids=["multi-value", "empty-modality", "empty-accession", "padded-uid", "no-birth-date"],
)
def test_odd_values_agree(tmp_path: Path, elements: dict[str, object]) -> None:
    ds = indexed_ct(**{k: v for k, v in elements.items() if v is not None})
    for keyword in [k for k, v in elements.items() if v is None]:
        del ds[keyword]
    assert _assert_agrees(_save(ds, tmp_path / "ct.dcm"))


def test_plain_headers_are_read_without_pydicom_and_agree(tmp_path: Path) -> None:
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        path = _save(indexed_ct(), tmp_path / "ct.dcm", syntax)
        assert _is_plain(path) and _assert_agrees(path)
    path = _save(indexed_ct(SpecificCharacterSet="ISO_IR 192"), tmp_path / "utf8.dcm")
    assert _is_plain(path) and _assert_agrees(path)


TRICKY_VALUES = [
    b"",
    b"1.2.3",
    b"1.2.3\x00",
    b" 1.2.3 ",
    b"1.2\x003",
    b"  ",
    b"\x00",
    b"A\\B",
    b"\x1b$B",
    b"caf\xe9",
    b"tab\there",
    b"P-123 ",
    b"\x00\x00 x",
]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("charset", [None, b"ISO_IR 100", b"ISO_IR 192 ", b"ISO 2022 IR 87"])
def test_plain_values_equal_pydicoms_or_decline(implicit: bool, charset: bytes | None) -> None:
    """Every indexed element holding each tricky value (and Number of Slices each length):
    plain_values declines, or gives what pydicom's Dataset.get gives for the same raw
    elements."""
    taken = 0
    for keyword in HEADER_TAGS:
        tag = tag_for_keyword(keyword)
        vr = None if implicit else dictionary_VR(keyword)
        values = (
            [b"", b"\x2a\x00", b"\x01", b"\x01\x00\x02\x00"]
            if keyword == "NumberOfSlices"
            else TRICKY_VALUES
        )
        for value in values:
            elements = {tag: RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)}
            if charset is not None:
                elements[0x00080005] = RawDataElement(
                    BaseTag(0x00080005),
                    None if implicit else "CS",
                    len(charset),
                    charset,
                    0,
                    implicit,
                    True,
                )
            plain = plain_values(elements)
            if plain is None:
                continue
            ds = Dataset(dict(elements))
            ds.set_original_encoding(implicit, True)
            assert plain.get(keyword) == ds.get(keyword), (keyword, value)
            taken += 1
    assert taken > 0 if charset != b"ISO 2022 IR 87" else taken == 0


def test_number_of_slices_absent_and_empty_agree(tmp_path: Path) -> None:
    ds = indexed_ct()
    del ds.NumberOfSlices
    assert _assert_agrees(_save(ds, tmp_path / "absent.dcm"))
    ds = indexed_ct()
    ds["NumberOfSlices"].value = None
    assert _assert_agrees(_save(ds, tmp_path / "empty.dcm"))


def test_encapsulated_pixel_data_is_left_to_pydicom(tmp_path: Path) -> None:
    """A compressed transfer syntax: the header is explicit VR little endian, but where the
    undefined-length Pixel Data ends (and what follows it) is pydicom's own search, so the
    scan declines (it used to read these; issue 17) and pydicom gives the same values."""
    ds = indexed_ct()
    ds.PixelData = pydicom.encaps.encapsulate([bytes(10)])
    ds["PixelData"].VR = "OB"
    path = _save(ds, tmp_path / "j2k.dcm", JPEG2000Lossless)
    assert scan_header(path, HEADER_TAGS) is None
    assert read_header(path).patient_id == "P-123"


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_big_endian_and_deflated_are_left_to_pydicom(tmp_path: Path, syntax: str) -> None:
    path = _save(indexed_ct(), tmp_path / "ct.dcm", syntax)
    assert scan_header(path, HEADER_TAGS) is None
    assert read_header(path).modality == "CT"  # read all the same, by pydicom


def test_a_header_longer_than_the_scan_is_left_to_pydicom(tmp_path: Path) -> None:
    ds = indexed_ct()
    ds.add_new(0x00091010, "OB", bytes(SCAN_BYTES))  # a private blob before Patient ID
    ds.add_new(0x00090010, "LO", "LUNGNODE TEST")
    path = _save(ds, tmp_path / "ct.dcm")
    assert scan_header(path, HEADER_TAGS) is None
    assert read_header(path).patient_id == "P-123"


def test_implicit_data_under_an_explicit_transfer_syntax_is_left_to_pydicom(
    tmp_path: Path,
) -> None:
    """Common non-conformance: dcmread notices the VR is missing and reads it implicit."""
    path = _save(indexed_ct(), tmp_path / "implicit.dcm", ImplicitVRLittleEndian)
    raw = bytearray(path.read_bytes())
    syntax = ImplicitVRLittleEndian.encode() + b"\0"
    at = raw.index(syntax)
    raw[at : at + len(syntax)] = ExplicitVRLittleEndian.encode()[: len(syntax)].ljust(
        len(syntax), b"\0"
    )
    path.write_bytes(bytes(raw))
    assert scan_header(path, HEADER_TAGS) is None
    assert read_header(path).modality == "CT"


def test_elements_out_of_order_are_left_to_pydicom(tmp_path: Path) -> None:
    path = _save(indexed_ct(), tmp_path / "ct.dcm")
    raw = path.read_bytes()
    modality = raw.index(b"\x08\x00\x60\x00CS")  # Modality becomes a tag after the next one
    raw = raw[:modality] + b"\x10\x00\x40\x00CS" + raw[modality + 6 :]  # Patient Sex
    path.write_bytes(raw)
    assert scan_header(path, HEADER_TAGS) is None


def test_not_dicom_is_left_to_pydicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    assert scan_header(path, HEADER_TAGS) is None


def test_mutated_headers_never_disagree(tmp_path: Path) -> None:
    """Random byte changes in the header: the scan declines, or gives what dcmread gives
    wherever dcmread reads the file (values, or the same error decoding one); the scan itself
    never raises."""
    ds = with_nested_sequence(indexed_ct(SpecificCharacterSet="ISO_IR 100"))
    original = _save(ds, tmp_path / "ct.dcm", ExplicitVRLittleEndian).read_bytes()
    header_end = original.index(b"\xe0\x7f\x10\x00")
    rng = random.Random(7)
    agreed = declined = plain = 0
    for i in range(400):
        raw = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(132, header_end)] = rng.randrange(256)
        path = tmp_path / f"m{i}.dcm"
        path.write_bytes(bytes(raw))
        scanned = scan_header(path, HEADER_TAGS)  # must not raise
        if scanned is None:
            declined += 1
            continue
        try:
            expected: dict[str, object] | str = _by_pydicom(path)
        except Exception:
            continue  # the file is unreadable anyway
        try:
            got: dict[str, object] | str = {k: scanned.get(k) for k in HEADER_TAGS}
        except Exception as exc:  # decoding a value, in pydicom: it fails the same way there
            got = type(exc).__name__
        assert got == expected, f"mutation {i}"
        header = header_of_first_bytes(bytes(raw[:SCAN_BYTES]))
        if header is not None:
            pydicom_header = _header_of(
                dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            )
            assert header == pydicom_header, f"mutation {i}"
            plain += _is_plain(path)
        agreed += 1
    assert agreed > 50 and declined > 50 and plain > 50, (agreed, declined, plain)
