"""[pipeline] analysis_nice in `lungnode serve`: the analysis process runs at a lower priority
than the receivers, in a session (autogroup) of its own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from node_process import NodeProcess


def _nice_of_threads(pid: int) -> dict[int, int]:
    """Thread id -> nice value of every thread of process `pid` (field 19 of its stat); a
    thread that ends while it is read (threads come and go) is left out."""
    values: dict[int, int] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):  # the process ended
        return values
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        values[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return values


def _autogroup_nice(pid: int) -> int:
    """The nice value of process `pid`'s autogroup (its session's share of the CPU)."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


@pytest.mark.slow
def test_the_analysis_process_runs_at_lower_priority_than_the_receivers(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process(overrides={"node__receiver_processes": 2}).start()
    assert node.pid is not None
    serve = _nice_of_threads(node.pid)
    assert set(serve.values()) == {0}, "the serve process (console, supervision) keeps its priority"
    workers = [pid for pid in node.children() if len(_nice_of_threads(pid)) > 1]
    receivers = [pid for pid in workers if set(_nice_of_threads(pid).values()) == {0}]
    analyses = [pid for pid in workers if pid not in receivers]
    assert len(receivers) == 2 and len(analyses) == 1, (receivers, analyses)
    # [pipeline] analysis_nice: every thread, and the session's autogroup, which Linux weighs
    # before nice values count within it
    assert set(_nice_of_threads(analyses[0]).values()) == {10}
    assert os.getsid(analyses[0]) == analyses[0] and _autogroup_nice(analyses[0]) == 10
    for pid in receivers:
        # sessions of their own too, at the autogroup's default weight
        assert os.getsid(pid) == pid != os.getsid(node.pid)
        assert _autogroup_nice(pid) == 0
    assert node.stop() == 0
