"""[pipeline] analysis_nice in `lungnode serve`: the analysis runs at a lower priority than the
receivers."""

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
