"""[pipeline] analysis_share_while_receiving in `lungnode serve`: the analysis process is paused
while an association is open on the node and runs again after it, a paused job keeps its
lease, and a node stops cleanly while its analysis is paused."""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dcmtk import run_storescu
from node_process import NodeProcess, PhantomFiles
from ports import free_port
from pynetdicom import AE
from pynetdicom.sop_class import Verification

TOKEN = "test-token-analysis-yield-0123456789"
WAIT_SECONDS = 30.0  # generous: the machine may be busy; no speed is asserted


def _state(pid: int) -> str:
    """The scheduler state of process `pid` (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _analysis_pid(node: NodeProcess) -> int:
    """The node's analysis process: its spawned child that is not multiprocessing's helper
    and runs the analysis pool."""
    for pid in node.children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            return pid
    raise AssertionError(f"no analysis process among {node.children()}:\n{node.log()[-3000:]}")


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS:g} s: {what}"
        time.sleep(0.02)


def _metric(port: int, name: str) -> float:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name))


def _states(status: dict[str, Any]) -> list[str]:
    """Each study's state, a study done with no destination (these tests have none) as DONE."""
    done = ("REPORTED", "DELIVERED")
    return ["DONE" if s["state"] in done else s["state"] for s in status["studies"]]


def _running_leases_left(node: NodeProcess) -> list[float]:
    """Seconds left on the lease of each running analysis job, read from the node's index."""
    db = sqlite3.connect(f"file:{node.store / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT lease_until FROM jobs WHERE state = 'RUNNING'").fetchall()
    finally:
        db.close()
    now = time.time()
    return [float(until) - now for (until,) in rows]


@contextmanager
def _association(port: int) -> Iterator[Any]:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="LUNGNODE")
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def _node(node_process: Callable[..., NodeProcess], **overrides: object) -> tuple[NodeProcess, int]:
    """A started node with its console on a free port; (node, the console's port)."""
    web_port = free_port()
    node = node_process(overrides={"web__token": TOKEN, "web__port": web_port, **overrides})
    return node.start(), web_port


@pytest.mark.slow
def test_the_analysis_pauses_while_an_association_is_open_runs_after_it_and_stops_paused(
    node_process: Callable[..., NodeProcess],
) -> None:
    node, web_port = _node(node_process, node__receiver_processes=2)
    analysis = _analysis_pid(node)
    assert _state(analysis) != "T"
    with _association(node.port) as assoc:
        _wait(lambda: _state(analysis) == "T", "the analysis process stopped")
        assert assoc.send_c_echo().Status == 0x0000  # receiving goes on meanwhile
        assert _metric(web_port, "lungnode_analysis_paused ") == 1
    _wait(lambda: _state(analysis) != "T", "the analysis process running again")
    assert _metric(web_port, "lungnode_analysis_paused ") == 0
    assert _metric(web_port, "lungnode_analysis_paused_seconds_total") > 0
    # paused again, the node stops cleanly (one node for both: each start loads the model)
    with _association(node.port):
        _wait(lambda: _state(analysis) == "T", "the analysis process stopped again")
        assert node.stop() == 0  # the association is aborted by the draining node
    assert not Path(f"/proc/{analysis}").exists() or _state(analysis) == "Z"


@pytest.mark.slow
def test_a_job_paused_longer_than_its_lease_keeps_it_and_is_reported(
    node_process: Callable[..., NodeProcess],
    phantom_ct: PhantomFiles,
    phantom_pet_ct: PhantomFiles,
) -> None:
    # a 6 s lease, renewed every 2 s while a study is analysed; an association held open from
    # before the study is ready pauses its whole analysis, three leases long
    node, _ = _node(node_process, pipeline__job_lease_seconds=6, pipeline__study_quiet_seconds=1)
    analysis = _analysis_pid(node)
    # a first study, analysed unpaused: the analysis process's one-time warm-up is behind it
    warm = run_storescu(phantom_ct.files, node.port, called_ae="LUNGNODE")
    assert warm.returncode == 0, warm.stderr
    node.wait_for(lambda s: _states(s) == ["DONE"], 120, "the first study reported")
    paused_while_analysing = 0
    lease_left: list[float] = []
    with _association(node.port):
        sent = run_storescu(phantom_pet_ct.files, node.port, called_ae="LUNGNODE")
        assert sent.returncode == 0, sent.stderr
        held_until = time.monotonic() + 18.0
        while time.monotonic() < held_until:
            running = _running_leases_left(node)
            lease_left += running
            paused_while_analysing += bool(running) and _state(analysis) == "T"
            time.sleep(0.05)
    assert lease_left and min(lease_left) > 0, "a running job's lease ran out while paused"
    assert paused_while_analysing, (
        "the analysis was never seen paused while the association was open"
    )
    node.wait_for(lambda s: _states(s) == ["DONE", "DONE"], 120, "both reported")
    log = node.log()
    assert "lease lost" not in log and "result discarded" not in log, log[-3000:]
    assert "analysis done" in log
    assert node.stop() == 0
