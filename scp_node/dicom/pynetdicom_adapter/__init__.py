"""pynetdicom process-wide settings, set once and only here.

`configure_pynetdicom()` sets the `_config` flags the node relies on (no identifiers in logs,
C-STORE datasets streamed to disk), quiets pydicom's per-value warnings, installs the guarded
PDU reader of scp_node.dicom.connections, wakes pynetdicom's reactors when there is work instead of
after their 1 ms idle sleeps (`_install_reactor_wakeups`), and routes the file
pynetdicom streams each received dataset into to the instance store's `.incoming` folder of the
receiving AE (so storing an instance is a rename on one file system, never a copy).
"""

from __future__ import annotations

import errno
import os
import queue
import select
import shutil
import struct
import tempfile
import threading
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from pydicom import config as pydicom_config
from pynetdicom import _config, association, dimse, dimse_messages, dul, evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from scp_node.dicom import connections
from scp_node.dicom.header_scan import SCAN_BYTES
from scp_node.dicom.instance_header import InstanceHeader, header_of_first_bytes
from storage.data_sync import DataSync

_lock = threading.Lock()
_configured = False
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


def configure_pynetdicom() -> None:
    """Set pynetdicom's `_config` flags and hooks for the node; safe to call more than once."""
    global _configured
    with _lock:
        if _configured:
            return
        # Patient Name/ID/Birth Date never reach the log through pynetdicom's DIMSE logging.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        # Datasets go straight to a file; the handler gets `event.dataset_path`.
        _config.STORE_RECV_CHUNKED_DATASET = True
        # pynetdicom's "standard" handlers of every PDU and DIMSE message only format INFO and
        # DEBUG lines, which the node's logging drops (pynetdicom is kept at WARNING, see
        # scp_node.logs): not bound, they cost nothing per C-STORE.
        _config.LOG_HANDLER_LEVEL = "none"
        # Only the storage SOP classes of sop_classes.py are accepted.
        _config.UNRESTRICTED_STORAGE_SERVICE = False
        # Invalid UIDs from peers are tolerated by pynetdicom and refused by the handler
        # (0xC210) with a clear log line, instead of an aborted association.
        _config.ENFORCE_UID_CONFORMANCE = False
        # pydicom warns (a log line and a Python warning each) about every value that breaks its
        # VR, repeating the value: a peer's text, up to 64 KiB, in two more lines per element.
        # The node checks every value it uses itself (UIDs, Modality as CS) and logs one
        # escaped line (scp_node.dicom.instance_header, scp_node.logs); pydicom stays quiet.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        # pynetdicom's module global, replaced on purpose
        # (tests/contracts/test_pynetdicom_internals.py);
        # mypy sees tempfile's overloaded function, ours returns the StreamedFile wrapper
        dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[assignment]
        # PDUs of the SCP's associations: size refused before reading, whole-PDU deadlines
        # (scp_node.dicom.connections; tests/contracts/test_pynetdicom_internals.py guards the
        # method)
        connections.install()
        _install_reactor_wakeups()
        # File Meta of each streamed dataset and each C-STORE-RSP encoded directly
        # (`_install_fast_encoders`); anything unusual takes pynetdicom's own path
        _install_fast_encoders()
        # The data sync of each streamed dataset starts as its last fragment is written
        dimse_messages.DIMSEMessage.decode_msg = _decode_msg_then_sync  # type: ignore[method-assign]
        _configured = True


