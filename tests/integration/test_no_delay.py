"""Nagle's algorithm is off on the node's DICOM connections, accepted and requested
(scp_node.dicom.pynetdicom_adapter.no_delay): with it on, pynetdicom's small datasets wait about
40 ms each for the peer's delayed ACK."""

from __future__ import annotations

import socket

from in_process import RunningNode
from pynetdicom import AE
from pynetdicom.association import Association

from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY

VERIFICATION = "1.2.840.10008.1.1"


def _nodelay(assoc: Association) -> int:
    return int(assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def _associate(node: RunningNode, **kwargs: object) -> Association:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title, **kwargs)
    assert assoc.is_established
    return assoc


def test_the_connections_the_node_accepts_send_at_once(receiver_node: RunningNode) -> None:
    assoc = _associate(receiver_node)
    try:
        assert _nodelay(assoc) == 0  # pynetdicom's own default, on the requesting side
        server = receiver_node.receiver._server
        assert server is not None
        (accepted,) = [a for a in server.active_associations if a.is_acceptor]
        assert _nodelay(accepted) != 0
    finally:
        assoc.release()


def test_the_handler_turns_nagle_off_on_an_association_the_node_requests(
    receiver_node: RunningNode,
) -> None:
    assoc = _associate(receiver_node, evt_handlers=[NO_DELAY])
    try:
        assert _nodelay(assoc) != 0
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
