"""pynetdicom process-wide settings, set once and only here.

`configure_pynetdicom()` sets the `_config` flags the node relies on (no identifiers in logs,
C-STORE datasets streamed to disk), routes the file pynetdicom streams each received dataset
into to the instance store's `.incoming` folder of the receiving AE (so storing an instance is
a rename on one file system, never a copy), and gives pynetdicom's two polling loops a clock
that wakes them as soon as there is work (see `_WakeOnWorkClock`).
"""

from __future__ import annotations

import os
import queue
import select
import tempfile
import threading
import time
import types
import weakref
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages
from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

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
        dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[assignment]
        _dul_module.time = _WAKE_ON_WORK_CLOCK  # type: ignore[assignment]
        _association_module.time = _WAKE_ON_WORK_CLOCK  # type: ignore[assignment]
        _configured = True


def route_incoming(ae: ApplicationEntity, folder: Path) -> None:
    """Make C-STORE datasets received by `ae` stream into `folder` (same file system as the store)."""
    configure_pynetdicom()
    with _lock:
        _incoming_dirs[ae] = Path(folder)


def _incoming_temp_file(*args: Any, **kwargs: Any) -> IO[bytes]:
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
    return tempfile.NamedTemporaryFile(*args, **kwargs)


class _WakeOnWorkClock(types.ModuleType):
    """The `time` module as pynetdicom's dul and association modules see it, with a `sleep`
    that returns early when the sleeping thread has work.

    pynetdicom polls: each association thread sleeps 1 ms between looks at its DIMSE message
    queue, and each DUL thread sleeps 1 ms (`_run_loop_delay`) whenever a loop found nothing to
    do. A C-STORE therefore waits up to three times per instance: for the DUL to see the
    request's bytes, for the association thread to see the decoded request, and for the DUL to
    see the response. This `sleep` never sleeps longer than asked; it only wakes early:
    a DUL thread when its socket is readable or its association queued a primitive to send (a
    "doorbell" pipe rung by the association thread), an association thread when a DIMSE message
    is queued for it. Every other caller, and every case it cannot watch, gets `time.sleep`.
    """

    def __init__(self) -> None:
        super().__init__("time", "time, with a sleep that wakes pynetdicom threads on work")
        self._doorbells: weakref.WeakKeyDictionary[DULServiceProvider, _Doorbell] = (
            weakref.WeakKeyDictionary()
        )
        self._doorbells_lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep at most `seconds`; less when the calling pynetdicom thread has work."""
        thread = threading.current_thread()
        if seconds > 0 and isinstance(thread, DULServiceProvider):
            self._dul_wait(thread, seconds)
        elif seconds > 0 and isinstance(thread, Association):
            self._association_wait(thread, seconds)
        else:
            time.sleep(seconds)

    def _doorbell(self, dul: DULServiceProvider) -> _Doorbell:
        with self._doorbells_lock:
            bell = self._doorbells.get(dul)
            if bell is None:
                bell = self._doorbells[dul] = _Doorbell()
                weakref.finalize(dul, bell.close)
            return bell

    def _dul_wait(self, dul: DULServiceProvider, seconds: float) -> None:
        """Wait until the peer sent bytes, the association queued a primitive, or `seconds`."""
        transport = dul.socket
        raw = getattr(transport, "socket", None)
        if raw is None or dul.to_provider_queue.queue or not dul.event_queue.empty():
            time.sleep(seconds)  # closing, or work pynetdicom is already about to see
            return
        bell = self._doorbell(dul)
        try:
            select.select([raw, bell.read_fd], [], [], seconds)
        except (OSError, ValueError):  # socket closed meanwhile: pynetdicom sees it next loop
            time.sleep(seconds)
            return
        bell.drain()

    def _association_wait(self, assoc: Association, seconds: float) -> None:
        """Ring the DUL's doorbell when a primitive waits to be sent, then wait until a DIMSE
        message is queued for this association or `seconds` passed."""
        dul = assoc.dul
        if dul.to_provider_queue.queue:
            self._doorbell(dul).ring()
        messages: queue.Queue[Any] = assoc.dimse.msg_queue
        with messages.not_empty:
            if not messages.queue:
                messages.not_empty.wait(seconds)
            if messages.queue:
                # Queue.put wakes one waiter; pass the wake-up on in case another thread
                # (a requestor's user thread in get(block=True)) waits for this message.
                messages.not_empty.notify()


class _Doorbell:
    """A non-blocking pipe one thread writes a byte to so another thread's select() wakes."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._closed = False

    def ring(self) -> None:
        """Wake the waiter (a full pipe already wakes it)."""
        try:
            os.write(self._write_fd, b"\x01")
        except (BlockingIOError, OSError):
            pass

    def drain(self) -> None:
        """Forget the rings so far; the caller then looks for work itself."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Close both ends; called when the DUL thread's object is collected."""
        if not self._closed:
            self._closed = True
            os.close(self.read_fd)
            os.close(self._write_fd)


_WAKE_ON_WORK_CLOCK = _WakeOnWorkClock()
