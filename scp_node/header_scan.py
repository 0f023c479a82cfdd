"""Find a few top-level elements of a DICOM file by walking its first bytes, strictly.

The C-STORE handler indexes ten header elements of every instance before it answers; read by
pydicom (dcmread with specific_tags) that took about 0.5 ms per instance, most of it pydicom
building and skipping elements in Python. `scan_header` walks the element headers of the
first SCAN_BYTES of the file itself and hands the raw values it finds to a pydicom Dataset,
so every value is still decoded by pydicom (character set, VR rules) exactly as dcmread would.

It answers only when it is sure to agree with dcmread: File Meta with a little endian
transfer syntax pydicom knows (not deflated), a VR pydicom knows on every explicit element,
elements in ascending order, nested sequences walked by their items. Anything else (big
endian, a VR that looks implicit in an explicit dataset, a value past the bytes read, an
undefined length that is not a sequence, nesting deeper than MAX_DEPTH) returns None, and the
caller reads the file with pydicom as before. Like dcmread(stop_before_pixels=True) it walks
the whole header, to Pixel Data, so an element out of order anywhere is noticed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

SCAN_BYTES = 64 * 1024  # the File Meta and header of a CT or PET slice fit many times over
MAX_DEPTH = 8  # nested sequences walked; deeper ones go to pydicom

SPECIFIC_CHARACTER_SET = 0x00080005
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # dcmread stops at these
UNDEFINED = 0xFFFFFFFF
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

_VR_NAMES = {
    vr.encode("ascii"): vr
    for vr in "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    "UC UI UL UN UR US UT UV".split()
}
_LONG_VRS = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length (explicit VR, short form)
_LONG_LENGTH = struct.Struct("<L")


class _Unsure(Exception):
    """The bytes are not plain enough to be sure of agreeing with dcmread."""


def scan_header(path: Path, keywords: Iterable[str]) -> Dataset | None:
    """The top-level elements named by `keywords` (and Specific Character Set) of the DICOM
    file at `path`, as a pydicom Dataset of raw elements; None when unsure (use dcmread)."""
    with open(path, "rb") as f:
        data = f.read(SCAN_BYTES + 1)
    return scan_bytes(data[:SCAN_BYTES], keywords, whole_file=len(data) <= SCAN_BYTES)


def scan_bytes(data: bytes, keywords: Iterable[str], *, whole_file: bool) -> Dataset | None:
    """scan_header of a file's first bytes, `data`; `whole_file` when they are all of it (else
    running out of bytes before Pixel Data is unsure)."""
    wanted = {tag_for_keyword(keyword) for keyword in keywords}
    if None in wanted:
        raise ValueError(f"unknown keyword among {sorted(keywords)}")
    try:
        return _scan(data, whole_file, wanted)  # type: ignore[arg-type]
    except (_Unsure, struct.error):
        return None


def _scan(data: bytes, whole_file: bool, wanted: set[int]) -> Dataset | None:
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unsure
    position, syntax = _file_meta(data, 132)
    try:
        implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
        if not (syntax.is_little_endian and not syntax.is_deflated):
            raise _Unsure
    except ValueError:  # not a transfer syntax pydicom knows
        raise _Unsure from None
    found: dict[BaseTag, DataElement | RawDataElement] = {}
    previous = -1
    first = True
    while True:
        if position + 8 > len(data):
            if whole_file and position == len(data):
                break  # end of the file: dcmread stops there too
            raise _Unsure
        tag, vr, length, value_at = _element_header(data, position, implicit, first)
        first = False
        if tag in PIXEL_DATA_TAGS:
            break
        if tag <= previous or tag in (ITEM, ITEM_END, SEQUENCE_END):
            raise _Unsure
        previous = tag
        if length == UNDEFINED:
            if tag in wanted or tag == SPECIFIC_CHARACTER_SET:
                raise _Unsure
            position = _skip_sequence(data, value_at, vr, implicit, 1)
            continue
        end = value_at + length
        if end > len(data):
            raise _Unsure
        if tag in wanted or tag == SPECIFIC_CHARACTER_SET:
            value = data[value_at:end] if length else empty_value_for_VR(vr, raw=True)
            found[BaseTag(tag)] = RawDataElement(
                BaseTag(tag), vr, length, cast(bytes | None, value), value_at, implicit, True
            )
        position = end
    dataset = Dataset(found)
    dataset.set_original_encoding(implicit, True)
    return dataset


def _file_meta(data: bytes, position: int) -> tuple[int, UID]:
    """Walk the group 0002 elements (always explicit VR little endian); returns the offset of
    the dataset and the Transfer Syntax UID."""
    syntax: UID | None = None
    while position + 8 <= len(data):
        group, element = _TAG.unpack_from(data, position)
        if group != 0x0002:
            break
        tag, _vr, length, value_at = _element_header(data, position, False, False)
        end = value_at + length
        if length == UNDEFINED or end > len(data):
            raise _Unsure
        if tag == 0x00020010:
            try:
                syntax = UID(data[value_at:end].decode("ascii").rstrip("\0 "))
            except UnicodeDecodeError:
                raise _Unsure from None
        position = end
    if syntax is None:
        raise _Unsure
    return position, syntax


def _element_header(
    data: bytes, position: int, implicit: bool, first: bool
) -> tuple[int, str | None, int, int]:
    """(tag, VR or None when implicit, value length, offset of the value) of one element."""
    group, element, raw_vr, short_length = _EXPLICIT.unpack_from(data, position)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        if implicit and first and 0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B:
            raise _Unsure  # dcmread's test: it would take the dataset for explicit VR
        return tag, None, _LONG_LENGTH.unpack_from(data, position + 4)[0], position + 8
    vr = _VR_NAMES.get(raw_vr)
    if vr is None:
        raise _Unsure  # dcmread would guess: implicit VR inside, or an unknown VR
    if raw_vr in _LONG_VRS:
        return tag, vr, _LONG_LENGTH.unpack_from(data, position + 8)[0], position + 12
    return tag, vr, short_length, position + 8


def _skip_sequence(data: bytes, position: int, vr: str | None, implicit: bool, depth: int) -> int:
    """The offset after an undefined-length sequence whose first item starts at `position`."""
    if vr not in (None, "SQ") or depth > MAX_DEPTH:
        raise _Unsure  # e.g. UN of undefined length, which dcmread reads as implicit VR items
    while position + 8 <= len(data):
        tag, _vr, length, value_at = _element_header(data, position, implicit, False)
        if tag == SEQUENCE_END:
            return value_at
        if tag != ITEM:
            raise _Unsure  # implicit VR without items: not a sequence dcmread would agree on
        if length == UNDEFINED:
            position = _skip_item(data, value_at, implicit, depth)
        else:
            position = value_at + length
    raise _Unsure


def _skip_item(data: bytes, position: int, implicit: bool, depth: int) -> int:
    """The offset after an undefined-length item whose first element starts at `position`."""
    while position + 8 <= len(data):
        tag, vr, length, value_at = _element_header(data, position, implicit, False)
        if tag == ITEM_END:
            return value_at
        if tag in (ITEM, SEQUENCE_END):
            raise _Unsure
        if length == UNDEFINED:
            position = _skip_sequence(data, value_at, vr, implicit, depth + 1)
        else:
            position = value_at + length
    raise _Unsure
