"""Retention runs: the daily tick, the emergency watermark tick, `lungnode retention` and the
console's dry run all call `run_retention`, so what a dry run lists is what a run removes.

Rules ([storage]): `retention_days` removes the inputs of studies delivered longer ago than
that; `emergency_free_mb` removes the oldest delivered studies first, whatever their age, while
free space on the store is below it, re-measuring free space after each study. Only studies
whose every result object was accepted by every destination qualify (storage.retention); a
study whose results had no destination is kept unless `retention_without_destination = remove`.

Every removal writes one audit line (DICOM Study Deleted, with who ran it, the rule and why) and
an `inputs_removed` event on the study's timeline, and logs one line.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scp_node.config import Config
from storage.index import Index
from storage.retention import (
    RULE_AGE,
    RULE_EMERGENCY,
    RULES,
    Removal,
    emergency_reason,
    plan,
    removal_of,
    remove_input_files,
)

log = logging.getLogger("lungnode.retention")


def free_bytes(root: Path) -> int:
    """Free bytes on the file system of the store (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return 0


@dataclass
class RetentionReport:
    """What one run removed (or a dry run would remove), and what it kept and why."""

    dry_run: bool
    actor: str
    now: float
    free_bytes: int
    emergency_free_bytes: int
    retention_days: int
    removals: list[Removal] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "actor": self.actor,
            "now": self.now,
            "free_bytes": self.free_bytes,
            "emergency_free_bytes": self.emergency_free_bytes,
            "retention_days": self.retention_days,
            "removals": [r.as_dict() for r in self.removals],
            "held": dict(self.held),
            "errors": list(self.errors),
        }


def run_retention(
    config: Config,
    index: Index,
    *,
    dry_run: bool,
    actor: str,
    rules: Iterable[str] = RULES,
    audit: Any | None = None,  # scp_node.ops.audit.AuditLog; opened on the first removal if None
    now: float | None = None,
    free: Callable[[], int] | None = None,
) -> RetentionReport:
    """Plan and (unless `dry_run`) carry out one retention run; see the module docstring."""
    storage = config.storage
    rules = tuple(rules)
    now = time.time() if now is None else now
    measure = free or (lambda: free_bytes(storage.root))
    emergency = storage.emergency_free_mb * 1024 * 1024
    studies = index.retention.studies_with_inputs()
    files: dict[str, list[tuple[str, Path]]] = {}

    def inputs(uid: str) -> list[tuple[str, Path]]:
        if uid not in files:
            files[uid] = index.retention.input_files(uid)
        return files[uid]

    def size_of(uid: str) -> int:
        total = 0
        for _, path in inputs(uid):
            try:
                total += path.stat().st_size
            except OSError:
                continue
        return total

    free_now = measure()
    the_plan = plan(
        studies,
        now=now,
        retention_days=storage.retention_days,
        remove_without_destination=storage.retention_without_destination == "remove",
        size_of=size_of,
        free_bytes=free_now,
        emergency_free_bytes=emergency,
        rules=rules,
    )
    report = RetentionReport(
        dry_run=dry_run,
        actor=actor,
        now=now,
        free_bytes=free_now,
        emergency_free_bytes=emergency,
        retention_days=storage.retention_days,
        held=the_plan.held,
    )
    if dry_run:
        report.removals = the_plan.removals
        return report
    opened: Any | None = None

    def carry_out(removal: Removal) -> None:
        nonlocal opened
        try:
            done = _remove(config, index, removal, inputs(removal.study_uid), actor)
        except Exception as exc:  # one study's trouble must not stop the others
            log.exception("retention could not remove study=%s", removal.study_uid)
            report.errors.append(f"{removal.study_uid}: {type(exc).__name__}: {exc}")
            return
        if done is None:
            return
        report.removals.append(done)
        if audit is None and opened is None:
            opened = _open_audit(config)
        log_to = audit or opened
        if log_to is not None:
            log_to.study_inputs_deleted(
                actor,
                study_uid=done.study_uid,
                rule=done.rule,
                reason=done.reason,
                instances=done.instances,
                bytes=done.bytes,
            )

    try:
        aged = [r for r in the_plan.removals if r.rule == RULE_AGE]
        for removal in aged:
            carry_out(removal)
        if RULE_EMERGENCY in set(rules) and emergency > 0:
            # Free space is measured again before each study (the planned sizes are only an
            # estimate: hard links, other writers), oldest delivered first.
            done_uids = {r.study_uid for r in aged}
            for s in the_plan.removable:
                if s.study_uid in done_uids:
                    continue
                free_now = measure()
                if free_now >= emergency:
                    break  # space is back above the watermark: the younger studies stay
                carry_out(
                    removal_of(
                        s,
                        now=now,
                        size=size_of(s.study_uid),
                        rule=RULE_EMERGENCY,
                        reason=emergency_reason(free_now, emergency),
                    )
                )
    finally:
        if opened is not None:
            opened.close()
    return report


