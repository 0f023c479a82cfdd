"""The instance store's fsync helper in a forked process (as receiver processes may be forked)."""

from __future__ import annotations

import os
from pathlib import Path

from storage.data_sync import DataSync


def test_a_data_sync_works_in_a_process_forked_after_one_ran(tmp_path: Path) -> None:
    """The helper threads are not inherited by a forked child (receiver processes may be
    forked): the child starts its own instead of queueing work nobody runs."""
    first = tmp_path / "parent"
    first.write_bytes(b"x")
    DataSync(first).wait()  # the parent's pool exists now
    child_file = tmp_path / "child"
    child_file.write_bytes(b"y")
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when its sync completes
        try:
            sync = DataSync(child_file)
            sync._future.result(timeout=10)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
