"""The instance store's fsync helper in a forked process (as receiver processes may be forked)."""

from __future__ import annotations

import os
from pathlib import Path

from storage.data_sync import DataSync


def test_a_data_sync_works_in_a_process_forked_after_one_ran(tmp_path: Path) -> None:
    """A forked child (receiver processes may be forked) syncs its own files: the sync runs on
    the thread that asks for it, nothing waits on a helper the fork left behind."""
    first = tmp_path / "parent"
    first.write_bytes(b"x")
    DataSync(first).wait()
    child_file = tmp_path / "child"
    child_file.write_bytes(b"y")
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only when its sync completes
        try:
            sync = DataSync(child_file)
            sync.wait()
            os._exit(0 if sync.finished else 1)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
