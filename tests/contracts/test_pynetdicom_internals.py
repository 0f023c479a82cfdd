"""The private pynetdicom internals the node patches or reads are still there, in the same shape.

pyproject pins pynetdicom to the 3.0 series; before widening the pin, run this file against the
new release. Each failure names the internal and the node module that depends on it:

- `pynetdicom._config` flags (scp_node.dicom.pynetdicom_adapter; tests use
  STORE_SEND_CHUNKED_DATASET)
- `pynetdicom.dimse_messages.NamedTemporaryFile`, looked up when a C-STORE-RQ dataset starts
  streaming, in the association's DUL thread (`DULServiceProvider.assoc.ae`), replaced by
  scp_node.dicom.pynetdicom_adapter to stream into the store's incoming folder
- `C_STORE._dataset_file`, the streamed file object on the request (dicom_settings
  `disk_full_while_streaming`), and the `.file.flush()` pynetdicom calls on it
- `ApplicationEntity._servers`, where scp_node.dicom.tls.start_server registers its server so
  that `server.shutdown()` and `ae.shutdown()` work
- `ApplicationEntity.require_calling_aet` as a property that ACSE reads through the AE
  (scp_node.receive.receiver._NodeAE overrides it so that an empty allow-list admits nobody)
- `AssociationServer.get_request` as the place where TLS sockets are wrapped, and
  `make_server(server_class=..., **kwargs)` (scp_node.dicom.tls servers)
- the A-ASSOCIATE primitive's attributes read for logs and audit (receiver, sender, audit)
- `DULServiceProvider._read_pdu_data` (replaced by scp_node.dicom.connections), its queues and
  `_decode_pdu`; `Association.run_reactor` ending when its A-ASSOCIATE-RQ wait returns None
- `ACSE._negotiate_as_acceptor` reading `active_associations`, `maximum_associations` and
  `require_calling_aet` through the AE (scp_node.receive.receiver._NodeAE)
- `RequestHandler.handle` and `AssociationServer(request_handler=...)`
  (scp_node.dicom.connections._GuardedRequestHandler)
- the reactor wake-ups (scp_node.dicom.pynetdicom_adapter): `pynetdicom.dul.time` and
  `pynetdicom.association.time` as the modules' `time`, whose `sleep(_run_loop_delay)` and
  `sleep(0.001)` are the idle sleeps of `DULServiceProvider.run_reactor` and
  `Association._run_reactor`; `DIMSEServiceProvider.msg_queue` (a queue.Queue) and
  `DULServiceProvider.send_pdu`
- `DIMSEMessage.decode_msg`, wrapped by scp_node.dicom.pynetdicom_adapter to start the data sync of
  a completed streamed dataset, as called by `DIMSEServiceProvider.receive_primitive`
- the direct encoders (scp_node.dicom.pynetdicom_adapter): `dimse_messages.create_file_meta` and
  `write_file_meta_info` as looked up by `DIMSEMessage.decode_msg`;
  `DIMSEServiceProvider.send_msg(primitive, context_id)`; `_config.LOG_HANDLER_LEVEL`
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationServer, ThreadedAssociationServer

from scp_node.dicom import pynetdicom_adapter as dicom_settings
from scp_node.dicom.instance_header import read_header
from scp_node.dicom.pynetdicom_adapter import (
    StreamedFile,
    configure_pynetdicom,
    data_sync_while_streaming,
    header_while_streaming,
    route_incoming,
)
from scp_node.dicom.tls import start_server
from scp_node.receive.receiver import _NodeAE
from storage.data_sync import DataSync

CONFIG_FLAGS = (
    "LOG_REQUEST_IDENTIFIERS",
    "LOG_RESPONSE_IDENTIFIERS",
    "STORE_RECV_CHUNKED_DATASET",
    "UNRESTRICTED_STORAGE_SERVICE",
    "ENFORCE_UID_CONFORMANCE",
    "STORE_SEND_CHUNKED_DATASET",  # tests/conftest.py (chunked_send)
)


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


@pytest.mark.parametrize("flag", CONFIG_FLAGS)
def test_config_flag_exists(flag: str) -> None:
    assert isinstance(getattr(_config, flag, None), bool), (
        f"pynetdicom._config.{flag} is gone or no longer a bool "
        "(scp_node.dicom.pynetdicom_adapter sets it)"
    )


def test_streamed_dataset_file_is_created_through_dimse_messages_named_temporary_file() -> None:
    assert hasattr(dimse_messages, "NamedTemporaryFile"), (
        "pynetdicom.dimse_messages.NamedTemporaryFile is gone "
        "(scp_node.dicom.pynetdicom_adapter replaces it)"
    )
    configure_pynetdicom()
    assert DIMSEMessage.decode_msg is dicom_settings._decode_msg_then_sync
    assert "decode_msg" in _names(DIMSEServiceProvider.receive_primitive), (
        "DIMSEServiceProvider.receive_primitive no longer calls message.decode_msg "
        "(dicom_settings wraps it to start the data sync of a completed dataset)"
    )
    decode = _names(dicom_settings._original_decode_msg)
    assert "NamedTemporaryFile" in decode, (
        "DIMSEMessage.decode_msg no longer calls dimse_messages.NamedTemporaryFile"
    )
    assert {"_data_set_file", "file", "flush"} <= decode, (
        "DIMSEMessage.decode_msg no longer writes through _data_set_file.file.flush() "
        "(scp_node.dicom.pynetdicom_adapter.StreamedFile provides .file)"
    )
    assert "_dataset_file" in _names(DIMSEMessage.message_to_primitive), (
        "DIMSEMessage.message_to_primitive no longer sets the primitive's _dataset_file"
    )
    assert hasattr(C_STORE(), "_dataset_file"), "C_STORE._dataset_file is gone"
    assert issubclass(DULServiceProvider, threading.Thread) and hasattr(
        DULServiceProvider, "assoc"
    ), "DULServiceProvider is no longer the association's thread with .assoc"


def test_servers_registry_and_server_shutdown() -> None:
    assert isinstance(AE()._servers, list), "ApplicationEntity._servers is no longer a list"
    assert "_servers" in _names(ThreadedAssociationServer.shutdown), (
        "AssociationServer.shutdown no longer removes itself from ae._servers "
        "(scp_node.dicom.tls.start_server registers there)"
    )
    assert "_servers" in _names(ApplicationEntity.shutdown), (
        "ApplicationEntity.shutdown no longer stops the servers in ae._servers"
    )


def test_require_calling_aet_is_a_property_read_through_the_ae() -> None:
    prop = ApplicationEntity.__dict__.get("require_calling_aet")
    assert isinstance(prop, property) and prop.fget and prop.fset, (
        "ApplicationEntity.require_calling_aet is no longer a property with a setter "
        "(scp_node.receive.receiver._NodeAE overrides it)"
    )


def test_tls_wrapping_happens_in_get_request_and_make_server_passes_kwargs() -> None:
    assert "wrap_socket" in _names(AssociationServer.get_request), (
        "AssociationServer.get_request no longer wraps TLS sockets "
        "(scp_node.dicom.tls.HandshakeInThreadServer replaces it to move the handshake)"
    )
    import inspect

    parameters = inspect.signature(ApplicationEntity.make_server).parameters
    assert "server_class" in parameters and "kwargs" in parameters, (
        "ApplicationEntity.make_server no longer takes server_class and **kwargs"
    )


@pytest.mark.parametrize(
    "attribute",
    ["result", "result_source", "diagnostic", "result_str", "source_str", "reason_str"]
    + ["called_ae_title"],
)
def test_a_associate_attributes(attribute: str) -> None:
    assert hasattr(A_ASSOCIATE, attribute), f"A_ASSOCIATE.{attribute} is gone"


def _ct() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(8)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def test_c_store_streams_into_the_routed_folder_and_servers_shut_down(tmp_path: Path) -> None:
    """The hooks working together, over a real association on loopback."""
    configure_pynetdicom()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    scp = AE(ae_title="SCP")
    scp.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    route_incoming(scp, incoming)
    seen: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        seen["path"] = Path(event.dataset_path)
        seen["file"] = getattr(event.request, "_dataset_file", None)
        seen["header"] = header_while_streaming(event.request)
        seen["header from the file"] = read_header(seen["path"])
        seen["sync"] = data_sync_while_streaming(event.request)
        return 0x0000

    server = start_server(scp, ("127.0.0.1", 0), [(evt.EVT_C_STORE, on_store)], None, 5.0)
    try:
        assert server in scp._servers
        scu = AE(ae_title="SCU")
        scu.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        status = assoc.send_c_store(_ct())
        assoc.release()
        assert status.Status == 0x0000
    finally:
        server.shutdown()  # raises ValueError when the server is not in scp._servers
    assert scp._servers == []
    assert seen["path"].parent == incoming, (
        "the streamed C-STORE file was not created through dimse_messages.NamedTemporaryFile "
        "in the DUL thread of the association (DULServiceProvider.assoc.ae)"
    )
    assert isinstance(seen["file"], StreamedFile), (
        "C_STORE._dataset_file is not the file object dimse_messages.NamedTemporaryFile returned"
    )
    # read from the first bytes while streaming, the same as from the file afterwards
    assert seen["header"] is not None and seen["header"] == seen["header from the file"]
    assert isinstance(seen["sync"], DataSync), "no data sync started as the dataset completed"
    seen["sync"].wait()


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


def test_dul_reads_pdus_through_read_pdu_data_and_the_acceptor_waits_on_its_queue() -> None:
    """scp_node.dicom.connections replaces DULServiceProvider._read_pdu_data (called by
    _is_transport_event; it puts events on event_queue and PDUs on _recv_pdu, decodes with
    _decode_pdu) and wakes an acceptor waiting for its A-ASSOCIATE-RQ with a None on
    to_user_queue (Association.run_reactor then ends the association)."""
    from pynetdicom.association import Association

    from scp_node.dicom import connections

    configure_pynetdicom()
    assert DULServiceProvider._read_pdu_data is connections.guarded_read_pdu_data
    assert "_read_pdu_data" in _names(DULServiceProvider._is_transport_event)
    original = _names(connections._original_read_pdu_data)
    assert {"_decode_pdu", "event_queue", "_recv_pdu"} <= original, (
        "pynetdicom's _read_pdu_data no longer decodes with _decode_pdu onto event_queue and "
        "_recv_pdu (scp_node.dicom.connections.guarded_read_pdu_data mirrors it)"
    )
    assert "to_user_queue" in _names(DULServiceProvider.receive_pdu)
    assert {"receive_pdu", "kill", "_server"} <= _names(Association.run_reactor)


def test_acse_reads_the_limits_through_the_ae_in_the_acceptor_thread() -> None:
    """scp_node.receive.receiver._NodeAE overrides active_associations and maximum_associations (and
    require_calling_aet) for the limit check of ACSE._negotiate_as_acceptor, which runs in the
    association's own thread."""
    from pynetdicom.acse import ACSE

    names = _names(ACSE._negotiate_as_acceptor)
    assert {"active_associations", "maximum_associations", "require_calling_aet"} <= names
    for name in ("active_associations", "maximum_associations"):
        prop = ApplicationEntity.__dict__.get(name)
        assert isinstance(prop, property) and prop.fget, f"ApplicationEntity.{name} not a property"
    assert ApplicationEntity.__dict__["maximum_associations"].fset


