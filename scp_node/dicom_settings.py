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
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom import config as pydicom_config
from pynetdicom import _config, dimse_messages
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dul import DULServiceProvider

from scp_node import connections

_lock = threading.Lock()
_configured = False
FREE_SPACE_CHECK_BYTES = 1024 * 1024  # free space is checked after every MiB streamed


@dataclass(frozen=True)
class _Incoming:
    """Where an AE's C-STORE datasets stream to, and the limits that stop them while they do."""

    folder: Path
    min_free_bytes: int = 0  # stop when the folder's file system has less free; 0: no check
    max_bytes: int = 0  # stop a dataset growing past this; 0: no limit


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


def route_incoming(
    ae: ApplicationEntity, folder: Path, *, min_free_bytes: int = 0, max_bytes: int = 0
) -> None:
    """Make C-STORE datasets received by `ae` stream into `folder` (the store's file system).

    While a dataset streams, it is stopped (its file emptied, later fragments dropped, the
    reason kept for `refused_while_streaming`) as soon as the file system's free space falls
    below `min_free_bytes` (checked every FREE_SPACE_CHECK_BYTES) or the dataset grows past
    `max_bytes`; 0 turns either check off."""
    configure_pynetdicom()
    with _lock:
        _incoming_dirs[ae] = _Incoming(Path(folder), min_free_bytes, max_bytes)


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

    def write(self, data: bytes) -> int:
        if self.disk_full is None and self.refused is None:
            try:
                written = self._inner.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._written += len(data)
                self._check_limits()
                return written
        return len(data)

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
        if self.disk_full is None and self.refused is None:
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


def refused_while_streaming(request: Any) -> str | None:
    """Why a limit of `route_incoming` stopped this C-STORE request's dataset, if one did."""
    streamed = getattr(request, "_dataset_file", None)
    return getattr(streamed, "refused", None)
