"""When a study has fully arrived: quiet long enough, released by its sender, or complete.

Called by the scheduler's completion tick and, in receiver processes, shortly after an
association that brought a study is released.
"""

from __future__ import annotations

import logging
import time

from scp_node.config import Config
from storage.index import Index

log = logging.getLogger("lungnode.scheduler")


def mark_ready(index: Index, config: Config) -> list[str]:
    """Move quiet, released or complete studies to READY and enqueue their analysis job."""
    pipeline = config.pipeline
    ready = index.mark_ready(
        time.time(), pipeline.study_quiet_seconds, pipeline.release_quiet_seconds
    )
    for study_uid in ready:
        log.info("study ready study=%s", study_uid)
    return ready
