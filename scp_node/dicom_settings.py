"""pynetdicom process-wide settings, set once and only here.

`configure_pynetdicom()` sets the `_config` flags the node relies on (no identifiers in logs,
C-STORE datasets streamed to disk), quiets pydicom's per-value warnings, installs the guarded
PDU reader of scp_node.connections, and routes the file
pynetdicom streams each received dataset into to the instance store's `.incoming` folder of the
receiving AE (so storing an instance is a rename on one file system, never a copy).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dul import DULServiceProvider

from scp_node import connections

_lock = threading.Lock()
_configured = False
# AE -> folder its C-STORE datasets are streamed into (the store's .incoming folder).
_incoming_dirs: weakref.WeakKeyDictionary[ApplicationEntity, Path] = weakref.WeakKeyDictionary()


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
        # Only the storage SOP classes of sop_classes.py are accepted.
        _config.UNRESTRICTED_STORAGE_SERVICE = False
        # Invalid UIDs from peers are tolerated by pynetdicom and refused by the handler
        # (0xC210) with a clear log line, instead of an aborted association.
        _config.ENFORCE_UID_CONFORMANCE = False
        # pydicom warns (a log line and a Python warning each) about every value that breaks its
        # VR, repeating the value: a peer's text, up to 64 KiB, in two more lines per element.
        # The node checks every value it uses itself (UIDs, Modality as CS) and logs one
        # escaped line (scp_node.instance_header, scp_node.logs); pydicom stays quiet.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        # pynetdicom's module global, replaced on purpose (tests/test_pynetdicom_internals.py);
        # mypy sees tempfile's overloaded function, ours returns the StreamedFile wrapper
        dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[assignment]
        # PDUs of the SCP's associations: size refused before reading, whole-PDU deadlines
        # (scp_node.connections; tests/test_pynetdicom_internals.py guards the method)
        connections.install()
        _configured = True


def route_incoming(ae: ApplicationEntity, folder: Path) -> None:
    """Make C-STORE datasets received by `ae` stream into `folder` (the store's file system)."""
    configure_pynetdicom()
    with _lock:
        _incoming_dirs[ae] = Path(folder)


def _incoming_temp_file(*args: Any, **kwargs: Any) -> StreamedFile:
    """Drop-in for pynetdicom's NamedTemporaryFile: created in the receiving AE's incoming folder.

    pynetdicom creates the file while decoding the first P-DATA of a C-STORE-RQ, in the DUL
    thread of the association; that thread knows its association and so its AE.
    """
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        folder = _incoming_dirs.get(thread.assoc.ae)
        if folder is not None:
            kwargs["dir"] = folder
            kwargs.setdefault("prefix", "cstore-")
    return StreamedFile(tempfile.NamedTemporaryFile(*args, **kwargs))


class StreamedFile:
    """The file pynetdicom streams one C-STORE dataset into, with a full disk turned into a flag.

    pynetdicom writes each P-DATA fragment from its DUL thread; an ENOSPC/EDQUOT there would
    kill that thread and abort the association. Instead the file is emptied (giving its space
    back), later fragments are dropped, and `disk_full` holds the error, so the C-STORE handler
    answers 0xA700 (Out of Resources) and pynetdicom removes the file as usual.
    """

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.name = inner.name
        self.file = self  # pynetdicom calls `.file.flush()` after each fragment
        self.disk_full: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.disk_full is None:
            try:
                return self._inner.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.disk_full is None:
            try:
                self._inner.flush()
            except OSError as exc:
                self._fail(exc)

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


def disk_full_while_streaming(request: Any) -> OSError | None:
    """The error that stopped streaming this C-STORE request's dataset to disk, if any."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "disk_full", None)
