"""One parser decides what a patient is (issue 17, item 1): the header scan and pydicom never
read different values from the same bytes.

For each construct the issue names (a group FFFE element outside a sequence, a known
non-sequence of undefined length with a delimiter hidden in a private value, an item delimiter
followed by VR-like bytes, duplicate elements, elements after Pixel Data, ...) the scan declines
or agrees with pydicom read up to Pixel Data and read whole, and read_header (what the node
indexes) refuses the file or names what pydicom reads; then the same over every real file of
../shared/data and a seeded structure-aware mutation run.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from header_constructs import (
    ITEM,
    ITEM_END,
    OTHER_PATIENT,
    OTHER_STUDY,
    SEQUENCE_END,
    UNDEFINED,
    Encoded,
    assert_one_reading,
    encode,
    group_fffe_covering,
    header,
    hidden_patient,
    indexed_ct,
    mutate,
    text,
    undefined_item_sequence,
    undefined_non_sequence,
    with_nested_sequence,
)
from pydicom import dcmread

from scp_node.dicom.header_scan import scan_header
from scp_node.dicom.instance_header import HEADER_TAGS, HeaderError, patient_digest, read_header

STUDY = "1.2.826.0.1.3680043.8.498.1"  # indexed_ct's Study Instance UID


def _base(implicit: bool) -> Encoded:
    return encode(with_nested_sequence(indexed_ct(SpecificCharacterSet="ISO_IR 100")), implicit)


def _scan_declined(path: Path) -> bool:
    return scan_header(path, HEADER_TAGS) is None


def test_group_fffe_element_outside_a_sequence_is_declined(tmp_path: Path) -> None:
    """Explicit VR: pydicom reads the FFFE element with a VR and length 0 and then the second
    Patient ID and Study UID inside the bytes an implicit reading would skip."""
    encoded = _base(implicit=False)
    encoded.insert_before_pixels(group_fffe_covering(hidden_patient(False)))
    path = encoded.write(tmp_path / "fffe.dcm")
    assert dcmread(path, stop_before_pixels=True).PatientID == OTHER_PATIENT  # the construct bites
    assert _scan_declined(path)
    r = assert_one_reading(path)
    header_read = read_header(path)
    assert header_read.patient_digest == patient_digest("id", OTHER_PATIENT)
    assert header_read.study_instance_uid == OTHER_STUDY
    assert r.scanned is None


def test_known_non_sequence_of_undefined_length_is_declined(tmp_path: Path) -> None:
    """Implicit VR: pydicom byte-searches the value of Image Comments (LT) for a sequence
    delimiter (one hidden in a private value here) where a walk of its items would go on at
    the real one."""
    encoded = _base(implicit=True)
    construct = undefined_non_sequence(0x00204000, "LT", hidden_patient(True), True)
    encoded.insert_in_order(construct)
    path = encoded.write(tmp_path / "undefined.dcm")
    assert dcmread(path, stop_before_pixels=True).PatientID == OTHER_PATIENT
    assert _scan_declined(path)
    assert_one_reading(path)


def test_item_delimiter_with_vr_like_bytes_is_declined(tmp_path: Path) -> None:
    """Inside an explicit-VR item, an item delimiter followed by "OB": pydicom reads a VR and
    a 4-byte length after it and loses its place; the scan must not answer Success for it."""
    encoded = _base(implicit=False)
    item = text(0x00080100, "SH", "T-D3000", False)
    sequence = undefined_item_sequence(0x00081140, [item], False)
    sequence = sequence.replace(ITEM_END, b"\xfe\xff\x0d\xe0OB\0\0", 1)
    encoded.elements[encoded.index_of(0x00081140)] = sequence
    path = encoded.write(tmp_path / "delimiter.dcm")
    assert _scan_declined(path)
    assert_one_reading(path)


@pytest.mark.parametrize("length", [b"\x04\0\0\0", b"CS\0\0"], ids=["length-4", "vr-like"])
def test_sequence_delimiter_with_a_length_is_declined(tmp_path: Path, length: bytes) -> None:
    encoded = _base(implicit=False)
    item = text(0x00080100, "SH", "T-D3000", False)
    sequence = undefined_item_sequence(0x00081140, [item], False)
    sequence = sequence[:-4] + length
    encoded.elements[encoded.index_of(0x00081140)] = sequence
    assert _scan_declined(encoded.write(tmp_path / "sequence-end.dcm"))


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_duplicate_elements_are_declined(tmp_path: Path, implicit: bool) -> None:
    """At the top level (pydicom keeps the last) and inside an item."""
    encoded = _base(implicit)
    encoded.insert_before_pixels(hidden_patient(implicit))
    path = encoded.write(tmp_path / "top.dcm")
    assert dcmread(path).PatientID == OTHER_PATIENT
    assert _scan_declined(path)
    assert_one_reading(path)
    encoded = _base(implicit)
    twice = text(0x00080100, "SH", "A", implicit) + text(0x00080100, "SH", "B", implicit)
    encoded.elements.insert(1, undefined_item_sequence(0x00080006, [twice], implicit))
    assert _scan_declined(encoded.write(tmp_path / "item.dcm"))


def test_defined_length_item_overrun_is_declined(tmp_path: Path) -> None:
    """An item of an undefined-length sequence whose length ends inside its element: pydicom
    parses the item's elements (reading the element whole, a second Patient ID inside it
    included) where a skip by the item's length lands on a delimiter hidden in the value and
    reads the second Patient ID as a top-level element."""
    encoded = _base(implicit=False)
    del encoded.elements[encoded.index_of(0x00100020)]  # pydicom reads no Patient ID then
    pad = header(0x00100021, "LO", len(SEQUENCE_END), False)  # covers the real delimiter
    value = SEQUENCE_END + text(0x00100020, "LO", OTHER_PATIENT, False) + pad
    private = header(0x00091010, "OB", len(value), False)
    item = ITEM + len(private).to_bytes(4, "little")
    sequence = header(0x00081140, "SQ", 0xFFFFFFFF, False) + item + private + value
    encoded.elements[encoded.index_of(0x00081140)] = sequence + SEQUENCE_END
    path = encoded.write(tmp_path / "overrun.dcm")
    assert dcmread(path, stop_before_pixels=True).get("PatientID") is None
    assert _scan_declined(path)
    assert_one_reading(path)


def test_elements_after_pixel_data_are_refused(tmp_path: Path) -> None:
    """A second Patient ID after Pixel Data: the analysis reads headers up to Pixel Data, the
    pixels are read whole; the two disagree, so the node refuses the file."""
    encoded = _base(implicit=False)
    encoded.elements.append(hidden_patient(False))
    path = encoded.write(tmp_path / "after.dcm")
    assert dcmread(path).PatientID == OTHER_PATIENT
    assert dcmread(path, stop_before_pixels=True).PatientID == "P-123"
    assert _scan_declined(path)
    with pytest.raises(HeaderError, match="after Pixel Data"):
        read_header(path)
    assert_one_reading(path)


def test_undefined_length_sequences_still_scanned(tmp_path: Path) -> None:
    """The walk still reads plain nested undefined-length sequences (no slow path for them)."""
    for implicit in (True, False):
        items = [text(0x00080100, "SH", "T-D3000", implicit)]
        encoded = _base(implicit)
        encoded.elements.insert(1, undefined_item_sequence(0x00080006, items, implicit))
        path = encoded.write(tmp_path / f"plain-{implicit}.dcm")
        assert assert_one_reading(path).scanned is not None
    assert ITEM + UNDEFINED in path.read_bytes()


def test_every_real_file_reads_one_way(shared_data: Path) -> None:
    files = sorted(p for p in shared_data.rglob("*") if p.is_file() and p.suffix == ".dcm")
    assert files, f"no DICOM file under {shared_data}"
    scanned = sum(assert_one_reading(p).scanned is not None for p in files)
    assert scanned == len(files)  # conformant scanner output never needs the slow path


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_structure_aware_mutations_read_one_way(tmp_path: Path, implicit: bool) -> None:
    """Seeded: every mutation splices a construct at element boundaries; none makes the scan
    and pydicom disagree, and read_header never indexes what pydicom does not read."""
    rng = random.Random(17 if implicit else 71)
    base = _base(implicit)
    declined = agreed = 0
    for i in range(200):
        encoded = Encoded(base.meta, list(base.elements), implicit)
        done = [mutate(encoded, rng) for _ in range(rng.randint(1, 3))]
        path = encoded.write(tmp_path / f"m{i}.dcm")
        reading = assert_one_reading(path, f"mutation {i}: {done}")
        declined += reading.scanned is None
        agreed += reading.scanned is not None
    assert declined > 60 and agreed > 20, (declined, agreed)
