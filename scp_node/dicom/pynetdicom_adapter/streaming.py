"""C-STORE datasets streamed by pynetdicom into the store's `.incoming` folder, with their limits,
their header read as they arrive and their data sync started as they end.

Touches, in `pynetdicom.dimse_messages`: the module global `NamedTemporaryFile` (replaced by
`_incoming_temp_file`: pynetdicom takes no folder for the files it streams datasets into, and
the node needs them on the store's file system, so storing an instance is a rename, never a
copy) and `DIMSEMessage.decode_msg` (wrapped by `_decode_msg_then_sync`, to open the data sync
of a dataset the moment its last fragment is written, in the DUL thread); in
`pynetdicom.dimse`, `DIMSEServiceProvider.receive_primitive` (wrapped by
`_receive_primitive_then_sync`: once it has queued the completed request for the handler, the
DUL thread runs that data sync itself, with no other thread to wake). Reads
`C_STORE._dataset_file`, where pynetdicom leaves the file object on the request
(`parked_stream`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynetdicom import dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from scp_node.dicom.header_scan import SCAN_BYTES
from scp_node.dicom.instance_header import InstanceHeader, header_of_first_bytes
from storage.data_sync import DataSync

FREE_SPACE_CHECK_BYTES = 1024 * 1024  # free space is checked after every MiB streamed


@dataclass(frozen=True)
class _Incoming:
    """Where an AE's C-STORE datasets stream to, and the limits that stop them while they do."""

    folder: Path
    min_free_bytes: int = 0  # stop when the folder's file system has less free; 0: no check
    max_bytes: int = 0  # stop a dataset growing past this; 0: no limit
    sync_early: Callable[[], bool] | None = None  # start each dataset's data sync as it ends?


# AE -> where its C-STORE datasets are streamed (the store's .incoming folder) and the limits.
_incoming_dirs: weakref.WeakKeyDictionary[ApplicationEntity, _Incoming] = (
    weakref.WeakKeyDictionary()
)
_routes_lock = threading.Lock()


def route_incoming(
    ae: ApplicationEntity,
    folder: Path,
    *,
    min_free_bytes: int = 0,
    max_bytes: int = 0,
    sync_early: Callable[[], bool] | None = None,
) -> None:
    """Make C-STORE datasets received by `ae` stream into `folder` (the store's file system),
    once scp_node.dicom.pynetdicom_adapter.install() ran.

    While a dataset streams, it is stopped (its file emptied, later fragments dropped, the
    reason kept in `ParkedStream.refused`) as soon as the file system's free space falls
    below `min_free_bytes` (checked every FREE_SPACE_CHECK_BYTES) or the dataset grows past
    `max_bytes`; 0 turns either check off. When its last fragment is written, its data sync
    starts (`ParkedStream.data_sync`) if `sync_early()` says so (always when None)."""
    with _routes_lock:
        _incoming_dirs[ae] = _Incoming(Path(folder), min_free_bytes, max_bytes, sync_early)


def _incoming_temp_file(*args: Any, **kwargs: Any) -> StreamedFile:
    """Drop-in for pynetdicom's NamedTemporaryFile: created in the receiving AE's incoming folder.

    pynetdicom creates the file while decoding the first P-DATA of a C-STORE-RQ, in the DUL
    thread of the association; that thread knows its association and so its AE.
    """
    thread = threading.current_thread()
    incoming = None
    if isinstance(thread, DULServiceProvider):
        incoming = _incoming_dirs.get(thread.assoc.ae)
        if incoming is not None:
            kwargs["dir"] = incoming.folder
            kwargs.setdefault("prefix", "cstore-")
    return StreamedFile(tempfile.NamedTemporaryFile(*args, **kwargs), incoming)


