"""The pynetdicom internals scp_node.dicom.pynetdicom_adapter.reactor_guard relies on, and the
guard itself: a reactor paused by a send_* of its association does not take the message the
send_* waits for.

Part of the inventory of pynetdicom internals the node relies on (tests/contracts/pynetdicom/):
run it before widening pyproject's pin of pynetdicom.
"""

from __future__ import annotations

import inspect
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

from scp_node.dicom import pynetdicom_adapter


class _Reactor(Association):
    """An association whose thread only looks at its DIMSE queue, as `_run_reactor` does."""

    seen: list[Any]

    def run(self) -> None:
        self.seen = [self.dimse.get_msg(block=False)]


def _look(reactor: _Reactor) -> Any:
    reactor.start()
    reactor.join(10)
    return reactor.seen[0]


def test_send_star_pauses_the_reactor_with_the_checkpoint_the_guard_reads() -> None:
    source = inspect.getsource(Association.send_c_store)
    assert "self._reactor_checkpoint.clear()" in source and "while not self._is_paused" in source
    reactor_source = inspect.getsource(Association._run_reactor)
    assert "self.dimse.get_msg(block=False)" in reactor_source
    assert "self._reactor_checkpoint.wait()" in reactor_source
    assert inspect.signature(DIMSEServiceProvider.get_msg).parameters.keys() >= {"block"}


def test_a_paused_reactor_leaves_the_response_to_the_sending_thread() -> None:
    pynetdicom_adapter.install()
    paused = _Reactor(AE(), "requestor")
    paused.dimse.msg_queue.put((1, "C-STORE-RSP"))
    paused._reactor_checkpoint.clear()  # what send_c_store does before it sends
    assert _look(paused) == (None, None)
    assert paused.dimse.msg_queue.qsize() == 1  # still there for send_c_store's get_msg
    assert paused.dimse.get_msg(block=True) == (1, "C-STORE-RSP")  # the sending thread's look

    running = _Reactor(AE(), "requestor")
    running.dimse.msg_queue.put((1, "C-STORE-RQ"))
    assert _look(running) == (1, "C-STORE-RQ")  # not paused: the reactor serves it
