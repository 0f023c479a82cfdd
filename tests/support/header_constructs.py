"""Byte-level DICOM files for the header differential tests (issue 17): a dataset written as a
list of top-level element encodings, so crafted constructs (group FFFE elements, delimiters with
a length, undefined lengths on non-sequences, duplicates, elements after Pixel Data) can be
spliced in at element boundaries, and the files read back by the scan and by pydicom."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from scp_node.dicom.header_scan import SCAN_BYTES, scan_header
from scp_node.dicom.instance_header import (
    HEADER_TAGS,
    HeaderError,
    header_of_first_bytes,
    patient_digest,
    read_header,
)

ITEM = b"\xfe\xff\x00\xe0"
ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
UNDEFINED = b"\xff\xff\xff\xff"
OTHER_PATIENT = "OTHER-PATIENT"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.99"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Encoded:
    """A DICOM file as its File Meta bytes and its top-level element encodings, in order."""

    meta: bytes
    elements: list[bytes]
    implicit: bool

    def pixel_index(self) -> int:
        """The index of the Pixel Data element."""
        return next(i for i, e in enumerate(self.elements) if e[:4] == b"\xe0\x7f\x10\x00")

    def insert_before_pixels(self, *encodings: bytes) -> None:
        at = self.pixel_index()
        self.elements[at:at] = encodings

    def insert_in_order(self, encoding: bytes) -> None:
        """Insert `encoding` where its tag sorts among the top-level elements."""
        tag = tag_of(encoding)
        at = next((i for i, e in enumerate(self.elements) if tag_of(e) > tag), len(self.elements))
        self.elements.insert(at, encoding)

    def index_of(self, tag: int) -> int:
        """The index of the top-level element `tag`."""
        return next(i for i, e in enumerate(self.elements) if tag_of(e) == tag)

    def tobytes(self) -> bytes:
        return b"\0" * 128 + b"DICM" + self.meta + b"".join(self.elements)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.tobytes())
        return path


def tag_of(encoding: bytes) -> int:
    """The tag of the element `encoding` begins with."""
    group, number = struct.unpack_from("<HH", encoding)
    return int(group << 16 | number)


def encode(ds: Dataset, implicit: bool) -> Encoded:
    """`ds` as File Meta bytes and one encoding per top-level element."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    if "PixelData" in ds and ds["PixelData"].VR not in ("OB", "OW"):
        ds["PixelData"].VR = "OW"  # resolved as dcmwrite does for 16-bit pixels
    return Encoded(fp.getvalue(), [element(e, implicit) for e in ds], implicit)


def element(elem: DataElement, implicit: bool) -> bytes:
    """The encoding of one data element (and of its items, for a sequence)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_data_element(fp, elem)
    return fp.getvalue()


def text(tag: int, vr: str, value: str, implicit: bool) -> bytes:
    """One element of a text VR holding `value` (padded to even length)."""
    return element(DataElement(tag, vr, value), implicit)


def header(tag: int, vr: str, length: int, implicit: bool) -> bytes:
    """The tag and length (and VR) of an element, without its value."""
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, number, length)
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"):
        return struct.pack("<HH2s2xL", group, number, vr.encode(), length)
    return struct.pack("<HH2sH", group, number, vr.encode(), length)


def hidden_patient(implicit: bool) -> bytes:
    """A second Patient ID and Study Instance UID, as plain elements."""
    return text(0x00100020, "LO", OTHER_PATIENT, implicit) + text(
        0x0020000D, "UI", OTHER_STUDY, implicit
    )


def group_fffe_covering(hidden: bytes) -> bytes:
    """Explicit VR: a group FFFE element that is no item or delimiter, whose next four bytes
    read as VR AE with length 0 (pydicom) or as a 4-byte length (an implicit reading) covering
    `hidden` and a private blob filling the rest of that length."""
    covered = int.from_bytes(b"AE\0\0", "little")
    blob = covered - len(hidden) - 12
    assert blob > 0
    return b"\xfe\xff\x01\x00AE\0\0" + hidden + header(0x00291010, "OB", blob, False) + bytes(blob)


def undefined_non_sequence(tag: int, vr: str, hidden: bytes, implicit: bool) -> bytes:
    """A known non-sequence `tag` of undefined length whose value starts as an item of
    undefined length holding a private value with a sequence delimiter inside: pydicom
    byte-searches to that delimiter and reads `hidden` after it as elements; a walk of the
    items reaches the real delimiter. The rest of the private value is covered by a private
    element in `hidden`'s tail, so both go on at the same offset."""
    tail = ITEM_END + SEQUENCE_END  # the real end: where a walk of the items goes on
    inner = SEQUENCE_END + hidden + header(0x00291012, "OB", len(tail), implicit)
    private = header(0x00291011, "OB", len(inner), implicit) + inner
    return header(tag, vr, 0xFFFFFFFF, implicit) + ITEM + UNDEFINED + private + tail


