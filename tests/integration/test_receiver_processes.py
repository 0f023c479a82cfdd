"""[node] receiver_processes, in process: the shared listener, the least busy receiver accepting
first, the shared counts, recovery from the oldest receiver mark. In `lungnode serve`:
e2e/test_receiver_processes_served.py."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from pathlib import Path

import pytest


def test_recovery_starts_from_the_oldest_receiver_mark(tmp_path: Path) -> None:
    from scp_node.receive.lazy_index import (
        mark_path,
        read_mark,
        recovery_mark,
        reindex_store,
        write_mark,
    )
    from storage.database import Database
    from storage.index import Index
    from storage.instance_store import InstanceStore

    db = Database.connect(f"sqlite:///{tmp_path / 'index.sqlite'}")
    index = Index(db)
    try:
        write_mark(mark_path(index), 200.0)  # set when the serve process started them
        write_mark(mark_path(index, 1), 100.0)
        write_mark(mark_path(index, 2), 50.0)
        assert recovery_mark(index) == 50.0
        reindex_store(InstanceStore(tmp_path / "store", 0), index)
        assert not mark_path(index, 1).exists() and not mark_path(index, 2).exists()
        assert (read_mark(mark_path(index)) or 0) > 200.0
    finally:
        db.close()


# --- least-busy dispatch over the shared listening socket ----------------------------------


def _pending_connection() -> tuple[socket.socket, socket.socket]:
    """A listening socket with one connection waiting in its accept queue, and that client."""
    from scp_node.dicom.connections import make_listener

    listener = make_listener("127.0.0.1", 0)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, client


def test_the_least_busy_receiver_accepts_at_once_a_busier_one_waits() -> None:
    from scp_node.dicom.connections import LeastBusyDispatch

    counts = multiprocessing.get_context("spawn").Array("i", 2)
    listener, client = _pending_connection()
    try:
        idle = LeastBusyDispatch(counts, 1, max_wait_s=0.2)
        busy = LeastBusyDispatch(counts, 0, max_wait_s=0.2)
        started = time.monotonic()
        idle.wait_for_turn(listener, open_associations=0)
        assert time.monotonic() - started < 0.1
        busy.publish(2)
        started = time.monotonic()
        busy.wait_for_turn(listener, open_associations=2)  # nobody takes it: waits 2 x 0.2 s
        assert 0.35 < time.monotonic() - started < 2.0
        # the idle one takes the connection while the busy one waits: the busy one stops waiting
        timer = threading.Timer(0.1, lambda: listener.accept()[0].close())
        timer.start()
        started = time.monotonic()
        busy.wait_for_turn(listener, open_associations=2)
        assert time.monotonic() - started < 0.35
        timer.join()
        assert list(counts) == [2, 0]
    finally:
        client.close()
        listener.close()


def test_a_taken_port_is_named_when_the_shared_listener_is_made() -> None:
    from scp_node.dicom.connections import make_listener

    taken = make_listener("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(\[node\] host"):
            make_listener("127.0.0.1", port)
    finally:
        taken.close()


# --- receiver_processes = auto, and the node's limits across receiver processes ------------


def test_auto_is_one_receiver_process_per_core_at_least_two_at_most_max_associations() -> None:
    from scp_node.config import ConfigError, NodeConfig, load_config

    auto = NodeConfig()
    assert auto.receiver_processes == 0  # auto is the default
    assert auto.receiver_process_count(cores=1) == 2
    assert auto.receiver_process_count(cores=2) == 2
    assert auto.receiver_process_count(cores=12) == 12
    assert NodeConfig(max_associations=4).receiver_process_count(cores=12) == 4
    assert NodeConfig(max_associations=1).receiver_process_count(cores=12) == 1
    assert NodeConfig(receiver_processes=3).receiver_process_count(cores=12) == 3
    assert auto.receiver_process_count() >= 2  # this machine's cores
    env = {"LUNGNODE__NODE__RECEIVER_PROCESSES": "AUTO"}
    assert load_config(None, environ=env).node.receiver_processes == 0
    for bad in ("0", "none", "65"):
        with pytest.raises(ConfigError, match=r"receiver_processes.*auto or a whole number"):
            load_config(None, environ={"LUNGNODE__NODE__RECEIVER_PROCESSES": bad})


def test_node_counts_are_shared_by_processes_and_cleared_per_receiver(tmp_path: Path) -> None:
    from scp_node.dicom.node_counts import NodeCounts

    context = multiprocessing.get_context("spawn")
    counts = NodeCounts(3, 4, tmp_path / "counts.lock", context)
    counts.publish(0, 3, ["PACS", "PACS"], ["10.0.0.1"])
    counts.publish(1, 2, ["PACS", "CT1"], ["10.0.0.1", "10.0.0.2"])
    assert counts.associations_of("PACS") == 3 and counts.associations_of("CT1") == 1
    assert counts.associations_of("MR1") == 0
    assert counts.pending_from("10.0.0.1") == 2 and counts.total_associations() == 4
    assert counts.others_connections(0) == 2
    assert counts.rows() == [(1, 3, 2), (2, 2, 2), (3, 0, 0)]
    with counts.locked(), counts.locked():  # reentrant: a check publishes its own row inside
        counts.publish(0, 3, ["PACS", "PACS"], ["10.0.0.1"])
    # another process writes its row of the same memory (the receivers are spawned too), under
    # the lock this process let go
    writer = context.Process(target=_publish_row, args=(counts, 2))
    writer.start()
    writer.join(60)
    assert writer.exitcode == 0
    assert counts.associations_of("PACS") == 4 and counts.rows()[2] == (3, 1, 1)
    counts.clear(0)  # a receiver that died holds nothing
    assert counts.associations_of("PACS") == 2 and counts.pending_from("10.0.0.1") == 1
    assert counts.rows()[0] == (1, 0, 0)


def _publish_row(counts: object, row: int) -> None:
    from scp_node.dicom.node_counts import NodeCounts

    assert isinstance(counts, NodeCounts)
    with counts.locked():
        counts.publish(row, 1, ["PACS"], [])
