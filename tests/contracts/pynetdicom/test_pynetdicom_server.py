"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.server relies on are still there,
in the same shape: `AssociationServer(request_handler=...)` and `RequestHandler.handle`
(mirrored by the adapter's request handler), `make_server(server_class=..., **kwargs)`,
`AssociationServer.get_request` as the place where TLS sockets are wrapped (replaced by the
adapter's and by scp_node.dicom.tls.HandshakeInThreadServer), and `ApplicationEntity._servers`,
where `start_in_thread` registers its server so that `server.shutdown()` and `ae.shutdown()`
work.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.transport import AssociationServer, RequestHandler, ThreadedAssociationServer

from scp_node.dicom.pynetdicom_adapter.server import acceptor_server
from scp_node.dicom.tls import start_server

VERIFICATION = "1.2.840.10008.1.1"


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_servers_registry_and_server_shutdown() -> None:
    assert isinstance(AE()._servers, list), "ApplicationEntity._servers is no longer a list"
    assert "_servers" in _names(ThreadedAssociationServer.shutdown), (
        "AssociationServer.shutdown no longer removes itself from ae._servers "
        "(scp_node.dicom.pynetdicom_adapter.server.start_in_thread registers there)"
    )
    assert "_servers" in _names(ApplicationEntity.shutdown), (
        "ApplicationEntity.shutdown no longer stops the servers in ae._servers"
    )
    assert "server_class" not in inspect.signature(ApplicationEntity.start_server).parameters, (
        "ApplicationEntity.start_server now takes server_class: use it instead of "
        "start_in_thread's registration in ae._servers"
    )


def test_a_started_server_is_registered_knows_its_associations_and_shuts_down() -> None:
    scp = AE(ae_title="SCP")
    scp.add_supported_context(VERIFICATION, ImplicitVRLittleEndian)
    servers: list[Any] = []

    def on_echo(event: Any) -> int:
        servers.append(acceptor_server(event.assoc))
        return 0x0000

    server = start_server(scp, ("127.0.0.1", 0), [(evt.EVT_C_ECHO, on_echo)], None, 5.0)
    try:
        assert server in scp._servers
        scu = AE(ae_title="SCU")
        scu.add_requested_context(VERIFICATION, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert acceptor_server(assoc) is None  # requested, not accepted
        assoc.release()
    finally:
        server.shutdown()  # raises ValueError when the server is not in scp._servers
    assert scp._servers == []
    assert servers == [server], "Association._server is no longer the server that accepted it"


def test_tls_wrapping_happens_in_get_request_and_make_server_passes_kwargs() -> None:
    assert "wrap_socket" in _names(AssociationServer.get_request), (
        "AssociationServer.get_request no longer wraps TLS sockets "
        "(the adapter's AcceptorServer and scp_node.dicom.tls.HandshakeInThreadServer "
        "replace it)"
    )
    parameters = inspect.signature(ApplicationEntity.make_server).parameters
    assert "server_class" in parameters and "kwargs" in parameters, (
        "ApplicationEntity.make_server no longer takes server_class and **kwargs"
    )


def test_request_handler_creates_the_association_and_server_accepts_request_handler() -> None:
    """scp_node.dicom.pynetdicom_adapter.server's request handler mirrors
    RequestHandler.handle."""
    assert {"_create_association", "start", "trigger"} <= _names(RequestHandler.handle)
    assert "request_handler" in inspect.signature(AssociationServer.__init__).parameters
    assert "request_queue_size" in dir(ThreadedAssociationServer)