def undefined_item_sequence(tag: int, items: list[bytes], implicit: bool) -> bytes:
    """An undefined-length sequence of undefined-length items holding `items`' bytes."""
    body = b"".join(ITEM + UNDEFINED + item + ITEM_END for item in items)
    return header(tag, "SQ", 0xFFFFFFFF, implicit) + body + SEQUENCE_END


@dataclass(frozen=True)
class Reading:
    """What the scan, pydicom (up to Pixel Data and whole) and read_header make of one file."""

    scanned: dict[str, object] | None  # None: the scan declined
    before_pixels: dict[str, object] | str  # str: the error pydicom raised
    whole: dict[str, object] | str
    header: tuple[str, object, object] | str  # (patient digest, study, SOP) or the HeaderError
    # the same from the file's first bytes, as a C-STORE streams (header_of_first_bytes), when
    # that answers for a file of this size; None otherwise (the handler calls read_header)
    streamed: tuple[str, object, object] | None = None


def _values(read: Callable[[], Dataset]) -> dict[str, object] | str:
    try:
        ds = read()
        return {keyword: ds.get(keyword) for keyword in HEADER_TAGS}
    except Exception as exc:  # noqa: BLE001 - any error of pydicom is an answer here
        return type(exc).__name__


def read_all(path: Path) -> Reading:
    """Read `path` every way the node and its downstream readers do."""
    scanned_ds = scan_header(path, HEADER_TAGS)  # must not raise
    scanned = None if scanned_ds is None else _values(lambda: scanned_ds)
    before = _values(lambda: dcmread(path, stop_before_pixels=True))
    whole = _values(lambda: dcmread(path))
    try:
        h = read_header(path)
        got: tuple[str, object, object] | str = (
            str(h.patient_digest),
            h.study_instance_uid,
            h.sop_instance_uid,
        )
    except HeaderError as exc:
        got = f"HeaderError: {exc}"
    data = path.read_bytes()
    first = header_of_first_bytes(data[:SCAN_BYTES])
    streamed = None
    if first is not None and first.file_size == len(data):
        streamed = (str(first.patient_digest), first.study_instance_uid, first.sop_instance_uid)
    return Reading(scanned, before, whole, got, streamed)  # type: ignore[arg-type]


def assert_one_reading(path: Path, context: str = "") -> Reading:
    """The differential: the scan declines or gives exactly what pydicom gives (up to Pixel
    Data and whole, which must agree then), never a value pydicom cannot read; read_header
    refuses the file or names the patient, study and instance pydicom reads, both ways."""
    r = read_all(path)
    where = f"{path.name} {context}".strip()
    if r.scanned is not None:
        assert isinstance(r.before_pixels, dict), f"{where}: scan read what pydicom cannot"
        assert r.scanned == r.before_pixels == r.whole, where
        types = {k: type(v) for k, v in r.before_pixels.items()}
        assert {k: type(v) for k, v in r.scanned.items()} == types, where
    if r.streamed is not None:
        assert r.streamed == r.header, f"{where}: the streamed header differs from read_header"
    if isinstance(r.header, tuple):
        for reading in (r.before_pixels, r.whole):
            assert isinstance(reading, dict), f"{where}: indexed what pydicom cannot read"
            assert r.header == (
                patient_digest("id", reading["PatientID"]),
                reading["StudyInstanceUID"],
                reading["SOPInstanceUID"],
            ), where
    return r


# --- structure-aware mutations ---------------------------------------------------------------

_VR_LIKE = [b"AE\0\0", b"LO\0\0", b"OB\0\0", b"UN\0\0", b"SQ\0\0", b"CS\x04\0", b"UL\x10\0"]
# known non-sequence tags (explicit VR: with a VR of 4-byte length)
_KNOWN_NON_SQ = [(0x00081030, "UT"), (0x00204000, "UT"), (0x00420011, "OB"), (0x00080070, "UN")]


