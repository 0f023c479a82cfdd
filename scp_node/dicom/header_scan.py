"""Find a few top-level elements of a DICOM file by walking its first bytes, strictly.

The C-STORE handler indexes ten header elements of every instance before it answers; read by
pydicom (dcmread with specific_tags) that took about 0.5 ms per instance, most of it pydicom
building and skipping elements in Python. `scan_header` walks the element headers of the
first SCAN_BYTES of the file itself and hands the raw values it finds to a pydicom Dataset,
so every value is still decoded by pydicom (character set, VR rules) exactly as dcmread would.

What the node indexes and compares (Patient ID, the UIDs) must be what pydicom, the reader of
everything downstream, reads from the same bytes. So the scan answers only where it walks the
bytes exactly as pydicom's dcmread does, and only for constructs that leave no room to differ:
File Meta with a little endian transfer syntax pydicom knows (not deflated); a VR pydicom knows
on every explicit element; elements in strictly ascending order (no duplicate) at the top level
and in every item pydicom parses; no Command Set (group 0000) and no group FFFE element outside
a sequence; item and sequence delimiters of length 0 (an item delimiter followed by VR-like
bytes is read with a VR by pydicom); undefined length only on a sequence (explicit SQ, or in
implicit VR a tag the dictionary calls SQ or a private tag whose value starts with an item:
pydicom byte-searches any other value for a delimiter); defined-length items inside an
undefined-length sequence filled exactly by their elements (pydicom parses them); nothing
after Pixel Data (dcmread(stop_before_pixels=True), what the analysis reads headers with, and a
full dcmread then see the same top-level elements): Pixel Data of defined length ending where
the file ends, or no Pixel Data. Anything else returns None and the caller reads the file with
pydicom (scp_node.dicom.instance_header). tests/integration/test_header_scan.py holds the
differential tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_string

SCAN_BYTES = 64 * 1024  # the File Meta and header of a CT or PET slice fit many times over
MAX_DEPTH = 8  # nested sequences walked; deeper ones go to pydicom

SPECIFIC_CHARACTER_SET = 0x00080005
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # dcmread stops at these
UNDEFINED = 0xFFFFFFFF
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DELIMITER_GROUP = 0xFFFE  # items and delimiters
COMMAND_GROUP = 0x0000  # dcmread reads a Command Set before the dataset, in implicit VR

_VR_NAMES = {
    vr.encode("ascii"): vr
    for vr in "AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
    "UC UI UL UN UR US UT UV".split()
}
_LONG_VRS = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 2-byte length (explicit VR, short form)
_ITEM = struct.Struct("<HHL")  # tag, 4-byte length: items and delimiters in any encoding
_LONG_LENGTH = struct.Struct("<L")


class _Unsure(Exception):
    """The bytes are not plain enough to be sure of agreeing with dcmread."""


@dataclass(frozen=True)
class ScannedHeader:
    """The scan's answer: the elements found, and the size the file must have for them to be
    what dcmread reads (the end of Pixel Data; nothing may follow it)."""

    dataset: Dataset
    file_size: int
    # the same elements undecoded (tag -> raw element, Specific Character Set included)
    elements: dict[int, RawDataElement] = field(default_factory=dict, compare=False)


def scan_header(path: Path, keywords: Iterable[str]) -> Dataset | None:
    """The top-level elements named by `keywords` (and Specific Character Set) of the DICOM
    file at `path`, as a pydicom Dataset of raw elements; None when unsure (use dcmread)."""
    with open(path, "rb") as f:
        data = f.read(SCAN_BYTES + 1)
        size = os.fstat(f.fileno()).st_size
    scanned = scan_bytes(data[:SCAN_BYTES], keywords, whole_file=len(data) <= SCAN_BYTES)
    if scanned is None or scanned.file_size != size:
        return None
    return scanned.dataset


def scan_bytes(data: bytes, keywords: Iterable[str], *, whole_file: bool) -> ScannedHeader | None:
    """scan_header of a file's first bytes, `data`; `whole_file` when they are all of it (else
    running out of bytes before Pixel Data is unsure). The answer holds only for a file of
    exactly its `file_size` bytes: the caller checks that once the file is complete."""
    wanted = {tag_for_keyword(keyword) for keyword in keywords}
    if None in wanted:
        raise ValueError(f"unknown keyword among {sorted(keywords)}")
    try:
        return _scan(data, whole_file, wanted)  # type: ignore[arg-type]
    except (_Unsure, struct.error):
        return None


def _scan(data: bytes, whole_file: bool, wanted: set[int]) -> ScannedHeader:
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unsure
    position, syntax = _file_meta(data, 132)
    try:
        implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
        if not (syntax.is_little_endian and not syntax.is_deflated):
            raise _Unsure
    except ValueError:  # not a transfer syntax pydicom knows
        raise _Unsure from None
    found: dict[BaseTag, RawDataElement] = {}
    previous = -1
    first = True
    while True:
        if position + 8 > len(data):
            if whole_file and position == len(data):
                file_size = position  # no Pixel Data; the file ends here, as dcmread does
                break
            raise _Unsure
        tag, vr, length, value_at = _element_header(data, position, implicit, first)
        first = False
        if tag in PIXEL_DATA_TAGS:
            if length == UNDEFINED:
                raise _Unsure  # encapsulated: where it ends is pydicom's byte search
            file_size = value_at + length
            break
        if tag >> 16 in (DELIMITER_GROUP, COMMAND_GROUP) or tag <= previous:
            raise _Unsure
        previous = tag
        if length == UNDEFINED:
            if tag in wanted or tag == SPECIFIC_CHARACTER_SET:
                raise _Unsure
            position = _skip_sequence(data, value_at, tag, vr, implicit, 1)
            continue
        end = value_at + length
        if end > len(data):
            raise _Unsure
        if tag == SPECIFIC_CHARACTER_SET:
            _check_character_set(data[value_at:end])
        if tag in wanted or tag == SPECIFIC_CHARACTER_SET:
            value = data[value_at:end] if length else empty_value_for_VR(vr, raw=True)
            found[BaseTag(tag)] = RawDataElement(
                BaseTag(tag), vr, length, cast(bytes | None, value), value_at, implicit, True
            )
        position = end
    # a copy: pydicom converts the elements of its dict in place as they are read
    dataset = Dataset(cast(dict[BaseTag, DataElement | RawDataElement], dict(found)))
    dataset.set_original_encoding(implicit, True)
    return ScannedHeader(dataset, file_size, {int(tag): raw for tag, raw in found.items()})


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
    """(tag, VR or None when implicit, value length, offset of the value) of one element; a
    group FFFE tag comes back with the 4-byte length after it (callers refuse or check it)."""
    group, element, raw_vr, short_length = _EXPLICIT.unpack_from(data, position)
    tag = group << 16 | element
    if implicit or group == DELIMITER_GROUP:
        if implicit and first and 0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B:
            raise _Unsure  # dcmread's test: it would take the dataset for explicit VR
        return tag, None, _LONG_LENGTH.unpack_from(data, position + 4)[0], position + 8
    vr = _VR_NAMES.get(raw_vr)
    if vr is None:
        raise _Unsure  # dcmread would guess: implicit VR inside, or an unknown VR
    if raw_vr in _LONG_VRS:
        return tag, vr, _LONG_LENGTH.unpack_from(data, position + 8)[0], position + 12
    return tag, vr, short_length, position + 8


def _check_character_set(value: bytes) -> None:
    """dcmread decodes Specific Character Set as it reads it (also in items) and fails the
    file on a value it cannot look up; the scan declines such a file."""
    try:
        convert_encodings(convert_string(value, True))
    except Exception:  # whatever pydicom raises there, dcmread raises it too
        raise _Unsure from None


def _is_sequence(data: bytes, position: int, tag: int, vr: str | None) -> bool:
    """Whether dcmread parses the undefined-length value of `tag` starting at `position` as a
    sequence (anything else it byte-searches for a delimiter, which the scan does not follow).
    Explicit VR: SQ (UN, which it reads as a sequence of implicit items, is left to it).
    Implicit VR: a tag the dictionary calls SQ, or a tag it does not know whose value starts
    with an item."""
    if vr is not None:
        return vr == "SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return position + 4 <= len(data) and _TAG.unpack_from(data, position) == (0xFFFE, 0xE000)


def _skip_sequence(
    data: bytes, position: int, tag: int, vr: str | None, implicit: bool, depth: int
) -> int:
    """The offset after the undefined-length sequence `tag` whose first item starts at
    `position`, walking every item as dcmread does."""
    if depth > MAX_DEPTH or not _is_sequence(data, position, tag, vr):
        raise _Unsure
    while position + 8 <= len(data):
        item, length = _item_header(data, position)
        position += 8
        if item == SEQUENCE_END:
            if length != 0:
                raise _Unsure
            return position
        if item != ITEM:
            raise _Unsure  # dcmread would read it as an item all the same
        if length == UNDEFINED:
            position = _walk_item(data, position, None, implicit, depth)
        else:
            position = _walk_item(data, position, position + length, implicit, depth)
    raise _Unsure


def _item_header(data: bytes, position: int) -> tuple[int, int]:
    """(tag, length) of an item or sequence delimiter: dcmread reads them so in any encoding."""
    group, element, length = _ITEM.unpack_from(data, position)
    return group << 16 | element, length


def _walk_item(data: bytes, position: int, end: int | None, implicit: bool, depth: int) -> int:
    """The offset after the item whose first element starts at `position`: at its item
    delimiter when `end` is None (undefined length), else exactly at `end`."""
    if end is not None and end > len(data):
        raise _Unsure
    previous = -1
    while end is None or position < end:
        if position + 8 > len(data):
            raise _Unsure
        tag, vr, length, value_at = _element_header(data, position, implicit, False)
        if tag >> 16 == DELIMITER_GROUP:
            if tag == ITEM_END and length == 0 and end is None:
                return value_at
            raise _Unsure  # dcmread: an explicit VR element, or the item's end too early
        if tag <= previous:
            raise _Unsure  # a duplicate or out of order: dcmread keeps the last one
        previous = tag
        if length == UNDEFINED:
            position = _skip_sequence(data, value_at, tag, vr, implicit, depth + 1)
        else:
            position = value_at + length
            if tag == SPECIFIC_CHARACTER_SET:
                _check_character_set(data[value_at:position])
        if end is not None and position > end:
            raise _Unsure  # dcmread reads past the item's length and on from there
    return position
