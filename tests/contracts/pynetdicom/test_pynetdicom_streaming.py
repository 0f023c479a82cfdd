"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.streaming relies on are still there,
in the same shape: `dimse_messages.NamedTemporaryFile`, looked up when a C-STORE-RQ dataset
starts streaming, in the association's DUL thread (`DULServiceProvider.assoc.ae`);
`DIMSEMessage.decode_msg` writing through `_data_set_file.file.flush()` and called by
`DIMSEServiceProvider.receive_primitive`; `C_STORE._dataset_file`, the streamed file object on
the request, read by `parked_stream`.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import io
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, dimse_messages, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.instance_header import read_header
from scp_node.dicom.pynetdicom_adapter import streaming
from scp_node.dicom.pynetdicom_adapter.streaming import (
    ParkedStream,
    StreamedFile,
    parked_stream,
    route_incoming,
)
from scp_node.dicom.tls import start_server
from storage.data_sync import DataSync


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_streamed_dataset_file_is_created_through_dimse_messages_named_temporary_file() -> None:
    assert hasattr(dimse_messages, "NamedTemporaryFile"), (
        "pynetdicom.dimse_messages.NamedTemporaryFile is gone "
        "(scp_node.dicom.pynetdicom_adapter.streaming replaces it)"
    )
    pynetdicom_adapter.install()
    assert dimse_messages.NamedTemporaryFile is streaming._incoming_temp_file
    assert DIMSEMessage.decode_msg is streaming._decode_msg_then_sync
    assert DIMSEServiceProvider.receive_primitive is streaming._receive_primitive_then_sync
    receive = _names(streaming._original_receive_primitive)
    assert "decode_msg" in receive, (
        "DIMSEServiceProvider.receive_primitive no longer calls message.decode_msg "
        "(streaming wraps it to open the data sync of a completed dataset)"
    )
    assert {"msg_queue", "put"} <= receive, (
        "DIMSEServiceProvider.receive_primitive no longer queues the completed request on "
        "msg_queue itself (streaming runs the data sync once it returns, assuming the handler "
        "has its request by then)"
    )
    decode = _names(streaming._original_decode_msg)
    assert "NamedTemporaryFile" in decode, (
        "DIMSEMessage.decode_msg no longer calls dimse_messages.NamedTemporaryFile"
    )
    assert {"_data_set_file", "file", "flush"} <= decode, (
        "DIMSEMessage.decode_msg no longer writes through _data_set_file.file.flush() "
        "(scp_node.dicom.pynetdicom_adapter.streaming.StreamedFile provides .file)"
    )
    assert "_dataset_file" in _names(DIMSEMessage.message_to_primitive), (
        "DIMSEMessage.message_to_primitive no longer sets the primitive's _dataset_file"
    )
    assert hasattr(C_STORE(), "_dataset_file"), "C_STORE._dataset_file is gone"
    assert issubclass(DULServiceProvider, threading.Thread) and hasattr(
        DULServiceProvider, "assoc"
    ), "DULServiceProvider is no longer the association's thread with .assoc"


def test_a_request_without_a_streamed_file_has_nothing_parked() -> None:
    assert parked_stream(C_STORE()) == ParkedStream()


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


def test_c_store_streams_into_the_routed_folder_and_parks_what_it_read(tmp_path: Path) -> None:
    """The hooks working together, over a real association on loopback."""
    pynetdicom_adapter.install()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    scp = AE(ae_title="SCP")
    scp.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    route_incoming(scp, incoming)
    seen: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        seen["path"] = Path(event.dataset_path)
        seen["file"] = getattr(event.request, "_dataset_file", None)
        seen["parked"] = parked_stream(event.request)
        seen["header from the file"] = read_header(seen["path"])
        return 0x0000

    server = start_server(scp, ("127.0.0.1", 0), [(evt.EVT_C_STORE, on_store)], None, 5.0)
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="SCP")
        assert assoc.is_established
        status = assoc.send_c_store(_ct())
        assoc.release()
        assert status.Status == 0x0000
    finally:
        server.shutdown()
    assert seen["path"].parent == incoming, (
        "the streamed C-STORE file was not created through dimse_messages.NamedTemporaryFile "
        "in the DUL thread of the association (DULServiceProvider.assoc.ae)"
    )
    assert isinstance(seen["file"], StreamedFile), (
        "C_STORE._dataset_file is not the file object dimse_messages.NamedTemporaryFile returned"
    )
    parked = seen["parked"]
    # read from the first bytes while streaming, the same as from the file afterwards
    assert parked.header is not None and parked.header == seen["header from the file"]
    assert isinstance(parked.data_sync, DataSync), "no data sync opened as the dataset completed"
    # the handler never waited for it: the DUL thread ran it after queueing the request, and
    # before it sent the response (the same thread sends)
    assert parked.data_sync.finished, "the DUL thread did not run the data sync"
    assert parked.disk_full is None and parked.refused is None
    parked.data_sync.wait()


def test_a_streamed_file_writes_through_the_temporary_file_object_itself(tmp_path: Path) -> None:
    """NamedTemporaryFile's wrapper keeps the file object as `.file` (StreamedFile writes and
    flushes it directly) and its `.name` is that file's."""
    inner = tempfile.NamedTemporaryFile(delete=False, mode="wb", dir=tmp_path, suffix=".dcm")
    assert isinstance(inner.file, io.BufferedWriter)
    streamed = streaming.StreamedFile(inner)
    fragments = [b"\x00" * 128 + b"DICM", memoryview(b"abc" * 50000)[1:]]
    for fragment in fragments:
        assert streamed.write(fragment) == len(fragment)
        streamed.file.flush()
    streamed.close()
    assert Path(streamed.name).read_bytes() == b"".join(bytes(f) for f in fragments)
