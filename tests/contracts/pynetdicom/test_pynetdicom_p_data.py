"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.p_data relies on are still there, in
the same shape, and its P-DATA-TF decoding gives what pynetdicom's `_decode_pdu` gives: the
same PDU class, event, Presentation Context IDs and values, for well-formed PDUs; anything
else, and any association with a handler that would see the PDU, is decoded by pynetdicom.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF, PDU
from pynetdicom.pdu_items import PresentationDataValueItem

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter import p_data


def _pdu(*items: tuple[int, bytes]) -> bytearray:
    """A P-DATA-TF of PDV items (Presentation Context ID, value with its control header)."""
    body = b"".join(struct.pack(">LB", len(value) + 1, cx) + value for cx, value in items)
    return bytearray(struct.pack(">BBL", 0x04, 0, len(body)) + body)


def _dul() -> DULServiceProvider:
    pynetdicom_adapter.install()  # no standard PDU logger bound to new associations
    return Association(AE(), "acceptor").dul


def _shape(decoded: tuple[Any, str]) -> tuple[type, str, list[tuple[Any, bytes]]]:
    pdu, event = decoded
    items = [
        (item.presentation_context_id, bytes(item.presentation_data_value))
        for item in pdu.presentation_data_value_items
    ]
    return type(pdu), event, items


def _outcome(decode: Any, pdu: bytearray) -> Any:
    """What decoding `pdu` gives: its shape, or the class of the error it raises."""
    try:
        return _shape(decode(pdu))
    except Exception as exc:
        return type(exc)


WELL_FORMED = {
    "command and dataset fragment": _pdu((1, b"\x03" + b"c" * 70), (1, b"\x00" + b"d" * 4000)),
    "last dataset fragment": _pdu((3, b"\x02" + bytes(range(256)) * 512)),
    "an item of a control header alone": _pdu((5, b"\x02")),
    "no item": _pdu(),
}


@pytest.mark.parametrize("name", WELL_FORMED)
def test_a_well_formed_p_data_tf_decodes_as_pynetdicom_decodes_it_without_copies(
    name: str,
) -> None:
    dul = _dul()
    pdu = WELL_FORMED[name]
    decoded = p_data.decode_pdu(dul, pdu)
    assert _shape(decoded) == _shape(dul._decode_pdu(bytearray(pdu)))
    for item in decoded[0].presentation_data_value_items:
        assert isinstance(item.presentation_data_value, memoryview)
        assert item.presentation_data_value.obj is pdu  # a view of the received buffer


MALFORMED = {
    "an item longer than the PDU": _pdu((1, b"\x02abc"))[:-1],
    "an item of length 0": bytearray(struct.pack(">BBLL", 0x04, 0, 4, 0)),
    "a length cut short": _pdu((1, b"\x02abc")) + b"\x00\x00",
    "an item header alone": _pdu((1, b"\x02abc")) + b"\x00\x00\x00\x01",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_p_data_tf_is_left_to_pynetdicom(name: str) -> None:
    dul = _dul()
    pdu = MALFORMED[name]
    pdu[2:6] = struct.pack(">L", len(pdu) - 6)
    assert p_data._p_data_tf(dul.assoc, pdu) is None
    assert _outcome(lambda b: p_data.decode_pdu(dul, b), pdu) == _outcome(
        dul._decode_pdu, bytearray(pdu)
    )


def test_with_a_pdu_handler_bound_pynetdicom_decodes_and_the_handler_sees_the_pdu() -> None:
    dul = _dul()
    seen: list[PDU] = []
    dul.assoc.bind(evt.EVT_PDU_RECV, lambda event: seen.append(event.pdu))
    pdu = WELL_FORMED["last dataset fragment"]
    decoded, _ = p_data.decode_pdu(dul, pdu)
    assert seen == [decoded]
    assert isinstance(decoded.presentation_data_value_items[0].presentation_data_value, bytes)


def test_other_pdu_types_are_decoded_by_pynetdicom() -> None:
    dul = _dul()
    release_rq = bytearray(struct.pack(">BBLL", 0x05, 0, 4, 0))
    assert _shape_of_other(p_data.decode_pdu(dul, release_rq)) == _shape_of_other(
        dul._decode_pdu(bytearray(release_rq))
    )


def _shape_of_other(decoded: tuple[Any, str]) -> tuple[type, str]:
    return type(decoded[0]), decoded[1]


def test_p_data_tf_items_are_filled_as_pynetdicom_fills_them() -> None:
    """P_DATA_TF keeps its items in presentation_data_value_items, each a
    PresentationDataValueItem with presentation_context_id and presentation_data_value, and
    to_primitive reads them from there; P-DATA-TF is Evt10."""
    item = PresentationDataValueItem()
    item.presentation_context_id = 7
    item.presentation_data_value = b"\x02xyz"
    pdu = P_DATA_TF()
    pdu.presentation_data_value_items = [item]
    assert pdu.to_primitive().presentation_data_value_list == [(7, b"\x02xyz")]
    assert p_data.P_DATA_TF_EVENT == "Evt10"
