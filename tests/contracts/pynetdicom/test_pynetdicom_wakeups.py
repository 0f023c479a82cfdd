"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.wakeups relies on are still there,
in the same shape: `pynetdicom.dul.time` and `pynetdicom.association.time` as the modules'
`time`, whose `sleep(_run_loop_delay)` and `sleep(0.001)` are the idle sleeps of
`DULServiceProvider.run_reactor` and `Association._run_reactor`;
`DIMSEServiceProvider.msg_queue` (a queue.Queue) and `DULServiceProvider.send_pdu`.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from typing import Any

from pynetdicom import AE, association, dimse, dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter import wakeups


def _names(function: Any) -> set[str]:
    """Global and attribute names a function's code looks up."""
    return set(function.__code__.co_names)


def test_idle_sleeps_are_the_module_time_sleeps_the_wakeups_replace() -> None:
    pynetdicom_adapter.install()
    dul_source = inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in dul_source, (
        "DULServiceProvider.run_reactor no longer idles with time.sleep(self._run_loop_delay)"
    )
    assert DULServiceProvider(Association(AE(), "acceptor"))._run_loop_delay == 0.001
    reactor_source = inspect.getsource(Association._run_reactor)
    assert f"time.sleep({wakeups.REACTOR_SLEEP})" in reactor_source, (
        "Association._run_reactor no longer idles with time.sleep(0.001)"
    )
    assert dul.time.sleep is wakeups._sleep  # type: ignore[attr-defined]
    assert association.time.sleep is wakeups._sleep  # type: ignore[attr-defined]
    assert dul.time.monotonic is time.monotonic  # type: ignore[attr-defined]
    provider = dimse.DIMSEServiceProvider(Association(AE(), "acceptor"))
    assert hasattr(provider.msg_queue, "not_empty") and hasattr(provider.msg_queue, "_qsize")
    assert "to_provider_queue" in _names(wakeups.original_send_pdu)


def test_reactor_idle_sleep_ends_when_a_message_is_queued() -> None:
    messages: queue.Queue[int] = queue.Queue()
    threading.Timer(0.05, messages.put, args=(1,)).start()
    started = time.monotonic()
    wakeups.reactor_idle(messages, 5.0)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    wakeups.reactor_idle(messages, 5.0)  # a message is waiting: no wait at all
    assert time.monotonic() - started < 0.05