def route_incoming(
    ae: ApplicationEntity,
    folder: Path,
    *,
    min_free_bytes: int = 0,
    max_bytes: int = 0,
    sync_early: Callable[[], bool] | None = None,
) -> None:
    """Make C-STORE datasets received by `ae` stream into `folder` (the store's file system).

    While a dataset streams, it is stopped (its file emptied, later fragments dropped, the
    reason kept for `refused_while_streaming`) as soon as the file system's free space falls
    below `min_free_bytes` (checked every FREE_SPACE_CHECK_BYTES) or the dataset grows past
    `max_bytes`; 0 turns either check off. When its last fragment is written, its data sync
    starts (`data_sync_while_streaming`) if `sync_early()` says so (always when None)."""
    configure_pynetdicom()
    with _lock:
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
        self.name = inner.name
        self.file = self  # pynetdicom calls `.file.flush()` after each fragment
        self.disk_full: OSError | None = None
        self.refused: str | None = None  # a limit stopped the dataset: why
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
                written = self._inner.write(data)
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
        """The last fragment is written: start making the data durable (storage.data_sync)
        now, before the request even reaches the handler. Only for a dataset streamed into
        the store, when its route's `sync_early()` agrees; a failure to start is left to the
        handler."""
        limits = self._limits
        if limits is None or self.disk_full is not None or self.refused is not None:
            return
        if limits.sync_early is not None and not limits.sync_early():
            return
        try:
            self.data_sync = DataSync(Path(self.name))
        except OSError:
            self.data_sync = None

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
                f"({limits.max_bytes // (1024 * 1024)} MiB) while it was received"
            )
        elif limits.min_free_bytes and self._written - self._checked_at >= FREE_SPACE_CHECK_BYTES:
            self._checked_at = self._written
            free = shutil.disk_usage(limits.folder).free
            if free < limits.min_free_bytes:
                self._stop(
                    f"free space fell below [storage] min_free_mb "
                    f"({limits.min_free_bytes // (1024 * 1024)} MiB) while the dataset was "
                    "received"
                )

    def _stop(self, reason: str) -> None:
        self.refused = reason
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
                self._inner.flush()
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


def header_while_streaming(request: Any) -> InstanceHeader | None:
    """The header of this C-STORE request's dataset, read from its first bytes while the rest
    was still arriving (what read_header gives for the file); None when it was not."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "header", None)


def data_sync_while_streaming(request: Any) -> DataSync | None:
    """The fdatasync of this C-STORE request's streamed file started when its last fragment
    was written (StreamedFile.complete), if one was."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "data_sync", None)


def disk_full_while_streaming(request: Any) -> OSError | None:
    """The error that stopped streaming this C-STORE request's dataset to disk, if any."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "disk_full", None)


def refused_while_streaming(request: Any) -> str | None:
    """Why a limit of `route_incoming` stopped this C-STORE request's dataset, if one did."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "refused", None)


# --- reactor wake-ups ----------------------------------------------------------------------
#
# pynetdicom 3.0 polls: the DUL thread of each association sleeps `_run_loop_delay` (1 ms)
# whenever a loop found nothing to do, and the association's reactor sleeps 1 ms before each
# look at its DIMSE message queue. On one association that is up to two sleeps per C-STORE: the
# decoded request waits for the reactor, the response for the DUL. The sleeps stay (same idle
# CPU, same longest wait); they end early when there is work: the DUL's when its socket becomes
# readable or a primitive is queued for it to send (an eventfd written by `send_pdu`), the
# reactor's when a DIMSE message is queued. Done by giving both modules a `time` whose `sleep`
# knows the calling thread; every other use of `time` is the real module's.
# tests/contracts/test_pynetdicom_internals.py guards the shapes relied on.

_REACTOR_SLEEP = 0.001  # Association._run_reactor's literal idle sleep
_WAKE_ATTR = "_lungnode_wake_fd"


def _dul_wake_fd(provider: DULServiceProvider) -> int | None:
    """The provider's eventfd (made on its first idle sleep, closed with it); None where the
    platform has no eventfd."""
    fd = getattr(provider, _WAKE_ATTR, None)
    if fd is None and hasattr(os, "eventfd"):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        setattr(provider, _WAKE_ATTR, fd)
        weakref.finalize(provider, os.close, fd)
    return fd


def _sleep(seconds: float) -> None:
    """time.sleep for pynetdicom's dul and association modules: an idle sleep of a reactor
    ends as soon as that reactor has work; any other sleep is time.sleep."""
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider) and seconds == thread._run_loop_delay:
        _dul_idle(thread, seconds)
    elif isinstance(thread, Association) and seconds == _REACTOR_SLEEP:
        _reactor_idle(thread.dimse.msg_queue, seconds)
    else:
        time.sleep(seconds)


