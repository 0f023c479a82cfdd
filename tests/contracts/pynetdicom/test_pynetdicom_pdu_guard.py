"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.pdu_guard relies on are still there,
in the same shape: `DULServiceProvider._read_pdu_data`, called as `self._read_pdu_data()` by
`_is_transport_event` (so an instance attribute replaces it for one association), its queues
and `_decode_pdu`; `Association.run_reactor` ending when its A-ASSOCIATE-RQ wait returns None.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter.pdu_guard import GuardedReader
from scp_node.dicom.tls import start_server

VERIFICATION = "1.2.840.10008.1.1"


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_dul_reads_pdus_through_read_pdu_data_and_the_acceptor_waits_on_its_queue() -> None:
    """GuardedReader.read mirrors pynetdicom's reader (events on event_queue, PDUs on
    _recv_pdu, decoded by _decode_pdu) and wakes an acceptor waiting for its A-ASSOCIATE-RQ
    with a None on to_user_queue (Association.run_reactor then ends the association)."""
    assert "_read_pdu_data" in _names(DULServiceProvider._is_transport_event)
    assert "self._read_pdu_data()" in inspect.getsource(DULServiceProvider._is_transport_event)
    original = _names(DULServiceProvider._read_pdu_data)
    assert {"_decode_pdu", "event_queue", "_recv_pdu"} <= original, (
        "pynetdicom's _read_pdu_data no longer decodes with _decode_pdu onto event_queue and "
        "_recv_pdu (scp_node.dicom.pynetdicom_adapter.pdu_guard.GuardedReader mirrors it)"
    )
    assert "to_user_queue" in _names(DULServiceProvider.receive_pdu)
    assert {"receive_pdu", "kill"} <= _names(Association.run_reactor)


def test_the_acceptor_association_reads_through_the_guard_and_the_requestor_does_not() -> None:
    pynetdicom_adapter.install()
    scp = AE(ae_title="SCP")
    scp.add_supported_context(VERIFICATION, ImplicitVRLittleEndian)
    readers: list[Any] = []

    def on_echo(event: Any) -> int:
        readers.append(event.assoc.dul._read_pdu_data)
        return 0x0000

    server = start_server(scp, ("127.0.0.1", 0), [(evt.EVT_C_ECHO, on_echo)], None, 5.0)
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        requestor_reader = assoc.dul._read_pdu_data
        assoc.release()
    finally:
        server.shutdown()
    (acceptor_reader,) = readers
    assert isinstance(getattr(acceptor_reader, "__self__", None), GuardedReader), (
        "the acceptor's DUL did not read its PDUs through the guard"
    )
    assert requestor_reader.__func__ is DULServiceProvider._read_pdu_data, (
        "an association the node requests must read PDUs as pynetdicom does"
    )
