"""[pipeline] analysis_nice: the analysis yields the CPU to receiving
(scp_node.pipeline.priority)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from node_process import NodeProcess

REPO = Path(__file__).resolve().parents[2]

# run in a child: a nice value, once raised, cannot be lowered again by this test process
_THREADS = """
import json, os, threading
from scp_node.pipeline.priority import lower_threads, lower_this_thread
nice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
seen, go, done = {}, threading.Event(), threading.Event()
def other():
    go.wait(); seen["other"] = nice()
    def started_later(): seen["started by it"] = nice()
    t = threading.Thread(target=started_later); t.start(); t.join(); done.set()
t = threading.Thread(target=other); t.start()
lowered = lower_threads(7, frozenset({threading.get_native_id()}))
seen["main"] = nice(); go.set(); done.wait(); t.join()
lower_this_thread(3); seen["main after 3"] = nice()
lower_this_thread(0); seen["main after 0"] = nice()
print(json.dumps({"lowered": lowered, **seen}))
"""


def test_lowered_threads_and_the_threads_they_start_keep_the_nice_value() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _THREADS],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    seen = json.loads(out.stdout)
    assert seen["lowered"] == 1  # the other thread, not the main one it was told to keep
    assert seen["main"] == 0 and seen["other"] == 7 and seen["started by it"] == 7
    assert seen["main after 3"] == 3 and seen["main after 0"] == 3  # 0: off, never raised


def _nice_of_threads(pid: int) -> dict[int, int]:
    """Thread id -> nice value of every thread of process `pid` (field 19 of its stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        values[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return values


@pytest.mark.slow
def test_the_serve_process_analyses_at_lower_priority_than_its_receivers(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process(overrides={"node__receiver_processes": 2}).start()
    assert node.pid is not None
    serve = _nice_of_threads(node.pid)
    assert serve.pop(node.pid) == 0, "the main thread (restarts receivers) keeps its priority"
    assert serve and set(serve.values()) == {10}, serve  # [pipeline] analysis_nice
    receivers = [pid for pid in node.children() if len(_nice_of_threads(pid)) > 1]
    assert len(receivers) >= 2
    for pid in receivers:
        assert set(_nice_of_threads(pid).values()) == {0}, f"receiver {pid} was lowered"
        # a session (so an autogroup) of its own: the busy analysis's session does not delay it
        assert os.getsid(pid) == pid != os.getsid(node.pid)
    assert node.stop() == 0
