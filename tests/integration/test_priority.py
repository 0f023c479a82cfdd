"""[pipeline] analysis_nice: the analysis yields the CPU to receiving
(scp_node.pipeline.priority)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
