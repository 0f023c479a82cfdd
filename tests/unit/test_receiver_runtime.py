"""The serve process's runtime folder (what its receiver processes share): one left by a serve
process that died without cleaning is removed by the next, a live one's never."""

from __future__ import annotations

import os
from pathlib import Path

from scp_node.receive.processes import (
    OWNER_LOCK,
    RUNTIME_PREFIX,
    hold_owner_lock,
    remove_orphaned_runtimes,
)


def test_orphaned_runtime_folders_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """Only this user's runtime folders whose owner lock nobody holds are removed."""
    live = tmp_path / f"{RUNTIME_PREFIX}live"
    dead = tmp_path / f"{RUNTIME_PREFIX}dead"
    unowned = tmp_path / f"{RUNTIME_PREFIX}no-lock"
    other = tmp_path / "lungnode-other"
    for folder in (live, dead, unowned, other):
        folder.mkdir()
        (folder / "counts.lock").touch()
    (dead / OWNER_LOCK).touch()
    (other / OWNER_LOCK).touch()
    (tmp_path / f"{RUNTIME_PREFIX}link").symlink_to(dead)
    held = hold_owner_lock(live)  # a second open file: flock conflicts as with another process
    try:
        assert remove_orphaned_runtimes(tmp_path) == [dead]
    finally:
        os.close(held)
    assert live.exists() and unowned.exists() and other.exists() and not dead.exists()
    assert remove_orphaned_runtimes(tmp_path) == [live]
