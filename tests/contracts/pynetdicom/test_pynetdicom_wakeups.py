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
from pathlib import Path
from typing import Any

from dcmtk import StorescpServer
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, association, dimse, dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from classifier.datasets.phantom import generate_study
from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.pynetdicom_adapter import wakeups
from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY


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


def test_a_requestor_sending_fast_gets_every_response(tmp_path: Path) -> None:
    """With the adapter installed and Nagle off, a requestor's C-STOREs to a fast peer
    (storescp, TCP_NODELAY) each get their response. Waking a requestor's reactor early
    raced pynetdicom's pause of it in send_c_store (the reactor could take the wake-up or
    the response meant for the sending thread): sends stalled for the DIMSE timeout within
    the first 60 instances on most runs."""
    pynetdicom_adapter.install()
    study = generate_study(seed=5, histology="A", ct_size=32, ct_slices=60, pet=False)
    with StorescpServer(tmp_path / "archive") as archive:
        ae = AE(ae_title="LUNGNODE")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(study.ct[0].SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate(
            "127.0.0.1", archive.port, ae_title=archive.ae_title, evt_handlers=[NO_DELAY]
        )
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(ds) for ds in study.ct]
        finally:
            assoc.release()
    answered = [s for s in statuses if "Status" in s]
    assert len(answered) == len(study.ct), f"no response to instance {len(answered)}"
