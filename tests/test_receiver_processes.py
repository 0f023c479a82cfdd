"""[node] receiver_processes: several receiver processes on one port, one store, one index."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dcmtk import run_storescu
from in_process import make_ct
from node_process import NodeProcess
from ports import free_port

TOKEN = "test-token-receivers-0123456789"


def _metrics(port: int) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def _stored_total(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lungnode_cstore_requests_total{") and 'status="0x0000"' in line
    )


def _receivers(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


@pytest.mark.slow
def test_two_receiver_processes_share_the_port_store_index_and_metrics(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    web_port = free_port()
    node = node_process(
        role="receiver",
        quiet_seconds=60,
        overrides={
            "node__receiver_processes": 2,
            "pipeline__release_quiet_seconds": 1,
            "web__token": TOKEN,
            "web__port": web_port,
        },
    ).start()
    assert node.pid is not None
    deadline = time.monotonic() + 60
    while len(_receivers(node.pid)) < 2:  # the spawn helper may be a child too
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    while node.log().count("lungnode.receiver: listening") < 2:  # both on the one port
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    studies = [f"1.2.826.0.1.3680043.8.498.9{n}" for n in range(4)]
    sets = [
        [make_ct(tmp_path / f"s{n}-{i}.dcm", study_uid=uid) for i in range(6)]
        for n, uid in enumerate(studies)
    ]
    sets[3].append(sets[0][0])  # one instance sent twice, on two associations
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda files: run_storescu(files, node.port, called_ae="LUNGNODE"), sets)
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    status = node.wait_for(
        lambda s: sorted(x["state"] for x in s["studies"]) == ["READY"] * 4, 30, "READY"
    )
    assert sorted(x["instances"] for x in status["studies"]) == [6, 6, 6, 6]  # indexed once
    stored = [p for p in node.store.rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == 24
    assert _stored_total(_metrics(web_port)) == 25  # both receivers' counters, summed
    # a receiver that dies is restarted
    first = _receivers(node.pid)
    victim = max(first)
    os.kill(victim, 9)
    deadline = time.monotonic() + 30
    while victim in _receivers(node.pid) or len(_receivers(node.pid)) < len(first):
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    while node.log().count("lungnode.receiver: listening") < 3:  # the new one listens too
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    more = [make_ct(tmp_path / f"late-{i}.dcm") for i in range(3)]
    assert run_storescu(more, node.port, called_ae="LUNGNODE").returncode == 0
    assert node.stop() == 0


def test_recovery_starts_from_the_oldest_receiver_mark(tmp_path: Path) -> None:
    from scp_node.index_recovery import (
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
    from scp_node.connections import make_listener

    listener = make_listener("127.0.0.1", 0)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    return listener, client


def test_the_least_busy_receiver_accepts_at_once_a_busier_one_waits() -> None:
    from scp_node.connections import LeastBusyDispatch

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


@pytest.mark.slow
def test_associations_are_spread_evenly_over_receiver_processes(
    node_process: Callable[..., NodeProcess],
) -> None:
    """Four associations opened one after another, all kept open, land 2-2 on two receiver
    processes (SO_REUSEPORT's address hash put them 3-1 or 4-0 half of the time)."""
    from pynetdicom import AE

    node = node_process(role="receiver", overrides={"node__receiver_processes": 2}).start()
    deadline = time.monotonic() + 60
    while node.log().count("lungnode.receiver: listening") < 2:
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = []
    try:
        for _ in range(4):
            assoc = ae.associate("127.0.0.1", node.port, ae_title="LUNGNODE")
            assert assoc.is_established, node.log()[-3000:]
            held.append(assoc)
            time.sleep(0.3)  # the receivers publish their counts
        log = node.log()
        spread = sorted(log.count(f" receiver={slot}") for slot in (1, 2))
        assert spread == [2, 2], log[-3000:]
    finally:
        for assoc in held:
            assoc.release()
    assert node.stop() == 0


def test_a_taken_port_is_named_when_the_shared_listener_is_made() -> None:
    from scp_node.connections import make_listener

    taken = make_listener("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(\[node\] host"):
            make_listener("127.0.0.1", port)
    finally:
        taken.close()
