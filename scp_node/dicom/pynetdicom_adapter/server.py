"""pynetdicom's threaded association server as the node's SCP servers use it.

Uses the seams pynetdicom offers for servers: `AssociationServer(request_handler=...)` (each
new association is handed to the server's `adopt` and its PDUs guarded, see pdu_guard, before
it starts) and `ApplicationEntity.make_server(server_class=..., **kwargs)` (`start_in_thread`).

Overrides `AssociationServer.get_request` (pynetdicom's accepts and wraps TLS; here the accepted
socket's reads time out after the AE's network timeout, and accepting is the subclass's
`accept`) and `server_bind`/`server_activate` (to serve a listening socket made by another
process). `start_in_thread` mirrors `ApplicationEntity.start_server(block=False)`, which takes
no `server_class`: it registers the server in the private `ae._servers`, from which
pynetdicom's `server.shutdown()` and `ae.shutdown()` remove and stop it. `RequestHandler.handle`
is mirrored (it calls the private `_create_association`). `acceptor_server` reads the private
`Association._server`.
"""

from __future__ import annotations

import functools
import socket
import threading
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, TypeVar, cast

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from scp_node.dicom.pynetdicom_adapter import pdu_guard
from scp_node.dicom.pynetdicom_adapter.no_delay import no_delay


class _AdoptingRequestHandler(RequestHandler):
    """pynetdicom's handler, which also hands the new association to its server (to count it
    as a pending connection of its source address) and guards its PDUs, before it starts."""

    def handle(self) -> None:
        assoc = self._create_association()
        server = cast(AcceptorServer, self.server)
        server.adopt(self.request, assoc)
        pdu_guard.guard(assoc.dul, server)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class AcceptorServer(ThreadedAssociationServer, ABC):
    """pynetdicom's threaded server whose associations are adopted and PDU-guarded, whose
    accepted sockets time out their reads after the AE's network timeout (so a peer stuck
    mid-PDU outside the guarded reader is cut too), and which serves `shared_listener` (a
    socket bound and listening already) when one is set."""

    shared_listener: socket.socket | None = None
    max_pdu_length = 0  # bytes a PDU may announce (pdu_guard); 0: no limit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", _AdoptingRequestHandler)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        shared = self.shared_listener
        if shared is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()  # socketserver made one; the shared one is bound and listening
        self.socket = shared
        # non-blocking: another process may take a connection between select() and accept()
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_listener is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client_socket, address = self.accept()
        client_socket.settimeout(self.ae.network_timeout)
        no_delay(client_socket)
        return client_socket, address

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """accept(2) on the listening socket."""
        assert self.socket is not None
        return self.socket.accept()

    @abstractmethod
    def adopt(self, request: Any, assoc: Association) -> None:
        """The association made for the accepted connection `request`, before it starts."""

    @abstractmethod
    def opened_at(self, assoc: Association) -> float | None:
        """time.monotonic() when `assoc`'s connection was accepted."""

    @abstractmethod
    def dropped(self, peer: Any, calling_ae: str, reason: str) -> None:
        """Log and report a connection the node cut (not one the peer closed)."""


def acceptor_server(assoc: Association) -> AcceptorServer | None:
    """The node's server that accepted `assoc` (pynetdicom's private `Association._server`,
    set by the request handler); None for an association the node requested or another
    server's."""
    server = getattr(assoc, "_server", None)
    return server if isinstance(server, AcceptorServer) else None


_Server = TypeVar("_Server", bound=ThreadedAssociationServer)
# How often the accept loop looks for shutdown(): socketserver's default 0.5 s made every stop of
# an SCP wait half a second; an idle loop waking 20 times a second costs nothing measurable.
SHUTDOWN_POLL_SECONDS = 0.05


def start_in_thread(
    ae: ApplicationEntity,
    address: tuple[str, int],
    server_class: type[_Server],
    evt_handlers: list[EventHandlerType],
    **kwargs: Any,
) -> _Server:
    """Start `ae`'s SCP on `address` as a `server_class` (given `kwargs`) in a daemon thread,
    as `ae.start_server(block=False)` would, and register it so that `server.shutdown()` and
    `ae.shutdown()` stop it."""
    made = ae.make_server(address, evt_handlers=evt_handlers, server_class=server_class, **kwargs)
    server = cast(_Server, made)
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(
        target=make_target(functools.partial(server.serve_forever, SHUTDOWN_POLL_SECONDS)),
        name=f"AcceptorServer@{timestamp}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)
    return server