def _dul_idle(provider: DULServiceProvider, seconds: float) -> None:
    fd = _dul_wake_fd(provider)
    transport = provider.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    watched: list[Any] = [fd] if fd is not None else []
    if raw is not None:
        watched.append(raw)
    if not watched:
        time.sleep(seconds)
        return
    try:
        select.select(watched, [], [], seconds)
    except (OSError, ValueError):  # the socket closed meanwhile: the DUL finds out next loop
        time.sleep(seconds)
    if fd is not None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass


def _reactor_idle(messages: queue.Queue[Any], seconds: float) -> None:
    with messages.not_empty:
        if not messages._qsize():  # Queue's own, under its lock
            messages.not_empty.wait(seconds)


_original_send_pdu = DULServiceProvider.send_pdu


def _send_pdu_and_wake(self: DULServiceProvider, primitive: Any) -> None:
    """DULServiceProvider.send_pdu, then wake the DUL thread if it sleeps."""
    _original_send_pdu(self, primitive)
    fd = getattr(self, _WAKE_ATTR, None)
    if fd is not None:
        try:
            os.eventfd_write(fd, 1)
        except OSError:  # closed with its provider
            pass


def _install_reactor_wakeups() -> None:
    """Install the wake-ups (once, from configure_pynetdicom)."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k[:2] == "__"})
    shim.sleep = _sleep
    setattr(dul, "time", shim)  # noqa: B010  # the modules' own global `time`
    setattr(association, "time", shim)  # noqa: B010
    DULServiceProvider.send_pdu = _send_pdu_and_wake  # type: ignore[method-assign]


# --- direct encoders -------------------------------------------------------------------------
#
# Per C-STORE, pynetdicom builds two pydicom Datasets only to turn them into a few hundred
# bytes: the File Meta it writes at the head of each streamed dataset (`create_file_meta` and
# `write_file_meta_info`, looked up in dimse_messages when the dataset starts), and the
# C-STORE-RSP command set (`DIMSEServiceProvider.send_msg`). On one association that is a
# good part of the receive path's CPU. Both are encoded here directly, to the same bytes
# (tests/contracts/test_pynetdicom_internals.py compares them with pydicom's); any value outside the
# plain case (not ASCII, too long, an error comment, a handler bound to EVT_DIMSE_SENT) takes
# pynetdicom's own path.

_original_create_file_meta = dimse_messages.create_file_meta
_original_write_file_meta_info = dimse_messages.write_file_meta_info
_original_send_msg = dimse.DIMSEServiceProvider.send_msg


@dataclass(frozen=True)
class _FileMeta:
    """What pynetdicom's create_file_meta was given, encoded when written."""

    sop_class_uid: Any
    sop_instance_uid: Any
    transfer_syntax: Any
    implementation_uid: Any
    implementation_version: Any

    def as_dataset(self) -> Any:
        return _original_create_file_meta(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            transfer_syntax=self.transfer_syntax,
            implementation_uid=self.implementation_uid,
            implementation_version=self.implementation_version,
        )


def _create_file_meta(
    *,
    sop_class_uid: Any,
    sop_instance_uid: Any,
    transfer_syntax: Any,
    implementation_uid: Any = None,
    implementation_version: Any = None,
) -> _FileMeta:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    return _FileMeta(
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax,
        PYNETDICOM_IMPLEMENTATION_UID if implementation_uid is None else implementation_uid,
        PYNETDICOM_IMPLEMENTATION_VERSION
        if implementation_version is None
        else implementation_version,
    )