class StreamedFile:
    """The file pynetdicom streams one C-STORE dataset into, with a full disk turned into a flag.

    Its first bytes are kept, and the header is read from them (`header`) as soon as they hold
    it, while the rest of the dataset is still arriving: the handler then need not read it.

    pynetdicom writes each P-DATA fragment from its DUL thread; an ENOSPC/EDQUOT there would
    kill that thread and abort the association. Instead the file is emptied (giving its space
    back), later fragments are dropped, and `disk_full` holds the error, so the C-STORE handler
    answers 0xA700 (Out of Resources) and pynetdicom removes the file as usual.
    """

    def __init__(self, inner: IO[bytes], limits: _Incoming | None = None) -> None:
        self._inner = inner
        # the file object itself: a NamedTemporaryFile's wrapper makes a new function wrapper
        # at each attribute lookup, two per fragment
        self._file: IO[bytes] = getattr(inner, "file", inner)
        self.name = inner.name
        self.file = self  # pynetdicom calls `.file.flush()` after each fragment
        self.disk_full: OSError | None = None
        self.refused: str | None = None  # a limit stopped the dataset: why
        self.refused_comment: str | None = None  # the same for the peer, at most 64 characters
        self._limits = limits
        self._written = 0
        self._checked_at = 0
        self._head = bytearray()  # the file's first SCAN_BYTES, for the header
        self._scanned_at = 0  # bytes of _head when the header was last looked for
        self.header: InstanceHeader | None = None  # read from _head while the rest streams
        self.data_sync: DataSync | None = None  # started once the last fragment is written

    def write(self, data: bytes) -> int:
        if self.disk_full is None and self.refused is None:
            try:
                written = self._file.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._written += len(data)
                if len(self._head) < SCAN_BYTES:
                    self._head += data[: SCAN_BYTES - len(self._head)]
                self._check_limits()
                return written
        return len(data)

    def complete(self) -> None:
        """The last fragment is written: open its data sync (storage.data_sync), which this
        DUL thread runs as soon as the request is queued for the handler
        (`_receive_primitive_then_sync`). Only for a dataset streamed into the store, when its
        route's `sync_early()` agrees; a failure to open is left to the handler."""
        limits = self._limits
        if limits is None or self.disk_full is not None or self.refused is not None:
            return
        if limits.sync_early is not None and not limits.sync_early():
            return
        try:
            self.data_sync = DataSync(Path(self.name))
        except OSError:
            self.data_sync = None
        else:
            _completed.data_sync = self.data_sync

    def _look_for_header(self) -> None:
        """Read the header from the bytes so far, once they may hold it: when they doubled
        since the last look (a peer with small PDUs costs a few looks, not one per PDU)."""
        size = len(self._head)
        if self.header is not None or self._scanned_at >= SCAN_BYTES:
            return
        if size < min(2 * self._scanned_at, SCAN_BYTES):
            return
        self._scanned_at = size
        self.header = header_of_first_bytes(bytes(self._head))

    def _check_limits(self) -> None:
        limits = self._limits
        if limits is None:
            return
        if limits.max_bytes and self._written > limits.max_bytes:
            self._stop(
                f"the dataset grew past [storage] max_instance_mb "
                f"({limits.max_bytes // (1024 * 1024)} MiB) while it was received",
                f"the dataset grew past max_instance_mb ({limits.max_bytes // (1024 * 1024)} MiB)",
            )
        elif limits.min_free_bytes and self._written - self._checked_at >= FREE_SPACE_CHECK_BYTES:
            self._checked_at = self._written
            free = shutil.disk_usage(limits.folder).free
            if free < limits.min_free_bytes:
                self._stop(
                    f"free space fell below [storage] min_free_mb "
                    f"({limits.min_free_bytes // (1024 * 1024)} MiB) while the dataset was "
                    "received",
                    f"free space fell below min_free_mb "
                    f"({limits.min_free_bytes // (1024 * 1024)} MiB) while receiving",
                )

    def _stop(self, reason: str, comment: str) -> None:
        self.refused = reason
        self.refused_comment = comment
        try:
            self._inner.flush()
        except OSError as exc:
            self._fail(exc)  # the disk filled before the check saw it: the same refusal
            return
        os.ftruncate(self._inner.fileno(), 0)

    def flush(self) -> None:
        """pynetdicom calls this after each P-DATA fragment: the header is looked for then."""
        if self.disk_full is None and self.refused is None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)
                return
            self._look_for_header()

    def close(self) -> None:
        try:
            self._inner.close()
        except OSError:
            if self.disk_full is None:
                raise

    def _fail(self, exc: OSError) -> None:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        self.disk_full = exc
        os.ftruncate(self._inner.fileno(), 0)


@dataclass(frozen=True)
class ParkedStream:
    """What streaming left on a C-STORE request for its handler (all None when the dataset was
    not streamed through a StreamedFile)."""

    header: InstanceHeader | None = None  # read from the first bytes while the rest arrived
    data_sync: DataSync | None = None  # started as the last fragment was written
    disk_full: OSError | None = None  # the error that stopped writing the dataset to disk
    refused: str | None = None  # why a limit of `route_incoming` stopped the dataset
    refused_comment: str | None = None  # that, for the peer's Error Comment (<= 64 characters)


def parked_stream(request: Any) -> ParkedStream:
    """What streaming parked on this C-STORE request (pynetdicom's `C_STORE._dataset_file`):
    the header as read while streaming (what read_header gives for the whole file), the data
    sync started as it completed, and why it was stopped, if it was."""
    streamed = getattr(request, "_dataset_file", None)
    if not isinstance(streamed, StreamedFile):
        return ParkedStream()
    return ParkedStream(
        streamed.header,
        streamed.data_sync,
        streamed.disk_full,
        streamed.refused,
        streamed.refused_comment,
    )


_original_decode_msg = dimse_messages.DIMSEMessage.decode_msg
_original_receive_primitive = DIMSEServiceProvider.receive_primitive
# the data sync of the dataset the calling DUL thread just completed, until it runs it
_completed = threading.local()


def _decode_msg_then_sync(self: Any, primitive: P_DATA, assoc: Any = None) -> bool:
    """DIMSEMessage.decode_msg; when it completed a dataset streamed to a file, that file's
    data sync is opened here, in the DUL thread, before the request is queued for the handler."""
    complete = bool(_original_decode_msg(self, primitive, assoc))
    if complete:
        streamed = getattr(self, "_data_set_file", None)
        if isinstance(streamed, StreamedFile):
            streamed.complete()
    return complete


def _receive_primitive_then_sync(self: DIMSEServiceProvider, primitive: P_DATA) -> None:
    """DIMSEServiceProvider.receive_primitive; then, when it completed a streamed dataset and
    queued its request for the handler, this DUL thread makes the dataset's data durable while
    the handler checks it (the handler's wait runs the sync itself if nobody did)."""
    try:
        _original_receive_primitive(self, primitive)
    finally:
        data_sync: DataSync | None = getattr(_completed, "data_sync", None)
        if data_sync is not None:
            _completed.data_sync = None
            data_sync.run()


def install() -> None:
    """Stream into the routed folders and start data syncs as datasets complete (once, from
    scp_node.dicom.pynetdicom_adapter.install)."""
    # pynetdicom's module global, replaced on purpose (tests/contracts/pynetdicom); mypy sees
    # tempfile's overloaded function, ours returns the StreamedFile wrapper
    dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[assignment]
    dimse_messages.DIMSEMessage.decode_msg = _decode_msg_then_sync  # type: ignore[method-assign]
    DIMSEServiceProvider.receive_primitive = _receive_primitive_then_sync  # type: ignore[method-assign]
