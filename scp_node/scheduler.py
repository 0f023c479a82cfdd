"""Scheduler ticks: study completion, analysis, result delivery and retention.

APScheduler's BackgroundScheduler is used only as a ticker; all state lives in the index, so a
restart loses nothing. Each tick runs at most once at a time (`max_instances=1`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from scp_node.config import Config
from storage.index import Index
from storage.instance_store import InstanceStore

if TYPE_CHECKING:  # the worker imports TensorFlow: receivers must not pay for it
    from scp_node.sender import Sender
    from scp_node.worker import AnalysisWorker

log = logging.getLogger("lungnode.scheduler")

RETENTION_INTERVAL_SECONDS = 24 * 3600
WATERMARK_INTERVAL_SECONDS = 30.0  # how often free space is compared with emergency_free_mb
ORPHAN_TEMP_AGE_SECONDS = 3600


def mark_ready(index: Index, config: Config) -> None:
    """Move quiet or complete studies to READY and enqueue their analysis job."""
    for study_uid in index.mark_ready(time.time(), config.pipeline.study_quiet_seconds):
        log.info("study ready study=%s", study_uid)


def run_worker(worker: AnalysisWorker, paused: Callable[[], bool] | None = None) -> None:
    """Process every waiting job, one after another (none while analysis is paused)."""
    while not (paused is not None and paused()) and worker.run_once():
        pass


def deliver(sender: Sender) -> None:
    sender.deliver_due(time.time())


def retain(index: Index, store: InstanceStore, config: Config) -> None:
    """The daily run: orphaned temp files, then scp_node.retention_runner with every rule (the
    same code as `lungnode retention`)."""
    from scp_node.retention_runner import run_retention

    removed_temp = store.purge_incoming(ORPHAN_TEMP_AGE_SECONDS)
    if removed_temp:
        log.info("retention removed %d orphaned temp files", removed_temp)
    report = run_retention(config, index, dry_run=False, actor="scheduler")
    if report.removals:
        log.info("retention removed the inputs of %d studies", len(report.removals))


def watermark(index: Index, config: Config) -> None:
    """Between daily runs: only the emergency rule, when free space is below the watermark."""
    from scp_node.retention_runner import free_bytes, run_retention
    from storage.retention import RULE_EMERGENCY

    if free_bytes(config.storage.root) >= config.storage.emergency_free_mb * 1024 * 1024:
        return
    run_retention(config, index, dry_run=False, actor="watermark", rules=(RULE_EMERGENCY,))


def _guarded(name: str, func: Callable[..., None], *args: object) -> Callable[[], None]:
    """Wrap a tick so an unexpected error is logged once per tick instead of killing the ticker."""

    def tick() -> None:
        try:
            func(*args)
        except Exception:
            log.exception("%s tick failed", name)

    tick.__name__ = name
    return tick


def build_scheduler(
    config: Config,
    index: Index,
    store: InstanceStore,
    *,
    worker: AnalysisWorker | None,
    sender: Sender | None,
    analysis_paused: Callable[[], bool] | None = None,
    retention: bool | None = None,
) -> BackgroundScheduler:
    """A scheduler with the ticks of this role (receivers run only the completion tick).
    `worker` None: no analysis tick (none in this role, or analysis processes claim their own
    jobs); `retention` (default: with a worker) adds the daily retention tick."""
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True})
    every = config.pipeline.tick_seconds
    ticks: list[tuple[str, Callable[[], None], float]] = [
        ("completion", _guarded("completion", mark_ready, index, config), every),
    ]
    if worker is not None:
        ticks.append(("analysis", _guarded("analysis", run_worker, worker, analysis_paused), every))
    if retention if retention is not None else worker is not None:
        ticks.append(
            (
                "retention",
                _guarded("retention", retain, index, store, config),
                RETENTION_INTERVAL_SECONDS,
            )
        )
        if config.storage.emergency_free_mb > 0:
            ticks.append(
                (
                    "watermark",
                    _guarded("watermark", watermark, index, config),
                    WATERMARK_INTERVAL_SECONDS,
                )
            )
    if sender is not None:
        ticks.append(("delivery", _guarded("delivery", deliver, sender), every))
    for name, func, seconds in ticks:
        scheduler.add_job(
            func,
            "interval",
            seconds=seconds,
            id=name,
            max_instances=1,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
    return scheduler
