"""The few header elements the node indexes for a received instance, read without Pixel Data.

Read by `header_scan` where the file is plain (most are), by pydicom otherwise; both give the
same values (tests/integration/test_header_scan.py). From a streamed C-STORE's first bytes
(`header_of_first_bytes`) the scan's raw values are decoded by `plain_values` where they are
plain ASCII text (most are), which gives what pydicom's decoding gives at a third of its cost,
and by pydicom otherwise (the same tests, and tests/integration/test_header_differential.py).
Where the scan declines, pydicom reads the file twice, up to Pixel Data (as the analysis
reads headers) and whole (as the pixels are read): a file where the two differ (an indexed
element repeated after Pixel Data) is refused, so that every reader downstream sees the one
patient and study the index holds. Shared by the C-STORE handler (on the streamed file)
and the start-up re-indexing of store files (index_recovery), so both derive exactly the same
index row from the same file.

Values are checked against their VR before they are indexed or logged: UIDs by
`storage.uids.require_uid` (the instance is refused otherwise), Modality as a Code String
(`code_string`: up to 16 of A-Z 0-9 space underscore). An invalid Modality does not refuse the
instance (its file is stored as received; a series with another Modality than CT or PT is never
analysed): it is indexed and logged in an escaped, bounded form (at most INVALID_CODE_CHARS
characters), which can never pass for a valid code.

Patient ID and Patient's Birth Date are read only to keep one patient per study: they leave
this module as SHA-256 digests (`patient_digest`), which the index compares and stores; the
values themselves are never indexed, logged or audited.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.errors import InvalidDicomError

from scp_node.dicom.header_scan import SPECIFIC_CHARACTER_SET, scan_bytes, scan_header
from scp_node.logs import escape_text
from storage.records import InstanceRecord
from storage.uids import require_uid

# The only elements read; everything else, Pixel Data above all, stays on disk unread.
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "NumberOfSlices",  # (0054,0081): expected count of a PET series
    "AccessionNumber",  # what the PACS shows: for finding the study on the console
    "StudyDate",
    "PatientID",  # for the console's search; and one patient per study (compared as digests)
    "PatientBirthDate",
]


# Character sets in which every byte of _PLAIN_TEXT_BYTES decodes as in ASCII (pydicom's
# decoding of a plain value is then the bytes' ASCII text).
PLAIN_CHARACTER_SETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
# printable ASCII but the backslash (pydicom's value separator), and NUL (padding)
_PLAIN_TEXT_BYTES = bytes([0, *(b for b in range(0x20, 0x7F) if b != 0x5C)])


def _tag_and_vr(keyword: str) -> tuple[int, str]:
    """The tag and dictionary VR of a keyword of pydicom's dictionary."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword!r} is not in pydicom's data dictionary")
    return tag, dictionary_VR(tag)


_PLAIN_ELEMENTS = {keyword: _tag_and_vr(keyword) for keyword in HEADER_TAGS}

CODE_STRING = re.compile(r"[A-Z0-9 _]{0,16}")  # VR CS, PS3.5 Table 6.2-1
INVALID_CODE_CHARS = 32


def is_code_string(value: str) -> bool:
    """True when `value` is a valid Code String (VR CS): at most 16 of A-Z, 0-9, space, _."""
    return CODE_STRING.fullmatch(value) is not None


def code_string(value: object) -> str:
    """A CS value as the node indexes and logs it: the value without padding when valid; else
    escaped (no control character) and at most INVALID_CODE_CHARS characters (`is_code_string`
    is False for that form: it is too long or holds a character outside the repertoire)."""
    text = "" if value is None else str(value).strip(" \x00")
    if is_code_string(text):
        return text
    return escape_text(text, INVALID_CODE_CHARS)


def patient_digest(kind: str, value: object) -> str:
    """SHA-256 (hex) of one patient identifier as the index compares it: the value without
    DICOM padding, prefixed by `kind` ("id" or "birth-date") so equal texts of two elements
    never compare equal. An empty Patient ID has a digest too (empty differs from "123")."""
    text = "" if value is None else str(value).strip(" \x00")
    return hashlib.sha256(f"lungnode {kind}:{text}".encode("utf-8", "replace")).hexdigest()


class HeaderError(ValueError):
    """The file does not parse as a DICOM dataset; the message names the file and the error."""


@dataclass(frozen=True)
class InstanceHeader:
    """Raw header values (None when absent); callers validate UIDs before using them."""

    sop_class_uid: object
    sop_instance_uid: object
    study_instance_uid: object
    series_instance_uid: object
    modality: str
    number_of_slices: object
    accession_number: str = ""
    study_date: str = ""
    patient_id: str = ""
    patient_digest: str | None = None  # of Patient ID; see patient_digest()
    birth_date_digest: str | None = None  # of Patient's Birth Date, None when absent or empty
    # Read from a file's first bytes by the scan: the size the file must have for the values
    # to hold (nothing after Pixel Data); None when read from the whole file.
    file_size: int | None = field(default=None, compare=False)

    def record(self, path: Path, calling_aet: str, received_at: float) -> InstanceRecord:
        """The index row for this instance stored at `path`; raises InvalidUIDError naming the
        first of SOP Class, SOP Instance, Study and Series Instance UID that is not a UID."""
        sop_class_uid = require_uid("SOP Class UID", self.sop_class_uid)
        sop_uid = require_uid("SOP Instance UID", self.sop_instance_uid)
        study_uid = require_uid("Study Instance UID", self.study_instance_uid)
        series_uid = require_uid("Series Instance UID", self.series_instance_uid)
        return InstanceRecord(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class_uid=sop_class_uid,
            modality=self.modality,
            path=path,
            calling_aet=calling_aet,
            received_at=received_at,
            accession_number=self.accession_number,
            study_date=self.study_date,
            patient_id=self.patient_id,
            patient_digest=self.patient_digest,
            birth_date_digest=self.birth_date_digest,
        )

    def expected_in_series(self) -> int | None:
        """PET Number of Slices (0054,0081) as the series' expected instance count, if sane."""
        if self.modality != "PT" or self.number_of_slices is None:
            return None
        try:
            # whatever pydicom parsed (object); int() refuses a bad one with the errors below
            value = int(self.number_of_slices)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None
        return value if value > 0 else None


