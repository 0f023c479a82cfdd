"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.commands relies on are still there,
in the same shape, and its Command Sets read as pydicom's: for a plain C-STORE-RQ the same
elements (tag, keyword, value and its type, VM) and the same C_STORE primitive out of
`message_to_primitive`; anything else, and any association with an EVT_DIMSE_RECV handler, is
decoded by pydicom (`dimse_messages.decode`, as `DIMSEMessage.decode_msg` looks it up).

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import random
import struct
from io import BytesIO
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter import commands, streaming

PRIMITIVE_FIELDS = (
    "MessageID",
    "AffectedSOPClassUID",
    "AffectedSOPInstanceUID",
    "Priority",
    "MoveOriginatorApplicationEntityTitle",
    "MoveOriginatorMessageID",
)


def _c_store_rq(sop_instance: str, *, message_id: int = 7, priority: int = 0, **more: Any) -> bytes:
    """The Command Set pynetdicom encodes for a C-STORE-RQ."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = priority
    for keyword, value in more.items():
        setattr(primitive, keyword, value)
    primitive.DataSet = BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


def _elements(command_set: Any) -> list[tuple[Any, ...]]:
    return [(e.tag, e.keyword, e.value, type(e.value), e.VM) for e in command_set]


def _primitive(encoded: bytes, decoder: Any) -> tuple[Any, ...]:
    """The primitive pynetdicom makes of a P-DATA holding the whole Command Set, with
    dimse_messages.decode being `decoder`."""
    saved = dimse_messages.decode, _config.STORE_RECV_CHUNKED_DATASET
    dimse_messages.decode = decoder
    _config.STORE_RECV_CHUNKED_DATASET = False  # the dataset is not streamed to a file here
    try:
        message = DIMSEMessage()
        p_data = P_DATA()
        p_data.presentation_data_value_list = [[1, b"\x03" + encoded]]
        message.decode_msg(p_data)
        primitive = message.message_to_primitive()
    finally:
        dimse_messages.decode, _config.STORE_RECV_CHUNKED_DATASET = saved
    return (
        type(message),
        type(primitive),
        message.context_id,
        *(
            (getattr(primitive, f, None), type(getattr(primitive, f, None)))
            for f in PRIMITIVE_FIELDS
        ),
    )


def _direct(encoded: BytesIO, *_: Any) -> Any:
    return commands.decode_command_set(encoded.getvalue())


PLAIN = {
    "an even UID": _c_store_rq("1.2.3.44"),
    "an odd UID (NUL padded)": _c_store_rq("1.2.3.4"),
    "a 64-character UID": _c_store_rq("1." + "2" * 62),
    "a generated UID, high priority, message 65535": _c_store_rq(
        generate_uid(), message_id=65535, priority=1
    ),
}


@pytest.mark.parametrize("name", PLAIN)
def test_a_plain_c_store_rq_reads_as_pydicom_reads_it(name: str) -> None:
    encoded = PLAIN[name]
    direct = commands.decode_command_set(encoded)
    assert direct is not None
    assert _elements(direct) == _elements(decode(BytesIO(encoded), True, True))
    assert _primitive(encoded, _direct) == _primitive(encoded, decode)


def _space_padded(encoded: bytes) -> bytes:
    """The odd SOP Instance UID padded with a space instead of NUL (pydicom strips either)."""
    assert encoded.endswith(b"\x00")
    return encoded[:-1] + b" "


def test_a_space_padded_uid_reads_as_pydicom_reads_it() -> None:
    encoded = _space_padded(_c_store_rq("1.2.3.4"))
    direct = commands.decode_command_set(encoded)
    assert direct is not None
    assert _elements(direct) == _elements(decode(BytesIO(encoded), True, True))


def _with_value(encoded: bytes, tag: int, value: bytes) -> bytes:
    """`encoded` with element (0000,tag)'s value replaced (its length too; the group length is
    left as it was: pydicom does not check it)."""
    out = bytearray()
    offset = 0
    while offset < len(encoded):
        group, number, length = struct.unpack_from("<HHL", encoded, offset)
        old = encoded[offset + 8 : offset + 8 + length]
        new = value if number == tag else old
        out += struct.pack("<HHL", group, number, len(new)) + new
        offset += 8 + length
    return bytes(out)


NOT_PLAIN = {
    "a Move Originator": _c_store_rq(
        "1.2.3.4",
        MoveOriginatorApplicationEntityTitle="MOVER",
        MoveOriginatorMessageID=3,
    ),
    "a C-STORE-RSP": _with_value(_c_store_rq("1.2.3.4"), 0x0100, struct.pack("<H", 0x8001)),
    "a UID with a letter": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b"1.2.3.a\x00"),
    "a UID of two values": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b"1.2\\3.4\x00"),
    "a UID with a leading zero": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b"1.02.3.4"),
    "a UID of 66 characters": _with_value(
        _c_store_rq("1.2.3.4"), 0x1000, b"1." + b"2" * 63 + b"\x00"
    ),
    "a UID ending in a dot": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b"1.2.3."),
    "a UID padded twice": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b"1.2.34\x00\x00"),
    "an empty UID": _with_value(_c_store_rq("1.2.3.4"), 0x1000, b""),
    "a Message ID of two values": _with_value(_c_store_rq("1.2.3.4"), 0x0110, b"\x01\x00\x02\x00"),
    "a trailing byte": _c_store_rq("1.2.3.4") + b"\x00",
    "an element missing": _c_store_rq("1.2.3.4")[:-16],
}


@pytest.mark.parametrize("name", NOT_PLAIN)
def test_anything_but_a_plain_c_store_rq_is_left_to_pydicom(name: str) -> None:
    assert commands.decode_command_set(NOT_PLAIN[name]) is None


def test_other_messages_are_left_to_pydicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    assert commands.decode_command_set(bytes(encode(message.command_set, True, True))) is None
    response = C_STORE_RSP()
    stored = C_STORE()
    stored.MessageIDBeingRespondedTo = 1
    stored.AffectedSOPClassUID = CTImageStorage
    stored.AffectedSOPInstanceUID = "1.2.3.4"
    stored.Status = 0
    response.primitive_to_message(stored)
    assert commands.decode_command_set(bytes(encode(response.command_set, True, True))) is None


def _pydicom_elements(encoded: bytes) -> Any:
    try:
        return _elements(decode(BytesIO(encoded), True, True))
    except Exception as exc:
        return type(exc)


def test_damaged_command_sets_read_as_pydicom_reads_them_or_are_left_to_it() -> None:
    """Each byte of a plain Command Set changed, one at a time, to a few values: where the
    direct decoder answers, it is what pydicom reads."""
    encoded = PLAIN["an odd UID (NUL padded)"]
    rng = random.Random(19)
    answered = 0
    for offset in range(len(encoded)):
        for value in {0, 1, 0x20, 0x2E, 0x39, 0xFF, rng.randrange(256)}:
            damaged = encoded[:offset] + bytes([value]) + encoded[offset + 1 :]
            direct = commands.decode_command_set(damaged)
            if direct is not None:
                answered += 1
                assert _elements(direct) == _pydicom_elements(damaged), (offset, value)
    assert answered > 0  # UID digits and numbers changed are still plain


def _decoded_in_dul_thread(bind_dimse_handler: bool) -> Any:
    """What the adapter's `dimse_messages.decode` gives in an acceptor's DUL thread."""
    pynetdicom_adapter.install()
    assoc = Association(AE(), "acceptor")
    if bind_dimse_handler:
        assoc.bind(evt.EVT_DIMSE_RECV, lambda event: None)
    dul = assoc.dul
    result: list[Any] = []
    # the DUL's thread runs this instead of its reactor
    dul.run = lambda: result.append(
        dimse_messages.decode(BytesIO(PLAIN["an even UID"]), True, True)
    )  # type: ignore[method-assign]
    dul.start()
    dul.join()
    return result[0]


def test_in_a_dul_thread_a_plain_c_store_rq_is_decoded_directly() -> None:
    assert isinstance(_decoded_in_dul_thread(False), commands.CommandSet)


def test_with_a_dimse_handler_bound_pydicom_decodes_and_the_handler_sees_a_dataset() -> None:
    assert not isinstance(_decoded_in_dul_thread(True), commands.CommandSet)


def test_outside_a_dul_thread_pydicom_decodes() -> None:
    pynetdicom_adapter.install()
    decoded = dimse_messages.decode(BytesIO(PLAIN["an even UID"]), True, True)
    assert not isinstance(decoded, commands.CommandSet)


def test_decode_msg_decodes_the_command_set_through_the_module_global() -> None:
    pynetdicom_adapter.install()
    assert "decode" in streaming._original_decode_msg.__code__.co_names, (
        "DIMSEMessage.decode_msg no longer decodes the Command Set through dimse_messages' "
        "decode (scp_node.dicom.pynetdicom_adapter.commands replaces it)"
    )
    assert "command_set" in DIMSEMessage.message_to_primitive.__code__.co_names
