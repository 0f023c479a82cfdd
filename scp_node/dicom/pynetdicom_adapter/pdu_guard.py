"""PDUs of the SCP's associations read whole, within a deadline, and refused by their header.

pynetdicom 3.0 reads a PDU by its announced length in one `recv` loop, with the socket's timeout
applying to each byte rather than to the PDU: one peer could announce a 4 GiB A-ASSOCIATE-RQ
and have it buffered, or hold an association slot by dripping one byte every few seconds.
`guard(dul, limits)` makes one association's DUL read its PDUs through `GuardedReader`: a PDU
whose header announces more than `limits.max_pdu_length` bytes is refused before any of it is
read, an unknown PDU type (or, before association, anything but an A-ASSOCIATE-RQ) is
refused, and a PDU must arrive whole within one deadline: the A-ASSOCIATE-RQ within the
association's ACSE timeout of the accept, every later PDU within its network timeout of its
first byte. A refused connection is closed at once (`limits.dropped` hears why) and, before
association, its acceptor thread woken so its slot is free at once.

Once associated, a P-DATA-TF read with nothing queued before it goes straight to the DUL's
state machine (`do_action`, as the DUL's loop would do with it next), and so do the P-DATA-TFs
already waiting on the socket after it, while nothing else waits: one turn of the loop, not one
per PDU, and no trip through its event and PDU queues (about 6 PDUs per 512x512 CT slice).

Touches `DULServiceProvider._read_pdu_data` of each guarded association's DUL (an instance
attribute set before the association starts; pynetdicom calls it as `self._read_pdu_data()`
from `_is_transport_event`), the DUL's `event_queue`, `_recv_pdu`, `to_user_queue` and
`_decode_pdu`, as pynetdicom's own reader does (a P-DATA-TF is decoded by
scp_node.dicom.pynetdicom_adapter.p_data, its values left in the PDU's buffer); for the P-DATA
handed on, what the loop reads: `state_machine` (`current_state`, `do_action`),
`to_provider_queue`, `_idle_timer`, `_kill_thread` and the transport's `ready`. The server's
request handler (scp_node.dicom.pynetdicom_adapter.server) guards each association it
creates; associations the node requests (the sender) keep pynetdicom's reader.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from typing import Any, Protocol

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from scp_node.dicom.pynetdicom_adapter.p_data import P_DATA_TF_EVENT, decode_pdu

log = logging.getLogger("lungnode.connections")

PDU_TYPES = frozenset(range(0x01, 0x08))
A_ASSOCIATE_RQ = 0x01
_FIRST_ALLOCATION = 1024 * 1024  # bytes of a PDU buffer before it has to grow
ESTABLISHED = "Sta6"  # the DUL state of an established association (data transfer)
# P-DATA-TFs one read hands on at most (16 MiB of 128 KiB PDUs) before the DUL's loop turns
P_DATA_PER_READ = 128


class PduLimits(Protocol):
    """What the guard reads from the server that accepted the connection
    (scp_node.dicom.connections.GuardedServer)."""

    max_pdu_length: int  # bytes a PDU may announce; 0: no limit

    def opened_at(self, assoc: Association) -> float | None:
        """time.monotonic() when `assoc`'s connection was accepted."""
        ...

    def dropped(self, peer: Any, calling_ae: str, reason: str) -> None:
        """Log and report a connection the guard cut."""
        ...


class _Cut(Exception):
    """A PDU the guarded reader refuses; the message says why."""


class _Closed(Exception):
    """The peer closed the connection."""


def guard(dul: DULServiceProvider, limits: PduLimits) -> None:
    """Make `dul` (of an association not yet started) read its PDUs under `limits`."""
    reader = GuardedReader(dul, limits)
    dul._read_pdu_data = reader.read  # type: ignore[method-assign]


