"""The Command Set of each plain C-STORE-RQ decoded directly, not through a pydicom Dataset.

For every C-STORE-RQ, `DIMSEMessage.decode_msg` decodes its Command Set (about 150 bytes, seven
elements) into a pydicom Dataset, reads four of its elements, and `message_to_primitive`
iterates over all of them to fill the C_STORE primitive: each element is converted from raw
by pydicom's generic machinery (value hooks, validation, keyword lookups), about 0.2 ms of the
DUL thread per instance. `decode_command_set` reads the same bytes (Implicit VR Little Endian,
group 0000) into a `CommandSet`: the elements in tag order, each with the tag, keyword, value
and VM pydicom gives it, and the values as attributes by keyword, all that decode_msg and
message_to_primitive read. The primitive is then filled by pynetdicom's own setters, as before.

Only the plain case: the receiving DUL thread of an association with no EVT_DIMSE_RECV handler
(which would be given the message and its `command_set`), a Command Field of C-STORE-RQ, and
exactly the elements of a plain C-STORE-RQ (group length, Affected SOP Class and Instance UID
that are valid UIDs, Command Field, Message ID, Priority, Command Data Set Type), each once, in
ascending order, of its VR's length, filling the bytes exactly. Anything else (a Move
Originator, a UID pydicom would warn about, a padding other than one trailing NUL or space, a
C-ECHO, any other message) is decoded by pynetdicom's `decode`.
tests/contracts/pynetdicom/test_pynetdicom_commands.py compares both.

Touches the module global `pynetdicom.dimse_messages.decode`, which `DIMSEMessage.decode_msg`
calls only for a complete Command Set.
"""

from __future__ import annotations

import re
import struct
import threading
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt
from pynetdicom.dul import DULServiceProvider

_original_decode = dimse_messages.decode

C_STORE_RQ = 0x0001
_ELEMENT = struct.Struct("<HHL")  # group, element, value length (Implicit VR Little Endian)
_US = struct.Struct("<H")
_UL = struct.Struct("<L")
# a valid UID (pydicom reads it without a word in any validation mode), one trailing pad at most
_UID = re.compile(rb"(?=[0-9.]{1,64}[\0 ]?\Z)(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*[\0 ]?")

# (0000,eeee) -> keyword, VR of the elements of a plain C-STORE-RQ, in the order they come
_PLAIN_C_STORE_RQ: dict[int, tuple[str, str]] = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
}


@dataclass(frozen=True)
class CommandElement:
    """One element of a CommandSet, as much of pydicom's DataElement as pynetdicom reads."""

    tag: BaseTag
    keyword: str
    value: Any
    VM: int  # noqa: N815  # pydicom's attribute name


class CommandSet:
    """A decoded Command Set, read by pynetdicom as it reads its pydicom Dataset: values as
    attributes by keyword, the elements by iteration in tag order."""

    def __init__(self, elements: list[CommandElement]) -> None:
        self._elements = elements
        self._values = {element.keyword: element.value for element in elements}

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.__dict__["_values"][keyword]
        except KeyError:
            raise AttributeError(keyword) from None

    def __iter__(self) -> Any:
        return iter(self._elements)

    def __len__(self) -> int:
        return len(self._elements)


def decode_command_set(encoded: bytes) -> CommandSet | None:
    """The elements of a plain C-STORE-RQ Command Set as pydicom decodes them, or None when
    `encoded` is anything else (pydicom must decode it)."""
    elements: list[CommandElement] = []
    offset = 0
    end = len(encoded)
    previous = -1
    while offset < end:
        if end - offset < _ELEMENT.size:
            return None
        group, number, length = _ELEMENT.unpack_from(encoded, offset)
        offset += _ELEMENT.size
        known = _PLAIN_C_STORE_RQ.get(number)
        if group != 0 or known is None or number <= previous or end - offset < length:
            return None
        previous = number
        keyword, vr = known
        raw = encoded[offset : offset + length]
        offset += length
        value: Any
        if vr == "US" and length == _US.size:
            value = _US.unpack(raw)[0]
        elif vr == "UL" and length == _UL.size:
            value = _UL.unpack(raw)[0]
        elif vr == "UI" and length % 2 == 0 and _UID.fullmatch(raw):
            # what UID(text) makes of digits and dots, without re-validating them
            value = str.__new__(UID, raw.decode("ascii").rstrip("\0 "))
        else:
            return None
        elements.append(CommandElement(BaseTag(number), keyword, value, 1))
    if len(elements) != len(_PLAIN_C_STORE_RQ):
        return None
    command = CommandSet(elements)
    if command.CommandField != C_STORE_RQ:
        return None
    return command


def _decode(
    encoded: BytesIO, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> Any:
    """pynetdicom's `decode` as decode_msg calls it for a Command Set: a CommandSet where
    nothing else would see the difference, else pynetdicom's Dataset."""
    if is_implicit_vr and is_little_endian and not deflated:
        thread = threading.current_thread()
        if isinstance(thread, DULServiceProvider) and not thread.assoc.get_handlers(
            evt.EVT_DIMSE_RECV
        ):
            command = decode_command_set(encoded.getvalue())
            if command is not None:
                return command
    return _original_decode(encoded, is_implicit_vr, is_little_endian, deflated)


def install() -> None:
    """Decode plain C-STORE-RQ Command Sets directly (once, from
    scp_node.dicom.pynetdicom_adapter.install)."""
    setattr(dimse_messages, "decode", _decode)  # noqa: B010  # the module's own global