def _short_text(value: object) -> str:
    """An SH/DA/LO value as indexed for search and display: escaped, at most 64 characters."""
    return escape_text("" if value is None else str(value).strip(" \x00"), 64)


def read_header(path: Path) -> InstanceHeader:
    """Read the indexed elements of the DICOM file at `path`; raises HeaderError."""
    try:
        ds = scan_header(path, HEADER_TAGS)
        if ds is not None:
            return _header_of(ds)
        # not plain enough for the scan: pydicom reads it, as the analysis and as the pixels
        header = _header_of(dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS))
        whole = _header_of(dcmread(path, specific_tags=HEADER_TAGS))
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, TypeError) as exc:
        raise HeaderError(f"{path.name} does not parse as DICOM: {exc}") from None
    if whole != header:
        raise HeaderError(
            f"{path.name} holds its header elements twice: read up to Pixel Data and read "
            "whole, it names different values (an element repeated after Pixel Data); "
            "the sender must send the instance without elements after Pixel Data"
        )
    return header


def header_of_first_bytes(data: bytes) -> InstanceHeader | None:
    """The header read_header would give for a file that begins with `data` and is exactly
    `file_size` bytes long (the caller checks that once the file is complete), or None when the
    scan declines those bytes or a value does not decode: then only read_header on the whole
    file gives the answer (or the error)."""
    scanned = scan_bytes(data, HEADER_TAGS, whole_file=False)
    if scanned is None:
        return None
    plain = plain_values(scanned.elements)
    if plain is not None:
        return _header_from(plain.get, scanned.file_size)
    try:
        return _header_of(scanned.dataset, scanned.file_size)
    except Exception:  # pydicom decoding hostile bytes: whatever it raises, read_header reports
        return None


def _header_of(ds: Dataset, file_size: int | None = None) -> InstanceHeader:
    return _header_from(ds.get, file_size)


def _header_from(get: Callable[[str], object], file_size: int | None) -> InstanceHeader:
    """The header from `get(keyword)`: a value as pydicom's Dataset.get gives it."""
    patient_id = get("PatientID")
    return InstanceHeader(
        sop_class_uid=get("SOPClassUID"),
        sop_instance_uid=get("SOPInstanceUID"),
        study_instance_uid=get("StudyInstanceUID"),
        series_instance_uid=get("SeriesInstanceUID"),
        modality=code_string(get("Modality")),
        number_of_slices=get("NumberOfSlices"),
        accession_number=_short_text(get("AccessionNumber")),
        study_date=_short_text(get("StudyDate")),
        patient_id=_short_text(patient_id),
        patient_digest=patient_digest("id", patient_id),
        birth_date_digest=_birth_date_digest(get("PatientBirthDate")),
        file_size=file_size,
    )


def plain_values(elements: Mapping[int, RawDataElement]) -> dict[str, object] | None:
    """The HEADER_TAGS values of raw `elements` (header_scan's), keyword -> value, equal to what
    pydicom's Dataset.get gives, decoded here without pydicom's per-element machinery (a third
    of the receive path's header time); None unless every element present is plain: the
    dictionary VR (or implicit VR), a text value of printable ASCII without a backslash (one
    value, which every character set the node allows decodes alike; NUL padding allowed), a
    Number of Slices of one US value, a Specific Character Set of PLAIN_CHARACTER_SETS, and
    pydicom's reading settings as the node sets them (no date conversion, validation not
    raising). Then the caller lets pydicom decode them."""
    if pydicom_config.datetime_conversion or (
        pydicom_config.settings.reading_validation_mode == pydicom_config.RAISE
    ):
        return None
    charset = elements.get(SPECIFIC_CHARACTER_SET)
    if charset is not None and (
        charset.VR not in (None, "CS")
        or (charset.value or b"").rstrip(b"\0 ") not in PLAIN_CHARACTER_SETS
    ):
        return None
    values: dict[str, object] = {}
    for keyword, (tag, vr) in _PLAIN_ELEMENTS.items():
        raw = elements.get(tag)
        if raw is None:
            continue
        value = raw.value
        if raw.VR not in (None, vr) or not isinstance(value, bytes | None):
            return None
        if not value:
            values[keyword] = empty_value_for_VR(vr)
        elif vr == "US":
            if len(value) != 2:
                return None
            values[keyword] = int.from_bytes(value, "little")
        elif value.translate(None, _PLAIN_TEXT_BYTES):
            return None
        elif vr == "UI":
            values[keyword] = value.decode("ascii").rstrip("\0 ").strip()  # convert_UI, UID()
        else:
            values[keyword] = value.decode("ascii").rstrip("\0 ")  # pydicom's convert_text
    return values


def _birth_date_digest(value: object) -> str | None:
    """The birth date's digest, or None when the element is absent or empty (then not compared)."""
    if value is None or not str(value).strip(" \x00"):
        return None
    return patient_digest("birth-date", value)
