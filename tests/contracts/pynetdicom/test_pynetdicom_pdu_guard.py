"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.pdu_guard relies on are still there,
in the same shape: `DULServiceProvider._read_pdu_data`, called as `self._read_pdu_data()` by
`_is_transport_event` (so an instance attribute replaces it for one association), its queues
and `_decode_pdu`; `Association.run_reactor` ending when its A-ASSOCIATE-RQ wait returns None.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
import socket
import struct
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt, fsm
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.dsutils import encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

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


def test_p_data_is_handed_to_the_state_machine_as_the_dul_loop_hands_it() -> None:
    """What GuardedReader.read does with a P-DATA-TF in place of the DUL's loop: in Sta6,
    Evt10 is action DT-2, which takes the PDU from _recv_pdu and gives its primitive to the
    DIMSE provider; the loop reads only when the socket is `ready`, restarts `_idle_timer`
    after each read, sends what waits on `to_provider_queue` and ends on `_kill_thread`."""
    assert fsm.TRANSITION_TABLE[("Evt10", "Sta6")] == "DT-2"
    assert fsm.ACTIONS["DT-2"][1] is fsm.DT_2
    assert {"_recv_pdu", "receive_primitive"} <= _names(fsm.DT_2)
    loop = _names(DULServiceProvider.run_reactor)
    assert {"_idle_timer", "_kill_thread", "event_queue", "do_action"} <= loop
    assert "to_provider_queue" in _names(DULServiceProvider._process_recv_primitive)
    assert "ready" in _names(DULServiceProvider._is_transport_event)


class _Peer:
    """An acceptor association in Sta6 whose DUL reads, through the guard, what the test
    writes to the other end of a socket pair; nothing runs its loop (the test calls read)."""

    def __init__(self) -> None:
        pynetdicom_adapter.install()
        self.assoc = Association(AE(), "acceptor")
        self.peer, ours = socket.socketpair()
        ours.settimeout(5.0)
        dul = self.assoc.dul
        dul.socket = AssociationSocket(self.assoc, client_socket=ours)
        assert dul.event_queue.get_nowait() == "Evt5"  # the connection, long handled
        dul.state_machine.current_state = "Sta6"
        self.limits = _NoLimits()
        self.reader = GuardedReader(dul, self.limits)
        self.reader.request_read = True  # associated

    def send(self, *pdus: bytes) -> None:
        self.peer.sendall(b"".join(pdus))

    def queued_events(self) -> list[str]:
        return list(self.assoc.dul.event_queue.queue)

    def messages(self) -> list[Any]:
        return [type(m).__name__ for _, m in self.assoc.dimse.msg_queue.queue]

    def close(self) -> None:
        self.peer.close()
        if self.assoc.dul.socket is not None:
            self.assoc.dul.socket.close()


class _NoLimits:
    max_pdu_length = 0

    def opened_at(self, assoc: Association) -> float | None:
        return None

    def dropped(self, peer: Any, calling_ae: str, reason: str) -> None:
        raise AssertionError(f"dropped: {reason}")


def _c_echo_rq(message_id: int) -> bytes:
    """A P-DATA-TF holding a whole C-ECHO-RQ (its last Command Set fragment)."""
    echo = C_ECHO()
    echo.MessageID = message_id
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    value = b"\x03" + bytes(encode(message.command_set, True, True))
    item = struct.pack(">LB", len(value) + 1, 1) + value
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


A_RELEASE_RQ = struct.pack(">BBLL", 0x05, 0, 4, 0)


def test_p_data_tfs_waiting_on_the_socket_are_handed_on_in_one_read() -> None:
    peer = _Peer()
    try:
        peer.send(_c_echo_rq(1), _c_echo_rq(2), _c_echo_rq(3))
        peer.reader.read()
        assert peer.messages() == ["C_ECHO", "C_ECHO", "C_ECHO"]
        assert peer.queued_events() == []
        assert peer.assoc.dul._recv_pdu.qsize() == 0
        assert peer.assoc.dul.state_machine.current_state == "Sta6"
    finally:
        peer.close()


def test_a_pdu_other_than_p_data_is_queued_for_the_dul_loop() -> None:
    peer = _Peer()
    try:
        peer.send(_c_echo_rq(1), A_RELEASE_RQ, _c_echo_rq(2))
        peer.reader.read()
        assert peer.messages() == ["C_ECHO"]
        assert peer.queued_events() == ["Evt12"]  # the release, then nothing read after it
        assert peer.assoc.dul._recv_pdu.qsize() == 1
    finally:
        peer.close()


def test_with_an_event_queued_a_p_data_waits_its_turn_in_the_queue() -> None:
    peer = _Peer()
    try:
        peer.assoc.dul.event_queue.put("Evt18")
        peer.send(_c_echo_rq(1), _c_echo_rq(2))
        peer.reader.read()
        assert peer.messages() == []
        assert peer.queued_events() == ["Evt18", "Evt10"]  # one PDU read, queued behind
    finally:
        peer.close()


def test_a_primitive_to_send_stops_the_reading_on() -> None:
    peer = _Peer()
    try:
        dul = peer.assoc.dul
        peer.send(_c_echo_rq(1), _c_echo_rq(2))
        dimse: Any = peer.assoc.dimse
        real_receive = dimse.receive_primitive

        def receive_then_answer(primitive: Any) -> None:
            real_receive(primitive)
            dul.to_provider_queue.put(P_DATA())  # as a handler's answer would be queued

        dimse.receive_primitive = receive_then_answer
        peer.reader.read()
        assert peer.messages() == ["C_ECHO"]  # the second waits for the loop's next turn
        assert peer.queued_events() == []
    finally:
        peer.close()
