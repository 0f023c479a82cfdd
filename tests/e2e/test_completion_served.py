"""Completion on release through `lungnode serve --role receiver`: a study storescu released is
READY within seconds, not after study_quiet_seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dcmtk import run_storescu
from in_process import make_ct
from node_process import NodeProcess


def test_node_marks_study_ready_soon_after_storescu_releases(
    node_process: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """The real `serve --role receiver`, study_quiet_seconds 60: READY within seconds of the
    release (release_quiet_seconds 1), not after the quiet window."""
    node = node_process(
        role="receiver",
        quiet_seconds=60,
        overrides={"pipeline__release_quiet_seconds": 1, "pipeline__tick_seconds": 30},
    ).start()
    study = "1.2.826.0.1.3680043.8.498.81"
    files = [make_ct(tmp_path / f"ct{i}.dcm", study_uid=study) for i in range(2)]
    result = run_storescu(files, node.port, called_ae=node.ae_title)
    assert result.returncode == 0, result.stderr
    released = time.monotonic()
    node.wait_for(lambda s: [x["state"] for x in s["studies"]] == ["READY"], 20, "READY")
    # tick_seconds 30: only the check the release asked for can have made it READY
    assert time.monotonic() - released < 15
