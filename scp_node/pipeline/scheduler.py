"""Scheduler ticks: study completion, result delivery and retention (the analysis processes
claim their own jobs: scp_node.pipeline.analysis_pool).

APScheduler's BackgroundScheduler is used only as a ticker; all state lives in the index, so a
restart loses nothing. Each tick runs at most once at a time (`max_instances=1`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from scp_node.config import Config
from scp_node.receive.completion import mark_ready
from storage.index import Index
from storage.instance_store import InstanceStore

if TYPE_CHECKING:  # for the annotation only: receivers do not load the sender
    from scp_node.pipeline.sender import Sender

log = logging.getLogger("lungnode.scheduler")

RETENTION_INTERVAL_SECONDS = 24 * 3600
WATERMARK_INTERVAL_SECONDS = 30.0  # how often free space is compared with emergency_free_mb
ORPHAN_TEMP_AGE_SECONDS = 3600
# a completion check after a release runs this much after the study is due (clock rounding)
COMPLETION_MARGIN_SECONDS = 0.05


def deliver(sender: Sender) -> None:
    sender.deliver_due(time.time())


def retain(index: Index, store: InstanceStore, config: Config) -> None:
    """The daily run: orphaned temp files, then scp_node.pipeline.retention with every rule (the
    same code as `lungnode retention`)."""
    from scp_node.pipeline.retention import run_retention

    removed_temp = store.purge_incoming(ORPHAN_TEMP_AGE_SECONDS)
    if removed_temp:
        log.info("retention removed %d orphaned temp files", removed_temp)
    report = run_retention(config, index, dry_run=False, actor="scheduler")
    if report.removals:
        log.info("retention removed the inputs of %d studies", len(report.removals))


def watermark(index: Index, config: Config) -> None:
    """Between daily runs: only the emergency rule, when free space is below the watermark."""
    from scp_node.pipeline.retention import free_bytes, run_retention
    from storage.retention import RULE_EMERGENCY

    if free_bytes(config.storage.root) >= config.storage.emergency_free_mb * 1024 * 1024:
        return
    run_retention(config, index, dry_run=False, actor="watermark", rules=(RULE_EMERGENCY,))


def _guarded(name: str, func: Callable[..., object], *args: object) -> Callable[[], None]:
    """Wrap a tick so an unexpected error is logged once per tick instead of killing the ticker."""

    def tick() -> None:
        try:
            func(*args)
        except Exception:
            log.exception("%s tick failed", name)

    tick.__name__ = name
    return tick


def check_completion_after(scheduler: BackgroundScheduler, seconds: float) -> None:
    """Run the completion tick once `seconds` from now (a released association's studies are
    due then), besides its interval; a no-op before the scheduler starts or after it stops."""
    if not scheduler.running:
        return
    job = scheduler.get_job("completion")
    if job is None:
        return
    scheduler.add_job(
        job.func,
        "date",
        run_date=datetime.now(UTC) + timedelta(seconds=seconds + COMPLETION_MARGIN_SECONDS),
        misfire_grace_time=None,
    )


def build_scheduler(
    config: Config,
    index: Index,
    store: InstanceStore,
    *,
    sender: Sender | None,
    retention: bool,
) -> BackgroundScheduler:
    """A scheduler with the ticks of this role (receivers run only the completion tick; the
    analysis processes claim their own jobs, scp_node.pipeline.analysis_pool): `sender` adds
    the delivery tick, `retention` the daily retention tick."""
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True})
    every = config.pipeline.tick_seconds
    ticks: list[tuple[str, Callable[[], None], float]] = [
        ("completion", _guarded("completion", mark_ready, index, config), every),
    ]
    if retention:
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
        delivery = _guarded("delivery", deliver, sender)
        ticks.append(("delivery", delivery, every))
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
