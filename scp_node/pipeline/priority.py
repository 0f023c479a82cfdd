"""The analysis yields the CPU to receiving: [pipeline] analysis_nice.

A study's analysis (TensorFlow's threads, the imaging in numpy/scipy) can take every core for
seconds to minutes, while a sender waits for each C-STORE answer. Linux schedules threads, and
the nice value is per thread, inherited by the threads and processes a thread starts; an
unprivileged process can raise it but never lower it again. So:

- an analysis process (scp_node.pipeline.analysis_pool) lowers its own priority before it loads
  TensorFlow (`lower_this_thread` in its only thread: everything it starts inherits it);
- the serve process with receiver processes lowers every thread but its main one
  (`lower_threads`): it receives nothing itself, and its main thread, which restarts a
  receiver that died, keeps the priority the receivers are started with. With Linux's
  autogroup scheduling the CPU is first shared between sessions (nice values count only
  within one), so the receivers run in sessions of their own (scp_node.receive.processes).
  The serve process's session keeps its weight: lowered too, its console, scheduler and
  shutdown starved behind other sessions on a busy machine (a node took over 60 s to stop);
- with the receiver in the serve process (receiver_processes = 1), only the thread that runs
  the analysis is lowered (TensorFlow's threads made at model load keep theirs).
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


def lower_this_thread(nice: int) -> None:
    """Give the calling thread (and what it starts from now on) nice value `nice` (0: off)."""
    if nice > 0:
        _lower(threading.get_native_id(), nice)


def lower_threads(nice: int, keep: frozenset[int] = frozenset()) -> int:
    """Give every thread of this process but the native ids `keep` nice value `nice` (0: off);
    returns how many were lowered."""
    if nice <= 0:
        return 0
    try:
        tids = [int(name) for name in os.listdir(Path("/proc/self/task"))]
    except OSError:  # not Linux: the calling thread only
        lower_this_thread(nice)
        return 1
    lowered = sum(_lower(tid, nice) for tid in tids if tid not in keep)
    log.info("analysis priority: %d threads of the serve process at nice %d", lowered, nice)
    return lowered