def _four_bytes(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return bytes(4)
    if choice == 1:
        return rng.choice(_VR_LIKE)
    if choice == 2:
        return struct.pack("<L", rng.choice([2, 8, 16, 24, 0x4541, 0xFFFFFFFF]))
    return bytes(rng.randrange(256) for _ in range(4))


def mutate(encoded: Encoded, rng: random.Random) -> str:
    """Apply one structure-aware change to `encoded` (in place); returns what it did."""
    implicit = encoded.implicit
    elements = encoded.elements
    pixel = encoded.pixel_index()
    at = rng.randrange(pixel + 1)  # an element boundary before (or at) Pixel Data
    kind = rng.randrange(15)
    if kind >= 11:  # benign: a new value for a plain element (the scan should still read it)
        return _new_value(encoded, rng)
    if kind == 0:  # a group FFFE element at the top level
        number = rng.choice([0x0001, 0xE000, 0xE00D, 0xE0DD, rng.randrange(0x10000)])
        elements.insert(at, struct.pack("<HH", 0xFFFE, number) + _four_bytes(rng))
        return f"fffe {number:04x} at {at}"
    if kind == 1:  # the explicit-VR construct of the issue, before Pixel Data
        if implicit:
            elements.insert(at, hidden_patient(implicit))
            return f"duplicates at {at}"
        encoded.insert_before_pixels(group_fffe_covering(hidden_patient(False)))
        return "fffe covering a second patient"
    if kind == 2:  # a known non-sequence of undefined length with a hidden delimiter
        tag, vr = rng.choice(_KNOWN_NON_SQ)
        elements.insert(at, undefined_non_sequence(tag, vr, hidden_patient(implicit), implicit))
        return f"undefined {tag:08x} at {at}"
    if kind == 3:  # a duplicate of an indexed element, somewhere
        elements.insert(at, hidden_patient(implicit))
        return f"duplicates at {at}"
    if kind == 4:  # elements after Pixel Data
        elements.append(hidden_patient(implicit))
        return "after pixel data"
    sequences = [i for i, e in enumerate(elements) if ITEM in e and i < pixel]
    if kind == 5 and sequences:  # an item delimiter with a length (or VR-like bytes)
        i = rng.choice(sequences)
        e = elements[i]
        where = e.find(ITEM_END)
        if where >= 0:
            elements[i] = e[: where + 4] + _four_bytes(rng) + e[where + 8 :]
            return f"item delimiter length in {i}"
    if kind == 6 and sequences:  # a sequence delimiter with a length
        i = rng.choice(sequences)
        e = elements[i]
        where = e.rfind(SEQUENCE_END)
        if where >= 0:
            elements[i] = e[: where + 4] + _four_bytes(rng) + e[where + 8 :]
            return f"sequence delimiter length in {i}"
    if kind == 7 and sequences:  # an item's length changed
        i = rng.choice(sequences)
        e = elements[i]
        where = e.find(ITEM)
        length = struct.unpack_from("<L", e, where + 4)[0]
        new = rng.choice([0, 2, 4, 8, 0xFFFFFFFF]) if length == 0xFFFFFFFF else length
        new = new if new != length else rng.choice([length - 2, length + 2, length + 8, 0])
        elements[i] = e[: where + 4] + struct.pack("<L", new & 0xFFFFFFFF) + e[where + 8 :]
        return f"item length {length} -> {new} in {i}"
    if kind == 8:  # an element's length field changed
        i = rng.randrange(pixel)
        e = elements[i]
        long_form = implicit or e[4:6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC")
        at_length, size = (4, 4) if implicit else ((8, 4) if long_form else (6, 2))
        value = rng.choice([0, 2, 0xFFFF, 0xFFFFFFFF, len(e), len(e) + 8])
        value &= (1 << (8 * size)) - 1
        elements[i] = e[:at_length] + value.to_bytes(size, "little") + e[at_length + size :]
        return f"length of {i} -> {value}"
    if kind == 9:  # a Command Set element before the dataset
        elements.insert(0, header(0x00000002, "UI", 8, True) + b"1.2.3.4\0")
        return "command set"
    # two elements swapped (out of order)
    i, j = rng.randrange(pixel), rng.randrange(pixel)
    elements[i], elements[j] = elements[j], elements[i]
    return f"swap {i} {j}"


_LONG = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV")


def _new_value(encoded: Encoded, rng: random.Random) -> str:
    """Give one plain top-level element before Pixel Data a new value of another length."""
    plain = [
        i
        for i, e in enumerate(encoded.elements[: encoded.pixel_index()])
        if ITEM not in e and e[:2] != b"\xfe\xff" and (encoded.implicit or e[4:6] not in _LONG)
    ]
    i = rng.choice(plain)
    e = encoded.elements[i]
    alphabet = b"0123456789.ABCXYZ-^ \\\x00\xe9\xc3\xa9"
    value = bytes(rng.choice(alphabet) for _ in range(2 * rng.randrange(12)))
    if encoded.implicit:
        encoded.elements[i] = e[:4] + struct.pack("<L", len(value)) + value
    else:
        encoded.elements[i] = e[:6] + struct.pack("<H", len(value)) + value
    return f"value of {i} -> {value!r}"


def indexed_ct(**elements: object) -> Dataset:
    """A small CT dataset with every element the node indexes, then `elements` (keyword=value);
    its Study Instance UID is 1.2.826.0.1.3680043.8.498.1."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.2"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.AccessionNumber = "ACC 7"
    ds.PatientID = "P-123"
    ds.PatientBirthDate = "19500101"
    ds.NumberOfSlices = 42
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(32)
    return ds


def with_nested_sequence(ds: Dataset, undefined: bool = True) -> Dataset:
    """`ds` with a Referenced Image Sequence (0008,1140: before Patient ID) of two items, the
    second holding a sequence of its own; sequences and items of undefined length or not."""
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
    first, second = Dataset(), Dataset()
    first.ReferencedSOPClassUID, first.ReferencedSOPInstanceUID = CT, "1.2.3.4"
    second.ReferencedSOPClassUID = CT
    second.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([first, second])
    for element in (ds["ReferencedImageSequence"], second["PurposeOfReferenceCodeSequence"]):
        element.is_undefined_length = undefined
    for item in (first, second, inner):
        item.is_undefined_length_sequence_item = undefined
    return ds
