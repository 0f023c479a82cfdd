"""pynetdicom's reactors woken when there is work, instead of after their 1 ms idle sleeps.

pynetdicom 3.0 polls: the DUL thread of each association sleeps `_run_loop_delay` (1 ms)
whenever a loop found nothing to do, and the association's reactor sleeps 1 ms before each
look at its DIMSE message queue. On one association that is up to two sleeps per C-STORE: the
decoded request waits for the reactor, the response for the DUL. The sleeps stay (same idle
CPU, same longest wait); they end early when there is work: the DUL's when its socket becomes
readable or a primitive is queued for it to send (an eventfd written by `send_pdu`), an
acceptor's reactor's when a DIMSE message is queued. A requestor's reactor keeps its 1 ms
sleep: pynetdicom pauses it in each send_* while the sending thread waits for the response,
and waking it early raced that pause (the response was left unseen until the DIMSE timeout).

Touches the module globals `pynetdicom.dul.time` and `pynetdicom.association.time` (given a
`time` whose `sleep` knows the calling thread; every other use of `time` is the real module's),
`DULServiceProvider.send_pdu` (wrapped to write the eventfd) and reads
`DULServiceProvider._run_loop_delay` and `DIMSEServiceProvider.msg_queue`'s condition.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
import types
import weakref
from typing import Any

from pynetdicom import association, dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

REACTOR_SLEEP = 0.001  # Association._run_reactor's literal idle sleep
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
    elif isinstance(thread, Association) and seconds == REACTOR_SLEEP and thread.is_acceptor:
        reactor_idle(thread.dimse.msg_queue, seconds)
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
        readable, _, _ = select.select(watched, [], [], seconds)
    except (OSError, ValueError):  # the socket closed meanwhile: the DUL finds out next loop
        time.sleep(seconds)
        readable = watched
    if fd is not None and fd in readable:  # else nothing to clear: a syscall and an exception
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass


def reactor_idle(messages: queue.Queue[Any], seconds: float) -> None:
    """The association reactor's idle sleep: up to `seconds`, ended by a queued message.

    The queue's put() wakes one waiter. When the reactor took that wake-up, it passes it on:
    a requestor's own thread may be waiting in `get_msg` for the same message (send_c_store
    waiting for its C-STORE-RSP), and would otherwise sleep until the DIMSE timeout (seen as
    20-30 s stalls once responses came fast, without Nagle's delay)."""
    with messages.not_empty:
        if not messages._qsize():  # Queue's own, under its lock
            messages.not_empty.wait(seconds)
        if messages._qsize():
            messages.not_empty.notify()


original_send_pdu = DULServiceProvider.send_pdu


def _send_pdu_and_wake(self: DULServiceProvider, primitive: Any) -> None:
    """DULServiceProvider.send_pdu, then wake the DUL thread if it sleeps."""
    original_send_pdu(self, primitive)
    fd = getattr(self, _WAKE_ATTR, None)
    if fd is not None:
        try:
            os.eventfd_write(fd, 1)
        except OSError:  # closed with its provider
            pass


def install() -> None:
    """Install the wake-ups (once, from scp_node.dicom.pynetdicom_adapter.install)."""
    shim = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k[:2] == "__"})
    shim.sleep = _sleep
    setattr(dul, "time", shim)  # noqa: B010  # the modules' own global `time`
    setattr(association, "time", shim)  # noqa: B010
    DULServiceProvider.send_pdu = _send_pdu_and_wake  # type: ignore[method-assign]


def restore_polling() -> None:
    """pynetdicom's own 1 ms polling back (bench/ingest.py compares the two); the rest of the
    adapter stays installed."""
    setattr(dul, "time", time)  # noqa: B010
    setattr(association, "time", time)  # noqa: B010
    DULServiceProvider.send_pdu = original_send_pdu  # type: ignore[method-assign]
