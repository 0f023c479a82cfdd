"""The guarded reader's PDU buffer (scp_node.dicom.pynetdicom_adapter.pdu_guard._recv_pdu):
the exact bytes pynetdicom's own reader would read (header and announced body, nothing of the
next PDU), however the peer splits them, within the deadline, and only as much memory as the
peer actually sent (doubling from the first allocation). Each on a blocking socket (the
socket's own recv_into) and on one with a timeout, as the node's are (the direct read(2) path,
`_read_into`): both read the same."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from scp_node.dicom.pynetdicom_adapter import pdu_guard


def _p_data_tf(fragments: list[bytes]) -> bytes:
    """A P-DATA-TF PDU holding one PDV item per fragment (context 1)."""
    items = b"".join(struct.pack(">LB", len(f) + 1, 1) + f for f in fragments)
    return struct.pack(">BBL", 0x04, 0, len(items)) + items


def _send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> threading.Thread:
    def send() -> None:
        for start in range(0, len(data), piece):
            sock.sendall(data[start : start + piece])

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


_LONG = 3 * pdu_guard._FIRST_ALLOCATION + 11  # grows the buffer twice

# None: a blocking socket (its own recv_into); seconds: non-blocking underneath (read(2) path)
TIMEOUTS = pytest.mark.parametrize("timeout", [None, 30.0], ids=["blocking", "timeout"])


@pytest.mark.parametrize(
    ("piece", "body_bytes"),
    [(p, b) for p in (1, 7, 65536, 1 << 22) for b in (0, 5, 131072, _LONG) if (p, b) != (1, _LONG)],
)
@TIMEOUTS
def test_reads_exactly_one_pdu_however_it_is_split(
    piece: int, body_bytes: int, timeout: float | None
) -> None:
    pdu = _p_data_tf([bytes(range(256)) * (body_bytes // 256) + b"\x02" * (body_bytes % 256)])
    following = _p_data_tf([b"\x03next"])
    ours, peer = socket.socketpair()
    with ours, peer:
        sender = _send_in_pieces(peer, pdu + following, piece)
        header = ours.recv(6, socket.MSG_WAITALL)
        length = struct.unpack(">BBL", header)[2]
        ours.settimeout(timeout)
        read = pdu_guard._recv_pdu(ours, header, length, time.monotonic() + 60)
        ours.settimeout(None)  # MSG_WAITALL waits only on a blocking socket
        sender.join()
        assert bytes(read) == pdu
        assert ours.recv(len(following), socket.MSG_WAITALL) == following


@TIMEOUTS
def test_a_peer_that_closes_mid_pdu_is_closed_not_buffered(timeout: float | None) -> None:
    ours, peer = socket.socketpair()
    ours.settimeout(timeout)
    with ours:
        announced = 4 * 1024 * 1024
        peer.sendall(b"\x00" * 10)
        peer.close()
        with pytest.raises(pdu_guard._Closed):
            pdu_guard._recv_pdu(ours, struct.pack(">BBL", 4, 0, announced), announced, None)


@TIMEOUTS
def test_a_pdu_not_whole_by_its_deadline_times_out(timeout: float | None) -> None:
    ours, peer = socket.socketpair()
    ours.settimeout(timeout)
    with ours, peer:
        peer.sendall(b"\x00" * 10)
        with pytest.raises(TimeoutError):
            pdu_guard._recv_pdu(ours, struct.pack(">BBL", 4, 0, 100), 100, time.monotonic() + 0.2)


@pytest.mark.parametrize("timeout", [0.2], ids=["timeout"])
def test_without_a_deadline_a_stalled_peer_times_out_after_the_sockets_timeout(
    timeout: float,
) -> None:
    ours, peer = socket.socketpair()
    ours.settimeout(timeout)
    with ours, peer:
        peer.sendall(b"\x00" * 10)
        with pytest.raises(TimeoutError):
            pdu_guard._recv_pdu(ours, struct.pack(">BBL", 4, 0, 100), 100, None)