def _remove(
    config: Config, index: Index, removal: Removal, files: list[tuple[str, Path]], actor: str
) -> Removal | None:
    """Remove one study's inputs when it still qualifies; None when it no longer does."""
    current = index.retention.study_inputs(removal.study_uid)
    remove_without = config.storage.retention_without_destination == "remove"
    if current is None or current.hold(remove_without_destination=remove_without) is not None:
        log.info(
            "retention skips study=%s: it changed since it was chosen (%s)",
            removal.study_uid,
            "gone" if current is None else current.hold(remove_without_destination=remove_without),
        )
        return None
    freed = remove_input_files(config.storage.root, [path for _, path in files])
    index.retention.forget_inputs(
        removal.study_uid,
        [sop for sop, _ in files],
        rule=removal.rule,
        reason=removal.reason,
        freed_bytes=freed,
        actor=actor,
    )
    log.info(
        "retention removed the inputs of study=%s instances=%d bytes=%d rule=%s actor=%s",
        removal.study_uid,
        len(files),
        freed,
        removal.rule,
        actor,
    )
    return replace(removal, bytes=freed, instances=len(files), removed=True)


def _open_audit(config: Config) -> Any | None:
    from scp_node.ops.audit import AuditLog

    path = config.security.audit_log or config.storage.root / "audit.log"
    try:
        return AuditLog(path, config.node.ae_title)
    except OSError as exc:
        log.error("retention: %s", exc)
        return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_report(report: RetentionReport, escape: Callable[[str, int], str]) -> str:
    """The report as the CLI prints it: one line per study, then what was kept and why."""
    e = escape
    verb = "would remove" if report.dry_run else "removed"
    lines = [
        f"retention {'dry run' if report.dry_run else 'run'}: retention_days = "
        f"{report.retention_days or 'off'}, free {_size(report.free_bytes)}, emergency_free_mb = "
        + (f"{report.emergency_free_bytes // 2**20}" if report.emergency_free_bytes else "off"),
        f"{'STUDY INSTANCE UID':<64} {'ACCESSION':<16} {'STATE':<10} {'AGE (d)':>7} "
        f"{'INST':>5} {'SIZE':>10}  RULE / WHY",
    ]
    for r in report.removals:
        lines.append(
            f"{e(r.study_uid, 64):<64} {e(r.accession_number, 16):<16} {e(r.state, 10):<10} "
            f"{r.age_days:>7.1f} {r.instances:>5} {_size(r.bytes):>10}  "
            f"{r.rule}: {e(r.reason, 200)}"
        )
    total = sum(r.bytes for r in report.removals)
    lines.append(
        f"{verb} the received instances of {len(report.removals)} stud"
        f"{'y' if len(report.removals) == 1 else 'ies'} ({_size(total)})"
    )
    if report.held:
        kept = ", ".join(f"{n} ({why})" for why, n in sorted(report.held.items()))
        lines.append(f"kept: {kept}")
    for error in report.errors:
        lines.append(f"error: {e(error, 300)}")
    return "\n".join(lines)
