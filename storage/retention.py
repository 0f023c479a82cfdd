"""Retention: which studies' inputs may go, why, and removing them.

A study's *inputs* are the instances the node received (the PACS or scanner that sent them keeps
its own copy). They may be removed only when the study is DELIVERED and no result of any version
waits: no PENDING row (still being sent) and no DEAD row (a dead letter a person may resend) in
the outbox, so a study is never removed while a destination has not accepted every result. A
study whose current version had no destination at all (shown "DONE (no destination)") is kept
unless the caller allows it (`remove_without_destination`): its results never left the node,
and analysing it again after the routing is fixed needs its inputs.

The node's own result objects, the study row and its timeline stay: the console still shows the
study, its findings and what happened to it, and the result files are a small fraction of the
inputs. A removal deletes the files first and then, in one transaction, their instance rows
and an `inputs_removed` event on the study's timeline; a crash between the two leaves rows of
missing files, which the next run removes again (removing a missing file is no error).

Which studies go (age past `retention_days`, or the oldest delivered first while free space is
below the emergency watermark) is the policy of `scp_node.pipeline.retention`; `plan` here is the
pure part of it, so that tests and the dry run see exactly what a run would do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage import events
from storage.database import Cursor, Database
from storage.queries import load
from storage.states import OutboxState, StudyState
from storage.uids import require_uid

RULE_AGE = "retention_days"
RULE_EMERGENCY = "emergency_free_mb"
RULES = (RULE_AGE, RULE_EMERGENCY)

# Why a study with inputs is kept (the keys of Plan.held).
HELD_NOT_DELIVERED = "not delivered yet"
HELD_DEAD_LETTERS = "dead-letter results"
HELD_PENDING = "results still being sent"
HELD_NO_DESTINATION = "results have no destination"
HELD_TOO_RECENT = "delivered within retention_days"


@dataclass(frozen=True)
class StudyInputs:
    """A study whose received instances are still in the index, and what its results wait for."""

    study_uid: str
    accession_number: str
    state: str
    delivered_at: float  # updated_at: when a DELIVERED study became DELIVERED
    version: int
    outbox_rows: int  # of the current version; 0 means its results had no destination
    pending: int  # PENDING (or COMMITTING: commitment not yet come) outbox rows of any version
    dead: int  # DEAD outbox rows (dead letters) of any version
    instances: int

    def hold(self, *, remove_without_destination: bool) -> str | None:
        """Why its inputs must stay whatever its age (None: they may go)."""
        if self.dead:
            return HELD_DEAD_LETTERS
        if self.pending:
            return HELD_PENDING
        if self.state != StudyState.DELIVERED:
            return HELD_NOT_DELIVERED
        if self.outbox_rows == 0 and not remove_without_destination:
            return HELD_NO_DESTINATION
        return None


@dataclass(frozen=True)
class Removal:
    """One study whose inputs a run removes (or, in a dry run, would remove), and why."""

    study_uid: str
    accession_number: str
    state: str
    delivered_at: float
    age_days: float
    instances: int
    bytes: int
    rule: str  # RULE_AGE or RULE_EMERGENCY
    reason: str  # a sentence a person reads
    removed: bool = False  # set by a run that removed it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """What a retention run removes, oldest delivered first, and how many studies it keeps
    for each reason."""

    removals: list[Removal]
    held: dict[str, int]
    removable: list[StudyInputs]  # every study whose inputs may go, oldest delivered first


def removal_of(s: StudyInputs, *, now: float, size: int, rule: str, reason: str) -> Removal:
    """The Removal of study `s` whose input files hold `size` bytes."""
    return Removal(
        study_uid=s.study_uid,
        accession_number=s.accession_number,
        state=s.state,
        delivered_at=s.delivered_at,
        age_days=max(0.0, (now - s.delivered_at) / 86400.0),
        instances=s.instances,
        bytes=size,
        rule=rule,
        reason=reason,
    )


def age_reason(days: float, retention_days: int) -> str:
    return f"delivered {days:.1f} days ago, past retention_days = {retention_days}"


def emergency_reason(free_bytes: int, emergency_free_bytes: int) -> str:
    return (
        f"free space {free_bytes // 2**20} MiB below emergency_free_mb = "
        f"{emergency_free_bytes // 2**20}: the oldest delivered study goes first"
    )


def plan(
    studies: Iterable[StudyInputs],
    *,
    now: float,
    retention_days: int,
    remove_without_destination: bool,
    size_of: Callable[[str], int],
    free_bytes: int | None = None,
    emergency_free_bytes: int = 0,
    rules: Iterable[str] = RULES,
) -> Plan:
    """The removals of one run.

    `retention_days` > 0: every removable study delivered more than that many days ago.
    `emergency_free_bytes` > 0 and `free_bytes` below it: then the oldest delivered removable
    studies, whatever their age, until the bytes freed (by `size_of(study_uid)`, the size of
    its input files) bring free space back to the watermark. `rules` limits the run to some.
    """
    rules = set(rules)
    unknown = rules - set(RULES)
    if unknown:
        raise ValueError(f"retention rules {sorted(unknown)}: expected some of {RULES}")
    removals: list[Removal] = []
    held: dict[str, int] = {}
    removable: list[StudyInputs] = []
    for s in sorted(studies, key=lambda s: (s.delivered_at, s.study_uid)):
        why = s.hold(remove_without_destination=remove_without_destination)
        if why is None:
            removable.append(s)
        else:
            held[why] = held.get(why, 0) + 1
    sizes: dict[str, int] = {}

    def size(uid: str) -> int:
        if uid not in sizes:
            sizes[uid] = size_of(uid)
        return sizes[uid]

    def removal(s: StudyInputs, rule: str, reason: str) -> Removal:
        return removal_of(s, now=now, size=size(s.study_uid), rule=rule, reason=reason)

    chosen: set[str] = set()
    if RULE_AGE in rules and retention_days > 0:
        cutoff = now - retention_days * 86400.0
        for s in removable:
            if s.delivered_at < cutoff:
                days = (now - s.delivered_at) / 86400.0
                removals.append(removal(s, RULE_AGE, age_reason(days, retention_days)))
                chosen.add(s.study_uid)
    if RULE_EMERGENCY in rules and emergency_free_bytes > 0 and free_bytes is not None:
        projected = free_bytes + sum(r.bytes for r in removals)
        for s in removable:
            if projected >= emergency_free_bytes:
                break
            if s.study_uid in chosen:
                continue
            r = removal(s, RULE_EMERGENCY, emergency_reason(projected, emergency_free_bytes))
            removals.append(r)
            chosen.add(s.study_uid)
            projected += r.bytes
    kept_recent = len(removable) - len(chosen)
    if kept_recent and RULE_AGE in rules:
        held[HELD_TOO_RECENT] = kept_recent
    return Plan(removals=removals, held=held, removable=removable)


def remove_input_files(root: Path, paths: Iterable[Path]) -> int:
    """Delete the given instance files under the store `root` (a missing file is fine; anything
    outside `root` is refused), then every folder left empty below root; returns bytes freed."""
    root = Path(root).resolve()
    freed = 0
    folders: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        resolved = path.resolve()
        if root not in resolved.parents:
            raise ValueError(f"instance file {path} is outside the store {root}; not removed")
        try:
            size = resolved.stat().st_size
            resolved.unlink()
            freed += size
        except FileNotFoundError:
            pass
        folders.add(resolved.parent)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        for candidate in (folder, *folder.parents):
            if candidate == root or root not in candidate.parents:
                break
            try:
                candidate.rmdir()  # only when empty
            except OSError:
                break
    try:
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return freed


def files_size(paths: Iterable[Path]) -> int:
    """Bytes of the files that exist among `paths`."""
    total = 0
    for path in paths:
        try:
            total += Path(path).stat().st_size
        except OSError:
            continue
    return total


def _inputs(row: tuple[Any, ...]) -> StudyInputs:
    return StudyInputs(
        study_uid=row[0],
        accession_number=row[1] or "",
        state=row[2],
        delivered_at=float(row[3]),
        version=int(row[4]),
        outbox_rows=int(row[5]),
        pending=int(row[6]),
        dead=int(row[7]),
        instances=int(row[8]),
    )


class Retention:
    """Expiry of delivered studies: the index's part (rows and timeline)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("operations", db.dialect)
        self._states = {
            "pending": OutboxState.PENDING.value,
            "committing": OutboxState.COMMITTING.value,
            "dead": OutboxState.DEAD.value,
        }

    def studies_with_inputs(self) -> list[StudyInputs]:
        """Every study whose received instances are still indexed, oldest change first."""
        rows = self.db.run(
            lambda cur: cur.run(self._q.studies_with_inputs, **self._states).fetchall(),
            write=False,
        )
        return [_inputs(r) for r in rows]

    def study_inputs(self, study_uid: str) -> StudyInputs | None:
        """One study as `studies_with_inputs` reads it (None when unknown)."""
        uid = require_uid("Study Instance UID", study_uid)
        row = self.db.run(
            lambda cur: cur.run(
                self._q.study_with_inputs, study_uid=uid, **self._states
            ).fetchone(),
            write=False,
        )
        return None if row is None else _inputs(row)

    def input_files(self, study_uid: str) -> list[tuple[str, Path]]:
        """(SOP Instance UID, path) of every received instance of the study still indexed."""
        uid = require_uid("Study Instance UID", study_uid)
        rows = self.db.run(
            lambda cur: cur.run(self._q.input_files, study_uid=uid).fetchall(), write=False
        )
        return [(r[0], Path(r[1])) for r in rows]

    def forget_inputs(
        self,
        study_uid: str,
        sop_uids: list[str],
        *,
        now: float | None = None,
        rule: str,
        reason: str,
        freed_bytes: int,
        actor: str,
    ) -> None:
        """After their files were deleted: the instance rows of `sop_uids` and an
        `inputs_removed` event on the study's timeline, in one transaction."""
        uid = require_uid("Study Instance UID", study_uid)
        at = time.time() if now is None else now

        def work(cur: Cursor) -> None:
            version = cur.run(self._q.study_with_inputs, study_uid=uid, **self._states).fetchone()
            cur.run_many(self._q.forget_input, [{"sop_uid": s, "study_uid": uid} for s in sop_uids])
            events.add(
                cur,
                self.db.dialect,
                uid,
                None if version is None else int(version[4]),
                "inputs_removed",
                at,
                actor=actor,
                rule=rule,
                reason=reason,
                instances=len(sop_uids),
                bytes=freed_bytes,
            )

        self.db.run(work)

    # ---- whole studies (kept for callers of the first index versions) ----------------------

    def expired_studies(self, older_than: float) -> list[str]:
        """DELIVERED studies last changed before `older_than`."""
        rows = self.db.run(
            lambda cur: cur.run(
                self._q.expired_studies,
                older_than=older_than,
                delivered=StudyState.DELIVERED.value,
            ).fetchall(),
            write=False,
        )
        return [r[0] for r in rows]

    def forget_study(self, study_uid: str) -> None:
        """Remove every row of a study (the caller removes its files from the store)."""
        study_uid = require_uid("Study Instance UID", study_uid)
        self.db.run(lambda cur: cur.run(self._q.forget_study, study_uid=study_uid))