def _plain(value: Any, longest: int) -> bytes | None:
    """A UI/SH value as ASCII bytes, or None when it is not a plain short string."""
    if not isinstance(value, str) or not value or len(value) > longest:
        return None
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        return None


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_file_meta(meta: _FileMeta) -> bytes | None:
    """Group 2 as pydicom's write_file_meta_info writes it for these values (after the
    preamble and 'DICM'); None when a value is not plain (pydicom then writes it)."""
    values = [
        _plain(meta.sop_class_uid, 64),
        _plain(meta.sop_instance_uid, 64),
        _plain(meta.transfer_syntax, 64),
        _plain(meta.implementation_uid, 64),
        _plain(meta.implementation_version, 16),
    ]
    if any(v is None for v in values):
        return None
    sop_class, sop_instance, syntax, implementation, version = cast(list[bytes], values)
    body = b"".join(
        (
            struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2) + b"\x00\x01",
            _explicit(2, 2, b"UI", _even(sop_class, b"\x00")),
            _explicit(2, 3, b"UI", _even(sop_instance, b"\x00")),
            _explicit(2, 0x10, b"UI", _even(syntax, b"\x00")),
            _explicit(2, 0x12, b"UI", _even(implementation, b"\x00")),
            _explicit(2, 0x13, b"SH", _even(version, b" ")),
        )
    )
    return _explicit(2, 0, b"UL", struct.pack("<I", len(body))) + body


def _write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(file_meta, _FileMeta):
        encoded = encode_file_meta(file_meta)
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = file_meta.as_dataset()
    _original_write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)


def _implicit(element: int, value: bytes) -> bytes:
    """One command-group element, Implicit VR Little Endian."""
    return struct.pack("<HHI", 0, element, len(value)) + value


def encode_store_response(primitive: Any) -> bytes | None:
    """The command set of a plain C-STORE-RSP (status, UIDs, message ID; no error comment or
    offending element) as pynetdicom encodes it; None for anything else."""
    if type(primitive) is not C_STORE:
        return None
    message_id = primitive.MessageIDBeingRespondedTo
    status = primitive.Status
    if (
        not isinstance(message_id, int)
        or not isinstance(status, int)
        or not 0 <= message_id <= 0xFFFF
        or not 0 <= status <= 0xFFFF
        or primitive.ErrorComment is not None
        or primitive.OffendingElement is not None
    ):
        return None
    sop_class = _plain(primitive.AffectedSOPClassUID, 64)
    sop_instance = _plain(primitive.AffectedSOPInstanceUID, 64)
    if sop_class is None or sop_instance is None:
        return None
    body = b"".join(
        (
            _implicit(0x0002, _even(sop_class, b"\x00")),
            _implicit(0x0100, struct.pack("<H", 0x8001)),
            _implicit(0x0120, struct.pack("<H", message_id)),
            _implicit(0x0800, struct.pack("<H", 0x0101)),
            _implicit(0x0900, struct.pack("<H", status)),
            _implicit(0x1000, _even(sop_instance, b"\x00")),
        )
    )
    return _implicit(0x0000, struct.pack("<I", len(body))) + body


def _send_msg(self: dimse.DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg, a plain C-STORE-RSP encoded directly."""
    if primitive.MessageIDBeingRespondedTo is not None and not self.assoc.get_handlers(
        evt.EVT_DIMSE_SENT
    ):
        encoded = encode_store_response(primitive)
        limit = self.maximum_pdu_size
        if encoded is not None and (not limit or len(encoded) + 6 <= limit):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
            self.dul.send_pdu(pdata)
            return
    _original_send_msg(self, primitive, context_id)


_original_decode_msg = dimse_messages.DIMSEMessage.decode_msg


def _decode_msg_then_sync(self: Any, primitive: P_DATA, assoc: Any = None) -> bool:
    """DIMSEMessage.decode_msg; when it completed a dataset streamed to a file, that file's
    data sync starts here, in the DUL thread, before the request is queued for the handler."""
    complete = bool(_original_decode_msg(self, primitive, assoc))
    if complete:
        streamed = getattr(self, "_data_set_file", None)
        if isinstance(streamed, StreamedFile):
            streamed.complete()
    return complete


def _install_fast_encoders() -> None:
    """Install the direct encoders (once, from configure_pynetdicom)."""
    setattr(dimse_messages, "create_file_meta", _create_file_meta)  # noqa: B010
    setattr(dimse_messages, "write_file_meta_info", _write_file_meta_info)  # noqa: B010
    dimse.DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
