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
from scp_node.pipeline.priority import lower_own_session, lower_this_process
nice = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
seen, go_on = {}, threading.Event()
def other():
    seen["other"] = nice()
    def started_later(): seen["started by it"] = nice()
    t = threading.Thread(target=started_later); t.start(); t.join()
started_before = threading.Thread(target=go_on.wait); started_before.start()
lower_this_process(7)
seen["main"] = nice()
seen["started before, process lowered"] = os.getpriority(os.PRIO_PROCESS, started_before.native_id)
go_on.set(); started_before.join()
t = threading.Thread(target=other); t.start(); t.join()
lower_this_process(3); seen["main after 3"] = nice()
lower_this_process(0); seen["main after 0"] = nice()
lower_own_session(12)
seen["session"] = os.getsid(0) == os.getpid()
seen["autogroup"] = open("/proc/self/autogroup").read().split()[-1]
print(json.dumps(seen))
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
    assert seen["main"] == 7 and seen["other"] == 7 and seen["started by it"] == 7
    assert seen["main after 3"] == 7 and seen["main after 0"] == 7  # never raised again
    # a session of its own whose autogroup (the kernel's first level of CPU sharing) is lowered
    assert seen["started before, process lowered"] == 7
    assert seen["session"] is True and seen["autogroup"] == "12"
