"""The pynetdicom internals the node relies on outside scp_node.dicom.pynetdicom_adapter are
still there, in the same shape: `ApplicationEntity.require_calling_aet`,
`active_associations` and `maximum_associations` as properties that ACSE reads through the AE
in the acceptor's own thread (scp_node.receive.receiver._NodeAE overrides them), and the
A-ASSOCIATE primitive's attributes read for logs and audit (receiver, sender, audit).

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.ae import ApplicationEntity
from pynetdicom.pdu_primitives import A_ASSOCIATE

from scp_node.dicom.tls import start_server
from scp_node.receive.receiver import _NodeAE


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_require_calling_aet_is_a_property_read_through_the_ae() -> None:
    prop = ApplicationEntity.__dict__.get("require_calling_aet")
    assert isinstance(prop, property) and prop.fget and prop.fset, (
        "ApplicationEntity.require_calling_aet is no longer a property with a setter "
        "(scp_node.receive.receiver._NodeAE overrides it)"
    )


@pytest.mark.parametrize(
    "attribute",
    ["result", "result_source", "diagnostic", "result_str", "source_str", "reason_str"]
    + ["called_ae_title"],
)
def test_a_associate_attributes(attribute: str) -> None:
    assert hasattr(A_ASSOCIATE, attribute), f"A_ASSOCIATE.{attribute} is gone"


def test_node_ae_with_empty_allow_list_rejects_every_caller() -> None:
    scp = _NodeAE(ae_title="SCP")
    scp.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    scp.require_calling_aet = []
    scp.admits_nobody = True
    assert scp.require_calling_aet == [""]
    server = start_server(scp, ("127.0.0.1", 0), [], None, 5.0)
    try:
        scu = AE(ae_title="ANYONE")
        scu.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_rejected, (
            "ACSE no longer reads ae.require_calling_aet through the AE "
            "(scp_node.receive.receiver._NodeAE's property is bypassed)"
        )
    finally:
        server.shutdown()


def test_acse_reads_the_limits_through_the_ae_in_the_acceptor_thread() -> None:
    """scp_node.receive.receiver._NodeAE overrides active_associations and
    maximum_associations (and require_calling_aet) for the limit check of
    ACSE._negotiate_as_acceptor, which runs in the association's own thread; its
    maximum_associations reads the association's `_server`, set by the request handler
    (scp_node.dicom.pynetdicom_adapter.server.acceptor_server)."""
    from pynetdicom.transport import RequestHandler

    names = _names(ACSE._negotiate_as_acceptor)
    assert {"active_associations", "maximum_associations", "require_calling_aet"} <= names
    for name in ("active_associations", "maximum_associations"):
        prop = ApplicationEntity.__dict__.get(name)
        assert isinstance(prop, property) and prop.fget, f"ApplicationEntity.{name} not a property"
    assert ApplicationEntity.__dict__["maximum_associations"].fset
    assert "_server" in _names(RequestHandler._create_association)