def test_request_handler_creates_the_association_and_server_accepts_request_handler() -> None:
    """scp_node.dicom.connections._GuardedRequestHandler.handle mirrors RequestHandler.handle."""
    import inspect

    from pynetdicom.transport import RequestHandler

    assert {"_create_association", "start", "trigger"} <= _names(RequestHandler.handle)
    assert "request_handler" in inspect.signature(AssociationServer.__init__).parameters
    assert "request_queue_size" in dir(ThreadedAssociationServer)


def test_idle_sleeps_are_the_module_time_sleeps_the_wakeups_replace() -> None:
    import inspect

    from pynetdicom import association, dimse, dul
    from pynetdicom.association import Association

    from scp_node.dicom import pynetdicom_adapter as dicom_settings

    configure_pynetdicom()
    dul_source = inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in dul_source, (
        "DULServiceProvider.run_reactor no longer idles with time.sleep(self._run_loop_delay)"
    )
    assert DULServiceProvider(Association(AE(), "acceptor"))._run_loop_delay == 0.001
    reactor_source = inspect.getsource(Association._run_reactor)
    assert f"time.sleep({dicom_settings._REACTOR_SLEEP})" in reactor_source, (
        "Association._run_reactor no longer idles with time.sleep(0.001)"
    )
    assert dul.time.sleep is dicom_settings._sleep  # type: ignore[attr-defined]
    assert association.time.sleep is dicom_settings._sleep  # type: ignore[attr-defined]
    assert dul.time.monotonic is __import__("time").monotonic  # type: ignore[attr-defined]
    provider = dimse.DIMSEServiceProvider(Association(AE(), "acceptor"))
    assert hasattr(provider.msg_queue, "not_empty") and hasattr(provider.msg_queue, "_qsize")
    assert "to_provider_queue" in _names(dicom_settings._original_send_pdu)


