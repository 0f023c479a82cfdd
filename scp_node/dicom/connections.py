"""Connections to the SCP before and around association: bounded in size, time and number.

pynetdicom 3.0 counts every open connection against `maximum_associations`, associated or not,
and reads PDUs with a timeout per byte rather than per PDU. Alone, that lets one peer hold
every association slot by dripping one byte every few seconds, or announce a 4 GiB PDU. This
module is the node's policy against that; the mechanics that reach into pynetdicom (the
request handler, the guarded PDU reader) are in scp_node.dicom.pynetdicom_adapter:

- `GuardedServer` (the base of the node's servers, see scp_node.dicom.tls): a listen backlog of
  LISTEN_BACKLOG; at most `max_pending_per_address` connections per source address that have
  not yet delivered an A-ASSOCIATE-RQ (more are closed at accept); it remembers when each
  connection was accepted and tells `on_drop(peer, calling_ae, reason)` of every connection it
  or the PDU guard (pynetdicom_adapter.pdu_guard: `max_pdu_length`, the A-ASSOCIATE-RQ within
  [node] acse_timeout of the accept, every later PDU within [node] network_timeout of its
  first byte) cuts; the receiver audits them as Security Alerts.
- `negotiating_association(ae)`: the acceptor association whose A-ASSOCIATE-RQ the current
  thread is negotiating, for scp_node.receive.receiver's AE, whose association limits count only
  associations that delivered an A-ASSOCIATE-RQ (see `associated`).

With several receiver processes on one listening socket (`share_listener`), the pending
connections per address and the associations (per calling AE and in all) are counted on the
whole node: each process publishes what it holds in the node's shared `NodeCounts`
(scp_node.dicom.node_counts) at every change and checks every process's counts under its lock.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association

from scp_node.dicom.node_counts import NodeCounts
from scp_node.dicom.pynetdicom_adapter.server import AcceptorServer
from scp_node.logs import escape_text

log = logging.getLogger("lungnode.connections")

LISTEN_BACKLOG = 128  # listen(2) backlog of the SCP's socket (pynetdicom's default is 5)


def associated(assoc: Association) -> bool:
    """True once the acceptor `assoc` received its A-ASSOCIATE-RQ and has not ended (rejected,
    aborted or released): what counts against the association limits."""
    return (
        assoc.requestor.primitive is not None
        and (assoc.ident is None or assoc.is_alive())
        and not (assoc.is_rejected or assoc.is_aborted or assoc.is_released)
    )


def negotiating_association(ae: object) -> Association | None:
    """The acceptor association of `ae` the calling thread is negotiating (pynetdicom's ACSE
    runs in the association's own thread and reads the AE's limits and allow-list there)."""
    thread = threading.current_thread()
    if (
        isinstance(thread, Association)
        and thread.ae is ae
        and thread.is_acceptor
        and not thread.is_established
    ):
        return thread
    return None


def calling_ae_of(assoc: Association) -> str:
    """The calling AE title of the A-ASSOCIATE-RQ `assoc` received ('' before it did)."""
    return str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()


def peer_host(address: Any) -> str:
    """The host part of a client address tuple."""
    return str(address[0]) if isinstance(address, tuple) else str(address)


class GuardedServer(AcceptorServer):
    """The node's SCP server (pynetdicom_adapter.server.AcceptorServer) with a listen backlog of
    LISTEN_BACKLOG, a per-address cap on connections not yet associated, and the limits its
    associations' PDUs are read under (pynetdicom_adapter.pdu_guard).

    Keyword arguments (besides pynetdicom's): `max_pdu_length` (bytes a PDU may announce),
    `max_pending_per_address`, `on_drop(peer, calling_ae, reason)`.
    """

    request_queue_size = LISTEN_BACKLOG
    # share_listener(): the listening socket the serve process made (AcceptorServer's
    # shared_listener), shared by every receiver process, and the dispatch that lets the
    # least busy of them accept first
    dispatch: LeastBusyDispatch | None = None
    # the node's counts of every receiver process, and this process's row in them
    node_counts: NodeCounts | None = None
    counts_row = 0

    def __init__(
        self,
        *args: Any,
        max_pdu_length: int = 0,
        max_pending_per_address: int = 0,
        on_drop: Callable[[str, str, str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.max_pdu_length = max_pdu_length  # 0: no limit
        self.max_pending_per_address = max_pending_per_address  # 0: no limit
        self.on_drop = on_drop
        self._pending_lock = threading.Lock()
        self._reserved: dict[int, tuple[str, float]] = {}  # id(socket) -> (host, accepted at)
        self._pending: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._opened_at: weakref.WeakKeyDictionary[Association, float] = weakref.WeakKeyDictionary()
        self._closed: weakref.WeakSet[Association] = weakref.WeakSet()  # connection closed
        super().__init__(*args, **kwargs)

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """accept(2) on the listening socket; on a shared one after the least busy receiver
        process had its turn (BlockingIOError, which socketserver ignores, when it took it)."""
        dispatch = self.dispatch
        if dispatch is None:
            return super().accept()
        assert self.socket is not None
        dispatch.wait_for_turn(self.socket, self.open_connections())
        accepted = self.socket.accept()
        dispatch.publish(self.open_connections() + 1)  # not yet verified nor adopted
        return accepted

    def open_connections(self) -> int:
        """Connections of this server not yet ended: accepted and not yet handed to an
        association, or handed to one whose thread has not ended."""
        with self._pending_lock:
            adopted = sum(1 for a in list(self._pending) if a.ident is None or a.is_alive())
            return len(self._reserved) + adopted

    def connections_on_node(self) -> int:
        """Open connections of the whole node: this server's, plus those the other receiver
        processes published (LeastBusyDispatch) when the listening socket is shared."""
        own = self.open_connections()
        dispatch = self.dispatch
        if dispatch is None:
            return own
        return own + dispatch.others()

    def service_actions(self) -> None:
        """Each turn of the accept loop: publish this process's open connections (and, with
        node counts, its associations and unassociated connections)."""
        super().service_actions()
        if self.dispatch is not None:
            self.dispatch.publish(self.open_connections())
        self.publish_counts()

    # --- counts of the whole node (several receiver processes) ------------------------------

    def _live(self, assoc: Association) -> bool:
        return (assoc.ident is None or assoc.is_alive()) and assoc not in self._closed

    def publish_counts(self) -> None:
        """Write this process's row of the node's counts: open connections, the calling AE of
        each association, the source address of each connection not yet associated."""
        counts = self.node_counts
        if counts is None:
            return
        # under the lock: a row written from an older look at this process (another thread's)
        # never overwrites a newer one, and no other process counts a row half written
        with counts.locked():
            with self._pending_lock:
                hosts = [h for h, _ in self._reserved.values()]
                ae_titles = []
                for assoc, host in list(self._pending.items()):
                    if not self._live(assoc):
                        continue
                    if assoc.requestor.primitive is None:
                        hosts.append(host)
                    elif associated(assoc):
                        ae_titles.append(calling_ae_of(assoc))
            counts.publish(self.counts_row, self.open_connections(), ae_titles, hosts)

    def _node_locked(self) -> Any:
        counts = self.node_counts
        return nullcontext() if counts is None else counts.locked()

    def associations_on_node(self, calling_ae: str) -> tuple[int, int] | None:
        """(associations of `calling_ae`, all associations) on the whole node, with the one
        the calling thread negotiates, published before the lock is let go so a request
        negotiated in another process at the same moment counts it; None without node counts
        (this process is the node's only receiver)."""
        counts = self.node_counts
        if counts is None:
            return None
        with counts.locked():
            self.publish_counts()
            return counts.associations_of(calling_ae), counts.total_associations()

    def _association_ended(self, _event: Any) -> None:
        self.publish_counts()

    def _connection_closed(self, event: Any) -> None:
        with self._pending_lock:
            self._closed.add(event.assoc)
        self.publish_counts()

    # --- pending connections per source address ---------------------------------------------

    def pending_from(self, host: str) -> int:
        """Connections from `host` accepted and not yet associated (nor ended), on the whole
        node when several receiver processes share the listening socket."""
        counts = self.node_counts
        if counts is None:
            with self._pending_lock:
                return self._pending_count(host)
        self.publish_counts()
        return counts.pending_from(host)

    def _pending_count(self, host: str) -> int:
        reserved = sum(1 for h, _ in self._reserved.values() if h == host)
        started = sum(
            1
            for assoc, h in list(self._pending.items())
            if h == host
            and assoc.requestor.primitive is None
            and (assoc.ident is None or assoc.is_alive())
        )
        return reserved + started

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """In the accept loop: admit the connection unless its address already has
        `max_pending_per_address` connections that have not associated."""
        host = peer_host(client_address)
        with self._node_locked():
            count = self.pending_from(host)
            if not self.max_pending_per_address or count < self.max_pending_per_address:
                with self._pending_lock:
                    self._reserved[id(request)] = (host, time.monotonic())
                self.publish_counts()
                return True
        self.dropped(
            client_address,
            "",
            f"connection refused: {count} connections from {host} not yet associated "
            "([node] max_pending_per_address)",
        )
        return False  # socketserver closes it

    def adopt(self, request: Any, assoc: Association) -> None:
        """The association made for an accepted connection: pending until its A-ASSOCIATE-RQ."""
        with self._pending_lock:
            host, accepted_at = self._reserved.pop(
                id(request), (assoc.requestor.address, time.monotonic())
            )
            self._pending[assoc] = host
            self._opened_at[assoc] = accepted_at
        if self.node_counts is not None:  # each end of it is published at once
            for event in (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_REJECTED):
                assoc.bind(event, self._association_ended)
            assoc.bind(evt.EVT_CONN_CLOSE, self._connection_closed)

    def accepted_at(self, request: Any) -> float | None:
        """time.monotonic() when the connection `request` (not yet adopted) was accepted."""
        with self._pending_lock:
            reserved = self._reserved.get(id(request))
            return None if reserved is None else reserved[1]

    def release(self, request: Any) -> None:
        """Forget a connection closed before an association was made for it."""
        with self._pending_lock:
            forgotten = self._reserved.pop(id(request), None)
        if forgotten is not None:
            self.publish_counts()

    def opened_at(self, assoc: Association) -> float | None:
        """time.monotonic() when `assoc`'s connection was accepted."""
        with self._pending_lock:
            return self._opened_at.get(assoc)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # a no-op once adopted
            self.release(request)

    def dropped(self, peer: Any, calling_ae: str, reason: str) -> None:
        """Log and report a connection the node cut (not one the peer closed)."""
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        log.warning(
            "connection dropped peer=%s calling_ae=%s reason=%s",
            address,
            escape_text(calling_ae, 16) or "-",
            reason,
        )
        if self.on_drop is not None:
            try:
                self.on_drop(address, calling_ae, reason)
            except Exception:
                log.exception("on_drop callback failed")


class LeastBusyDispatch:
    """Which receiver process accepts a new connection: the one with the fewest open
    associations. The processes share one listening socket and a table of their association
    counts (a multiprocessing.Array of int, one entry per process); one that is busier than the
    least busy waits up to `max_wait_s` per association of difference for it to accept, then
    accepts itself (the other may be stuck). The kernel's own spreading (SO_REUSEPORT hashes
    addresses) put four connections 3-1 on two processes half of the time."""

    POLL_SECONDS = 0.001

    def __init__(self, counts: Any, index: int, max_wait_s: float = 0.05) -> None:
        self.counts = counts
        self.index = index
        self.max_wait_s = max_wait_s

    def publish(self, open_associations: int) -> None:
        self.counts[self.index] = open_associations

    def others(self) -> int:
        """Open associations the other receiver processes published."""
        counts = list(self.counts)
        return sum(counts) - counts[self.index]

    def wait_for_turn(self, listener: socket.socket, open_associations: int) -> None:
        """Return when this process should try accept(2): it is among the least busy, the
        connection was taken by another process, or it waited long enough."""
        self.publish(open_associations)
        started = time.monotonic()
        while True:
            counts = list(self.counts)
            behind = counts[self.index] - min(counts)
            if behind <= 0 or time.monotonic() - started >= self.max_wait_s * behind:
                return
            time.sleep(self.POLL_SECONDS)
            readable, _, _ = select.select([listener], [], [], 0)
            if not readable:  # another process accepted it
                return


def share_listener(listener: socket.socket, counts: NodeCounts, row: int) -> None:
    """Receive on `listener` (bound and listening, made by the serve process and shared by
    every receiver process) with least-busy dispatch and the limits counted on the whole node
    in `counts` (this process writes row `row`); set in each receiver process before it starts
    its SCP."""
    GuardedServer.shared_listener = listener
    GuardedServer.dispatch = LeastBusyDispatch(counts.connections, row)
    GuardedServer.node_counts = counts
    GuardedServer.counts_row = row


def make_listener(host: str, port: int) -> socket.socket:
    """The SCP's listening socket, bound and listening, for receiver processes to share;
    raises OSError when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        raise OSError(
            exc.errno,
            f"cannot listen on {host}:{port} ([node] host and port): {exc.strerror}; stop the "
            "process that holds the port or choose another",
        ) from exc
    return listener


def pending_counts(server: GuardedServer) -> Counter[str]:
    """Pending connections per host (for tests and the status page)."""
    with server._pending_lock:
        hosts = {h for h, _ in server._reserved.values()} | set(server._pending.values())
        return Counter({h: server._pending_count(h) for h in hosts})
