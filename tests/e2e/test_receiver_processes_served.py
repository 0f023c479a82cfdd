"""[node] receiver_processes in `lungnode serve`: the receivers share the port, store, index and
metrics, spread associations evenly, hold the node's limits together and stop with the node."""

from __future__ import annotations

import os
import socket
import tempfile
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

from scp_node.receive.processes import (
    RUNTIME_PREFIX,
)

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
    while len(node.children()) < 2:  # the spawn helper may be a child too
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
    first = node.children()
    victim = max(first)
    os.kill(victim, 9)
    deadline = time.monotonic() + 30
    while victim in node.children() or len(node.children()) < len(first):
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    while node.log().count("lungnode.receiver: listening") < 3:  # the new one listens too
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    more = [make_ct(tmp_path / f"late-{i}.dcm") for i in range(3)]
    assert run_storescu(more, node.port, called_ae="LUNGNODE").returncode == 0
    assert node.stop() == 0


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


def _associate(port: int, calling_ae: str = "STORESCU") -> object:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title="LUNGNODE")


def _receiver_gauges(web_port: int) -> dict[tuple[str, str], float]:
    """{(connections|associations, receiver number): value} from the console's /metrics."""
    gauges = {}
    for line in _metrics(web_port).splitlines():
        for what in ("connections", "associations"):
            prefix = f'lungnode_receiver_{what}{{receiver="'
            if line.startswith(prefix):
                number = line[len(prefix) :].split('"', 1)[0]
                gauges[(what, number)] = float(line.rsplit(" ", 1)[1])
    return gauges


def _slot_pid(log: str, slot: int) -> int:
    """The pid of the latest receiver process started in `slot`, from the node log."""
    started = [
        line for line in log.splitlines() if f"receiver process started slot={slot} " in line
    ]
    return int(started[-1].rsplit("pid=", 1)[1].split()[0])


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_limits_hold_for_the_node_across_receiver_processes(
    node_process: Callable[..., NodeProcess], processes: int
) -> None:
    """One calling AE holds at most max_associations_per_ae associations and one address at
    most max_pending_per_address idle connections on the whole node, whichever receiver
    process took each; a receiver killed while it holds some has its counts released; the
    console shows each receiver's connections and associations."""
    web_port = free_port()
    node = node_process(
        role="receiver",
        allowed_calling_aets="STORESCU,ECHOSCU",
        overrides={
            "node__receiver_processes": processes,
            "node__max_associations_per_ae": 2,
            "node__max_pending_per_address": 4,
            "node__acse_timeout": 60,
            "web__token": TOKEN,
            "web__port": web_port,
        },
    ).start()
    held: list = []
    idle: list[socket.socket] = []
    try:
        held.append(_associate(node.port))
        accepted = 1
        first = _accepted_on(node, accepted)
        for _ in range(10):  # the second on another receiver (a loaded machine may not spread)
            time.sleep(0.3)  # the receivers publish their counts
            second = _associate(node.port)
            assert second.is_established, node.log()[-3000:]
            accepted += 1
            slot = _accepted_on(node, accepted)
            if slot != first:
                held.append(second)
                break
            second.release()
        assert len(held) == 2, "the second association always went to the first's receiver"
        slots = [first, slot]
        third = _associate(node.port)
        assert third.is_rejected, "a third association of STORESCU was admitted"
        rsp = third.acceptor.primitive
        assert (rsp.result, rsp.result_source, rsp.diagnostic) == (2, 3, 2)  # transient, local
        other = _associate(node.port, "ECHOSCU")
        assert other.is_established, "another calling AE was refused"
        other.release()
        # idle connections from one address: 4 stay open on the whole node, 8 are closed
        for _ in range(12):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.3", 0))
            sock.connect(("127.0.0.1", node.port))
            idle.append(sock)
            time.sleep(0.05)
        time.sleep(1.0)
        open_idle = [s for s in idle if _still_open(s)]
        assert len(open_idle) == 4, f"{len(open_idle)} of 12 idle connections stayed open"
        gauges = _receiver_gauges(web_port)
        assert sum(v for (w, _), v in gauges.items() if w == "associations") == 2, gauges
        assert sum(v for (w, _), v in gauges.items() if w == "connections") == 6, gauges
        assert {n for _, n in gauges} == {str(s) for s in range(1, processes + 1)}
        # SIGKILL the receiver holding the first association: its counts are released
        victim = _slot_pid(node.log(), slots[0])
        listening = node.log().count("lungnode.receiver: listening")
        os.kill(victim, 9)
        deadline = time.monotonic() + 60
        while node.log().count("lungnode.receiver: listening") <= listening:
            assert time.monotonic() < deadline, node.log()[-3000:]
            time.sleep(0.2)
        assert _receiver_gauges(web_port)[("associations", str(slots[0]))] == 0
        again = _associate(node.port)
        assert again.is_established, "the killed receiver's association still counted"
        held.append(again)
        fourth = _associate(node.port)
        assert not fourth.is_established, "more than max_associations_per_ae after the restart"
        assert fourth.is_rejected, f"neither admitted nor rejected:\n{node.log()[-3000:]}"
        for sock in idle:
            sock.close()
        idle = []
        time.sleep(1.0)  # the receivers see the idle connections closed
        for _ in range(6):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.3", 0))
            sock.connect(("127.0.0.1", node.port))
            idle.append(sock)
            time.sleep(0.05)
        time.sleep(1.0)
        assert len([s for s in idle if _still_open(s)]) == 4
    finally:
        for sock in idle:
            sock.close()
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    assert node.stop() == 0


def _accepted_on(node: NodeProcess, number: int) -> int:
    """The receiver that accepted the node's `number`th association (1-based), from its log."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in node.log().splitlines() if "association accepted" in line]
        if len(lines) >= number:
            return int(lines[number - 1].rsplit("receiver=", 1)[1].split()[0])
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.05)


def _still_open(sock: socket.socket) -> bool:
    """True when the node has not closed `sock` (nothing to read, no end of file)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_receivers_stop_when_the_serve_process_is_killed(
    node_process: Callable[..., NodeProcess],
) -> None:
    """A serve process killed alone (SIGKILL) leaves no receiver holding the port."""
    before = set(Path(tempfile.gettempdir()).glob(f"{RUNTIME_PREFIX}*"))
    node = node_process(role="receiver", overrides={"node__receiver_processes": 2}).start()
    assert node.pid is not None
    runtime = set(Path(tempfile.gettempdir()).glob(f"{RUNTIME_PREFIX}*")) - before
    assert len(runtime) == 1, runtime
    receivers = node.children()
    assert len(receivers) >= 2
    os.kill(node.pid, 9)
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in receivers):
        assert time.monotonic() < deadline, f"receivers still running:\n{node.log()[-3000:]}"
        time.sleep(0.2)
    node.stop()
    assert all(folder.exists() for folder in runtime), "SIGKILL leaves the folder: nobody cleaned"
    node.start()  # the port is free again
    assert not any(folder.exists() for folder in runtime), "the dead node's folder is still there"
    assert node.stop() == 0


def _alive(pid: int) -> bool:
    """True while `pid` runs (not a zombie)."""
    try:
        return " Z " not in open(f"/proc/{pid}/stat").read().split(")", 1)[1][:4]
    except OSError:
        return False