def test_reactor_idle_sleep_ends_when_a_message_is_queued() -> None:
    import queue
    import time

    from scp_node.dicom.pynetdicom_adapter import _reactor_idle

    messages: queue.Queue[int] = queue.Queue()
    threading.Timer(0.05, messages.put, args=(1,)).start()
    started = time.monotonic()
    _reactor_idle(messages, 5.0)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    _reactor_idle(messages, 5.0)  # a message is waiting: no wait at all
    assert time.monotonic() - started < 0.05


def test_file_meta_and_decode_msg_lookups() -> None:
    configure_pynetdicom()
    assert {"create_file_meta", "write_file_meta_info"} <= _names(
        dicom_settings._original_decode_msg
    ), (
        "DIMSEMessage.decode_msg no longer writes the File Meta through dimse_messages' "
        "create_file_meta and write_file_meta_info "
        "(scp_node.dicom.pynetdicom_adapter replaces them)"
    )
    assert _config.LOG_HANDLER_LEVEL == "none"


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
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID
    from pynetdicom.dsutils import create_file_meta

    from scp_node.dicom.pynetdicom_adapter import _create_file_meta, encode_file_meta

    expected = DicomBytesIO()
    write_file_meta_info(
        expected,
        create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(sop_instance),
            transfer_syntax=UID(syntax),
        ),
    )
    ours = _create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=syntax
    )
    assert encode_file_meta(ours) == expected.getvalue()
    odd = _create_file_meta(
        sop_class_uid=sop_class, sop_instance_uid="1.2.\u00e9", transfer_syntax=syntax
    )
    assert encode_file_meta(odd) is None  # not plain: pydicom writes it


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC210, 0x0110])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1"])
def test_direct_store_response_is_what_pynetdicom_encodes(status: int, sop_instance: str) -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dsutils import encode

    from scp_node.dicom.pynetdicom_adapter import encode_store_response

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    assert encode_store_response(rsp) == encode(message.command_set, True, True)
    rsp.ErrorComment = "why"
    assert encode_store_response(rsp) is None  # pynetdicom encodes anything else


def test_send_msg_is_the_dimse_providers_way_to_send() -> None:
    import inspect

    from pynetdicom import dimse

    from scp_node.dicom import pynetdicom_adapter as dicom_settings

    configure_pynetdicom()
    assert list(inspect.signature(dicom_settings._original_send_msg).parameters) == [
        "self",
        "primitive",
        "context_id",
    ]
    assert dimse.DIMSEServiceProvider.send_msg is dicom_settings._send_msg
    assert {"send_pdu", "encode_msg", "EVT_DIMSE_SENT"} <= _names(dicom_settings._original_send_msg)