def _recv_into(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    """Fill `view` from `sock`, all of it before `deadline` (time.monotonic())."""
    timeout = sock.gettimeout()
    if type(sock) is socket.socket and timeout:
        _read_into(sock.fileno(), view, deadline, timeout)
        return
    received = 0
    while received < len(view):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
        count = sock.recv_into(view[received:])
        if not count:
            raise _Closed
        received += count


def _read_into(fd: int, view: memoryview, deadline: float | None, timeout: float) -> None:
    """_recv_into for a plain TCP socket with a `timeout`, whose descriptor is non-blocking:
    one read(2) per piece, waiting (poll) only when nothing has arrived, where the socket's own
    recv_into sets the timeout (ioctl) and polls before every read, three system calls. Without
    a deadline each wait lasts at most `timeout`, as the socket's own would."""
    received = 0
    while received < len(view):
        try:
            count = os.readv(fd, [view[received:]])
        except BlockingIOError:
            remaining = timeout if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError from None
            waiting = select.poll()
            waiting.register(fd, select.POLLIN)
            if not waiting.poll(max(1, int(remaining * 1000))):
                raise TimeoutError from None
            continue
        if not count:
            raise _Closed
        received += count


def _recv_pdu(
    sock: socket.socket, header: bytes | bytearray, length: int, deadline: float | None
) -> bytearray:
    """The whole PDU (`header`, then its `length` bytes of body from `sock`) in one buffer,
    received in place, so no copy of its bytes is made on the way to pynetdicom's decoder.

    The buffer grows by doubling from at most _FIRST_ALLOCATION: a peer that announces a long
    PDU and sends little of it makes the node hold at most twice what it sent."""
    total = len(header) + length
    pdu = bytearray(min(total, _FIRST_ALLOCATION))
    pdu[: len(header)] = header
    filled = len(header)
    while True:
        with memoryview(pdu) as view:
            _recv_into(sock, view[filled:], deadline)
        filled = len(pdu)
        if filled == total:
            return pdu
        pdu.extend(bytes(min(total, 2 * filled) - filled))


class GuardedReader:
    """`DULServiceProvider._read_pdu_data` of one association, under the limits of the server
    that accepted it (see the module docstring)."""

    def __init__(self, dul: DULServiceProvider, limits: PduLimits) -> None:
        self._dul = dul
        self._limits = limits
        # the first PDU of an accepted connection (read before the state machine has even
        # left Sta1 for Sta2) must be the A-ASSOCIATE-RQ
        self.request_read = False

    def read(self) -> None:
        """Read one PDU and queue its event and PDU for the DUL, or cut the connection.

        A P-DATA-TF of an established association, with nothing queued before it, is handed
        to the DUL's state machine at once (`do_action`, what the DUL's loop does with it
        next), and the P-DATA-TFs already waiting on the socket after it likewise, up to
        P_DATA_PER_READ, as long as nothing else waits (a primitive to send, an event): per
        PDU, that spares the loop's turn, its two queues and its readiness check."""
        dul = self._dul
        for _ in range(P_DATA_PER_READ):
            received = self._read_one()
            if received is None:
                return
            pdu, event = received
            if event != P_DATA_TF_EVENT or not self._nothing_waits():
                dul.event_queue.put(event)
                dul._recv_pdu.put(pdu)
                return
            dul._recv_pdu.put(pdu)  # where the action (DT-2) takes it from
            try:
                dul.state_machine.do_action(event)
            except Exception:
                return  # do_action logged it and killed the DUL, whose loop then ends
            dul._idle_timer.restart()  # as the loop does after each PDU read
            transport = dul.socket
            if dul._kill_thread or not self._nothing_waits():
                return  # the loop's next turn sends or acts first, as it would have
            if transport is None or not transport.ready:
                return

    def _nothing_waits(self) -> bool:
        """Whether the DUL's loop would act on a P-DATA-TF read now before anything else: the
        association established (Sta6) and no event, PDU or primitive to send queued."""
        dul = self._dul
        return (
            dul.state_machine.current_state == ESTABLISHED
            and not dul.event_queue.qsize()
            and not dul._recv_pdu.qsize()
            and not dul.to_provider_queue.qsize()
        )

    def _read_one(self) -> tuple[Any, str] | None:
        """One PDU read and decoded (the PDU object and its event); None when the connection
        was cut or closed, or the PDU failed to decode (the DUL was told: Evt17, Evt19)."""
        dul = self._dul
        limits = self._limits
        assoc = dul.assoc
        transport = dul.socket
        sock = getattr(transport, "socket", None)
        if transport is None or sock is None:
            dul.event_queue.put("Evt17")
            return None
        awaiting_request = not self.request_read
        now = time.monotonic()
        if awaiting_request:
            opened = limits.opened_at(assoc) or now
            deadline: float | None = opened + float(assoc.acse_timeout or 30)
            within = f"{assoc.acse_timeout:g} s of the connection ([node] acse_timeout)"
        else:
            timeout = assoc.network_timeout
            deadline = None if timeout is None else now + float(timeout)
            within = f"{timeout:g} s of its first byte ([node] network_timeout)"
        restore = sock.gettimeout()
        what = "A-ASSOCIATE-RQ" if awaiting_request else "PDU"
        try:
            header = bytearray(6)
            with memoryview(header) as view:
                _recv_into(sock, view, deadline)
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in PDU_TYPES:
                raise _Cut(f"not a DICOM PDU (type 0x{pdu_type:02X})")
            if awaiting_request and pdu_type != A_ASSOCIATE_RQ:
                raise _Cut(f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ")
            if limits.max_pdu_length and length > limits.max_pdu_length:
                raise _Cut(
                    f"{what} of {length} bytes announced, above [node] max_pdu_length "
                    f"({limits.max_pdu_length}); refused before reading it"
                )
            pdu_bytes = _recv_pdu(sock, header, length, deadline)
        except _Cut as cut:
            self._cut(str(cut), awaiting_request)
            return None
        except TimeoutError:
            self._cut(f"{what} not received whole within {within}", awaiting_request)
            return None
        except (_Closed, OSError):
            # the peer closed (or reset) the connection: not an attack, not audited
            self._close(awaiting_request)
            return None
        finally:
            if sock.gettimeout() != restore:  # a TLS socket's reads set it
                try:
                    sock.settimeout(restore)
                except OSError:
                    pass
        try:
            decoded = decode_pdu(dul, pdu_bytes)
        except Exception as exc:
            if awaiting_request:
                # the text may hold the peer's bytes: the log formatter and the audit's JSON
                # escape it
                detail = f"{type(exc).__name__}: {str(exc)[:256]}"
                self._cut(f"A-ASSOCIATE-RQ does not decode: {detail}", True)
                return None
            log.warning("PDU does not decode: %s: %s", type(exc).__name__, exc)
            dul.event_queue.put("Evt19")  # pynetdicom aborts the association (A-ABORT)
            return None
        if awaiting_request:
            self.request_read = True
        return decoded

    def _cut(self, reason: str, before_association: bool) -> None:
        assoc = self._dul.assoc
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "")
        self._limits.dropped((assoc.requestor.address, assoc.requestor.port), calling, reason)
        self._close(before_association)

    def _close(self, before_association: bool) -> None:
        """Close the transport now (Evt17) and, before association, wake the acceptor thread
        waiting for the A-ASSOCIATE-RQ, so the connection's thread and slot end at once."""
        dul = self._dul
        if dul.socket is not None:
            dul.socket.close()  # shutdown + close, puts Evt17
        if before_association:
            to_user: Any = dul.to_user_queue  # typed for PDUs; None wakes it
            to_user.put(None)  # receive_pdu returns None
