"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.encoders relies on are still there,
in the same shape, and its encodings are byte for byte pydicom's and pynetdicom's:
`dimse_messages.create_file_meta` and `write_file_meta_info` as looked up by
`DIMSEMessage.decode_msg`; `DIMSEServiceProvider.send_msg(primitive, context_id)`.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ImplicitVRLittleEndian, generate_uid
from pynetdicom import dimse
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter import encoders, streaming


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_file_meta_is_written_through_dimse_messages_lookups() -> None:
    pynetdicom_adapter.install()
    assert {"create_file_meta", "write_file_meta_info"} <= _names(streaming._original_decode_msg), (
        "DIMSEMessage.decode_msg no longer writes the File Meta through dimse_messages' "
        "create_file_meta and write_file_meta_info "
        "(scp_node.dicom.pynetdicom_adapter.encoders replaces them)"
    )


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        (CTImageStorage, "1.2.3.4", ImplicitVRLittleEndian),
        (CTImageStorage, "1.2.3.45", "1.2.840.10008.1.2.4.90"),
        ("1.2.840.10008.5.1.4.1.1.128", generate_uid(), "1.2.840.10008.1.2.1"),
    ],
)
def test_direct_file_meta_is_what_pydicom_writes(
    sop_class: str, sop_instance: str, syntax: str
) -> None:
    expected = DicomBytesIO()
    write_file_meta_info(
        expected,
        create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(sop_instance),
            transfer_syntax=UID(syntax),
        ),
    )
    ours = encoders._create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=syntax
    )
    assert encoders.encode_file_meta(ours) == expected.getvalue()
    odd = encoders._create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid="1.2.\u00e9", transfer_syntax=syntax
    )
    assert encoders.encode_file_meta(odd) is None  # not plain: pydicom writes it


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC210, 0x0110])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1"])
def test_direct_store_response_is_what_pynetdicom_encodes(status: int, sop_instance: str) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encoders.encode_store_response(rsp) == encode(message.command_set, True, True)
    rsp.ErrorComment = "why"
    assert encoders.encode_store_response(rsp) is None  # pynetdicom encodes anything else


def test_send_msg_is_the_dimse_providers_way_to_send() -> None:
    pynetdicom_adapter.install()
    assert list(inspect.signature(encoders._original_send_msg).parameters) == [
        "self",
        "primitive",
        "context_id",
    ]
    assert dimse.DIMSEServiceProvider.send_msg is encoders._send_msg
    assert {"send_pdu", "encode_msg", "EVT_DIMSE_SENT"} <= _names(encoders._original_send_msg)
