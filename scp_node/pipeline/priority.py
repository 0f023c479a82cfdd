"""The analysis yields the CPU to receiving: [pipeline] analysis_nice.

A study's analysis (TensorFlow's threads, the imaging in numpy/scipy) can take every core for
seconds to minutes, while a sender waits for each C-STORE answer. Linux schedules threads, and
the nice value is per thread, inherited by the threads and processes a thread starts; an
unprivileged process can raise it but never lower it again. So:

- an analysis process (scp_node.pipeline.analysis_pool) lowers its own priority before it loads
  TensorFlow (`lower_this_process`: every thread it has, and what they start inherits it), in a
  session of its own whose autogroup it lowers too (`lower_own_session`). With Linux's
  autogroup scheduling (sched_autogroup_enabled, on in most kernels) the CPU is first shared
  between sessions and nice values count only within one: an analysis at nice 19 in a session
  at the autogroup's default weight still took a receiver's share (measured: nice 0 / 10 / 19
  and SCHED_IDLE in the serve process's session barely changed a busy node's ingest);
- the analysis never runs in the serve process's threads (scp_node.app.service), whose session
  keeps its weight: lowered, its console, scheduler and shutdown starved behind other sessions
  on a busy machine (a node took over 60 s to stop). The receivers run in sessions of their
  own (scp_node.receive.processes) at the node's priority.

Priority is not all: while associations are open the analysis also pauses
(scp_node.pipeline.analysis_yield).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("lungnode.priority")


def _lower(tid: int, nice: int) -> bool:
    """Set thread `tid`'s nice value to `nice` unless it is that low already."""
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return True
    except OSError:  # the thread ended meanwhile
        return False


def lower_this_process(nice: int) -> None:
    """Give every thread of this process nice value `nice` (0: off): those started before this
    call (by imports) too; the ones started later inherit it from the threads that start them."""
    if nice <= 0:
        return
    try:
        tids = [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the calling thread only
        tids = [threading.get_native_id()]
    for tid in tids:
        _lower(tid, nice)


def lower_own_session(nice: int) -> None:
    """Run this process in a session of its own and give that session's autogroup nice value
    `nice` (0: off), so the kernel weighs the whole process, not only its threads within
    their session, below the receivers. A kernel without autogroups keeps the thread nice."""
    if nice <= 0:
        return
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    try:
        Path("/proc/self/autogroup").write_text(f"{nice}\n")
    except OSError as exc:  # no autogroup scheduling (or no /proc): the thread nice remains
        log.debug("autogroup nice not set: %s", exc)
