"""The index of received instances and studies, the analysis work queue and the outbox.

All state of the pipeline lives here, so pending studies, queued jobs and unsent results
survive a restart. The same SQL runs on SQLite and PostgreSQL; on PostgreSQL several nodes share
the queue with row locks (`FOR UPDATE SKIP LOCKED`). Every timestamp is float epoch seconds
given by the caller.

Study states: RECEIVING -> READY -> ANALYZING -> REPORTED -> DELIVERED, and FAILED. An instance
arriving for a study that has left RECEIVING sends it back to RECEIVING with version+1; jobs of
older versions are then stale: they cannot be claimed, renewed or completed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from index_v1.database import Cursor, Database, DatabaseError
from storage.study_files import InstanceFile, SeriesFiles, StudyFiles
from storage.uids import require_uid

SCHEMA_VERSION = 1
_SCHEMA_LOCK_KEY = 0x6C756E67  # "lung": serialises schema creation between PostgreSQL nodes
OUTBOX_LEASE_SECONDS = 300.0

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS studies (
        study_uid TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        source_aet TEXT NOT NULL,
        instances INTEGER NOT NULL,
        first_received_at DOUBLE PRECISION NOT NULL,
        last_received_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        reason TEXT)""",
    "CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_received_at)",
    """CREATE TABLE IF NOT EXISTS series (
        series_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        modality TEXT NOT NULL,
        expected_instances INTEGER,
        instances INTEGER NOT NULL,
        last_version INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS series_study ON series (study_uid)",
    """CREATE TABLE IF NOT EXISTS instances (
        sop_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        modality TEXT NOT NULL,
        path TEXT NOT NULL,
        calling_aet TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid)",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        lease_until DOUBLE PRECISION,
        attempts INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        UNIQUE (study_uid, version))""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at)",
    """CREATE TABLE IF NOT EXISTS results (
        sop_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        version INTEGER NOT NULL,
        sop_class_uid TEXT NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS results_study ON results (study_uid, version)",
    """CREATE TABLE IF NOT EXISTS outbox (
        outbox_id TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL,
        version INTEGER NOT NULL,
        sop_uid TEXT NOT NULL,
        path TEXT NOT NULL,
        destination TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION,
        last_error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS outbox_study ON outbox (study_uid, version)",
]


class StudyState(StrEnum):
    """Where a study is in the pipeline; stored as text."""

    RECEIVING = "RECEIVING"
    READY = "READY"
    ANALYZING = "ANALYZING"
    REPORTED = "REPORTED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class _JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    STALE = "STALE"  # superseded by a newer version of its study


class _OutboxState(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance as the receiver indexes it, after the store committed its file."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    path: Path
    calling_aet: str
    received_at: float


@dataclass(frozen=True)
class Job:
    """A claimed analysis job for one version of one study.

    `owner` and `attempts` identify this claim: a worker whose lease was taken over holds an
    older `attempts` and is refused. `previous_sr_*` name the SR of the latest earlier version
    (for Predecessor Documents), or None.
    """

    job_id: str
    study_uid: str
    version: int
    attempts: int
    source_aet: str
    previous_sr_path: Path | None
    previous_sr_sop_uid: str | None
    owner: str = ""


@dataclass(frozen=True)
class ResultObject:
    """A result object the node wrote to the store (its SR or SEG) for one study version."""

    sop_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    kind: str  # "SR" or "SEG"

    def __post_init__(self) -> None:
        if self.kind not in ("SR", "SEG"):
            raise ValueError(f"ResultObject kind {self.kind!r} is not 'SR' or 'SEG'")


@dataclass(frozen=True)
class OutboxItem:
    """One result object to C-STORE to one destination, claimed by a sender for a short lease."""

    outbox_id: str
    study_uid: str
    sop_uid: str
    path: Path
    destination: str
    attempts: int


def _iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC ('2024-05-01T12:00:00Z')."""
    if epoch is None:
        return None
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


class Index:
    """Instances, studies, the analysis queue and the outbox, over one Database."""

    def __init__(self, db: Database) -> None:
        """Create the schema if missing (idempotent) and check its version."""
        self.db = db
        pg = db.dialect == "postgresql"
        self._for_update = " FOR UPDATE" if pg else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if pg else ""
        db.run(self._create_schema)

    def _create_schema(self, cur: Cursor) -> None:
        if self.db.dialect == "postgresql":
            cur.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
        for statement in _SCHEMA:
            cur.execute(statement)
        row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
        if row is None or row[0] is None:
            cur.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise DatabaseError(
                f"index schema version {row[0]} in {self.db.url} is newer than this lungnode "
                f"understands ({SCHEMA_VERSION}); upgrade lungnode or point [storage] "
                "database_url at another database"
            )

    # ---- receiving -------------------------------------------------------------------------

    def record_instance(
        self, rec: InstanceRecord, *, expected_in_series: int | None = None
    ) -> bool:
        """Index one stored instance in one transaction; False when its SOP Instance UID is
        already indexed (or is one of the node's own result objects). `expected_in_series` is
        the series' expected instance count (PET Number of Slices) when known."""
        study = require_uid("Study Instance UID", rec.study_uid)
        series = require_uid("Series Instance UID", rec.series_uid)
        sop = require_uid("SOP Instance UID", rec.sop_uid)
        if expected_in_series is not None and (
            not isinstance(expected_in_series, int) or expected_in_series < 1
        ):
            raise ValueError(
                f"expected_in_series {expected_in_series!r} for series {series} is not a "
                "positive count; pass None when the series size is unknown"
            )
        at = float(rec.received_at)

        def work(cur: Cursor) -> bool:
            if cur.execute("SELECT 1 FROM results WHERE sop_uid = ?", (sop,)).fetchone():
                return False
            cur.execute(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, modality,"
                " path, calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (sop_uid) DO NOTHING",
                (sop, study, series, rec.sop_class_uid, rec.modality, str(rec.path),
                 rec.calling_aet, at),
            )  # fmt: skip
            if cur.rowcount == 0:
                return False
            version = cur.execute(
                "INSERT INTO studies (study_uid, state, version, source_aet, instances,"
                " first_received_at, last_received_at, updated_at, reason)"
                " VALUES (?, 'RECEIVING', 1, ?, 1, ?, ?, ?, NULL)"
                " ON CONFLICT (study_uid) DO UPDATE SET"
                " instances = studies.instances + 1,"
                " last_received_at = CASE WHEN excluded.last_received_at > studies.last_received_at"
                "  THEN excluded.last_received_at ELSE studies.last_received_at END,"
                " updated_at = excluded.updated_at,"
                " version = CASE WHEN studies.state = 'RECEIVING' THEN studies.version"
                "  ELSE studies.version + 1 END,"
                " reason = CASE WHEN studies.state = 'RECEIVING' THEN studies.reason ELSE NULL END,"
                " state = 'RECEIVING'"
                " RETURNING version",
                (study, rec.calling_aet, at, at, at),
            ).fetchone()[0]
            cur.execute(
                "INSERT INTO series (series_uid, study_uid, modality, expected_instances,"
                " instances, last_version) VALUES (?, ?, ?, ?, 1, ?)"
                " ON CONFLICT (series_uid) DO UPDATE SET instances = series.instances + 1,"
                " expected_instances = COALESCE(excluded.expected_instances,"
                "  series.expected_instances),"
                " last_version = excluded.last_version",
                (series, study, rec.modality, expected_in_series, version),
            )
            return True

        return self.db.run(work)

    def mark_ready(self, now: float, quiet_seconds: float) -> list[str]:
        """Move RECEIVING studies to READY and queue one analysis job per study version.

        A study is ready when nothing arrived for `quiet_seconds`, or sooner when every series
        with an expected count has reached it and at least one such series received instances
        in the study's current version (so a late CT series does not re-trigger on a PET series
        completed earlier). Returns the study UIDs made ready.
        """

        def work(cur: Cursor) -> list[str]:
            candidates = cur.execute(
                "SELECT s.study_uid, s.version FROM studies s WHERE s.state = 'RECEIVING' AND ("
                " s.last_received_at <= ? OR ("
                "  EXISTS (SELECT 1 FROM series e WHERE e.study_uid = s.study_uid"
                "   AND e.expected_instances IS NOT NULL AND e.last_version = s.version)"
                "  AND NOT EXISTS (SELECT 1 FROM series e WHERE e.study_uid = s.study_uid"
                "   AND e.expected_instances IS NOT NULL"
                "   AND e.instances < e.expected_instances)))"
                " ORDER BY s.last_received_at",
                (now - quiet_seconds,),
            ).fetchall()
            ready: list[str] = []
            for study_uid, version in candidates:
                cur.execute(
                    "UPDATE studies SET state = 'READY', updated_at = ?"
                    " WHERE study_uid = ? AND version = ? AND state = 'RECEIVING'",
                    (now, study_uid, version),
                )
                if cur.rowcount != 1:
                    continue  # another node's tick, or a new instance, got there first
                cur.execute(
                    "UPDATE jobs SET state = 'STALE', owner = NULL, lease_until = NULL,"
                    " updated_at = ? WHERE study_uid = ? AND version < ?"
                    " AND state IN ('QUEUED', 'RUNNING')",
                    (now, study_uid, version),
                )
                cur.execute(
                    "INSERT INTO jobs (job_id, study_uid, version, state, owner, lease_until,"
                    " attempts, created_at, updated_at, last_error)"
                    " VALUES (?, ?, ?, 'QUEUED', NULL, NULL, 0, ?, ?, NULL)"
                    " ON CONFLICT (study_uid, version) DO NOTHING",
                    (uuid.uuid4().hex, study_uid, version, now, now),
                )
                ready.append(study_uid)
            return ready

        return self.db.run(work)

    # ---- analysis queue --------------------------------------------------------------------

    def claim_job(self, worker_id: str, lease_seconds: float, now: float) -> Job | None:
        """Take the oldest queued job, or one whose lease expired (its worker died): the study
        goes to ANALYZING and the job's attempts+1. None when there is nothing to do."""
        if not worker_id:
            raise ValueError("worker_id is empty; give each worker a distinct name")

        def work(cur: Cursor) -> Job | None:
            row = cur.execute(
                "SELECT j.job_id, j.study_uid, j.version, j.attempts, s.source_aet"
                " FROM jobs j JOIN studies s"
                "  ON s.study_uid = j.study_uid AND s.version = j.version"
                " WHERE (j.state = 'QUEUED' OR (j.state = 'RUNNING' AND j.lease_until < ?))"
                "  AND s.state IN ('READY', 'ANALYZING')"
                " ORDER BY j.created_at, j.job_id LIMIT 1"
                + (" FOR UPDATE OF j SKIP LOCKED" if self._skip_locked else ""),
                (now,),
            ).fetchone()
            if row is None:
                return None
            job_id, study_uid, version, attempts, source_aet = row
            cur.execute(
                "UPDATE jobs SET state = 'RUNNING', owner = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE job_id = ?",
                (worker_id, now + lease_seconds, now, job_id),
            )
            cur.execute(
                "UPDATE studies SET state = 'ANALYZING', updated_at = ?"
                " WHERE study_uid = ? AND version = ?",
                (now, study_uid, version),
            )
            previous = cur.execute(
                "SELECT path, sop_uid FROM results WHERE study_uid = ? AND kind = 'SR'"
                " AND version < ? ORDER BY version DESC, created_at DESC LIMIT 1",
                (study_uid, version),
            ).fetchone()
            return Job(
                job_id=job_id,
                study_uid=study_uid,
                version=version,
                attempts=attempts + 1,
                source_aet=source_aet,
                previous_sr_path=Path(previous[0]) if previous else None,
                previous_sr_sop_uid=previous[1] if previous else None,
                owner=worker_id,
            )

        return self.db.run(work)

    def renew_lease(self, job: Job, lease_seconds: float, now: float) -> bool:
        """Extend the lease; False when the job is no longer this worker's (taken over, or the
        study received new instances): the worker should then abandon the analysis."""

        def work(cur: Cursor) -> bool:
            cur.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ?"
                " WHERE job_id = ? AND state = 'RUNNING' AND owner = ? AND attempts = ?"
                " AND version = (SELECT version FROM studies WHERE study_uid = ?)",
                (now + lease_seconds, now, job.job_id, job.owner, job.attempts, job.study_uid),
            )
            return cur.rowcount == 1

        return self.db.run(work)

    def _owned(self, cur: Cursor, job: Job) -> tuple[bool, bool]:
        """(still this worker's claim, study still at job.version and ANALYZING), with the
        study row locked first on PostgreSQL so version changes wait for this transaction."""
        study = cur.execute(
            "SELECT version, state FROM studies WHERE study_uid = ?" + self._for_update,
            (job.study_uid,),
        ).fetchone()
        claim = cur.execute(
            "SELECT state, owner, attempts FROM jobs WHERE job_id = ?" + self._for_update,
            (job.job_id,),
        ).fetchone()
        owned = claim is not None and tuple(claim) == ("RUNNING", job.owner, job.attempts)
        current = study is not None and tuple(study) == (job.version, "ANALYZING")
        return owned, current

    def study_files(self, study_uid: str) -> StudyFiles:
        """Every received instance of a study grouped by series (never the node's own results);
        raises KeyError for a study not in the index."""
        study_uid = require_uid("Study Instance UID", study_uid)

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            if not cur.execute(
                "SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)
            ).fetchone():
                raise KeyError(f"study {study_uid} is not in the index")
            return cur.execute(
                "SELECT e.series_uid, e.modality, i.path, i.sop_uid, i.sop_class_uid"
                " FROM instances i JOIN series e ON e.series_uid = i.series_uid"
                " WHERE i.study_uid = ? ORDER BY e.series_uid, i.received_at, i.sop_uid",
                (study_uid,),
            ).fetchall()

        rows = self.db.run(work, write=False)
        grouped: dict[str, tuple[str, list[InstanceFile]]] = {}
        for series_uid, modality, path, sop_uid, sop_class_uid in rows:
            grouped.setdefault(series_uid, (modality, []))[1].append(
                InstanceFile(path=Path(path), sop_instance_uid=sop_uid, sop_class_uid=sop_class_uid)
            )
        return StudyFiles(
            study_instance_uid=study_uid,
            series=tuple(
                SeriesFiles(series_instance_uid=uid, modality=modality, instances=tuple(files))
                for uid, (modality, files) in grouped.items()
            ),
        )

    def complete_job(
        self,
        job: Job,
        results: list[ResultObject],
        destinations: list[str],
        now: float,
        *,
        reason: str | None = None,
    ) -> bool:
        """Record the result objects and one outbox row per (result, destination); the study
        becomes REPORTED (DELIVERED when there is nothing to send), with `reason` as a note for
        `status` (e.g. why nothing is sent). False, writing nothing, when the claim was lost or
        the study received new instances meanwhile."""
        for r in results:
            require_uid("result SOP Instance UID", r.sop_uid)
            require_uid("result Series Instance UID", r.series_uid)
        if any(not d for d in destinations):
            raise ValueError(f"destinations {destinations!r} contain an empty name")

        def work(cur: Cursor) -> bool:
            owned, current = self._owned(cur, job)
            if not (owned and current):
                return False
            for r in results:
                cur.execute(
                    "INSERT INTO results (sop_uid, study_uid, series_uid, version, sop_class_uid,"
                    " kind, path, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (sop_uid) DO UPDATE SET version = excluded.version,"
                    " path = excluded.path, created_at = excluded.created_at",
                    (r.sop_uid, job.study_uid, r.series_uid, job.version, r.sop_class_uid,
                     r.kind, str(r.path), now),
                )  # fmt: skip
                for destination in destinations:
                    cur.execute(
                        "INSERT INTO outbox (outbox_id, study_uid, version, sop_uid, path,"
                        " destination, state, attempts, next_attempt_at, lease_until,"
                        " last_error, created_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, 'PENDING', 0, ?, NULL, NULL, ?, ?)",
                        (uuid.uuid4().hex, job.study_uid, job.version, r.sop_uid, str(r.path),
                         destination, now, now, now),
                    )  # fmt: skip
            cur.execute(
                "UPDATE jobs SET state = 'DONE', lease_until = NULL, updated_at = ?"
                " WHERE job_id = ?",
                (now, job.job_id),
            )
            state = StudyState.REPORTED if results and destinations else StudyState.DELIVERED
            cur.execute(
                "UPDATE studies SET state = ?, reason = ?, updated_at = ? WHERE study_uid = ?",
                (str(state), reason, now, job.study_uid),
            )
            return True

        return self.db.run(work)

    def fail_job(self, job: Job, reason: str, *, retry: bool, now: float) -> None:
        """Give up this claim: with `retry` the job is queued again (attempts kept) and the study
        is READY; otherwise the study is FAILED with `reason`. Ignored for a lost claim."""

        def work(cur: Cursor) -> None:
            owned, current = self._owned(cur, job)
            if not owned:
                return
            if not current:
                cur.execute(
                    "UPDATE jobs SET state = 'STALE', owner = NULL, lease_until = NULL,"
                    " last_error = ?, updated_at = ? WHERE job_id = ?",
                    (reason, now, job.job_id),
                )
                return
            job_state, study_state = (
                (_JobState.QUEUED, StudyState.READY)
                if retry
                else (_JobState.FAILED, StudyState.FAILED)
            )
            cur.execute(
                "UPDATE jobs SET state = ?, owner = NULL, lease_until = NULL, last_error = ?,"
                " updated_at = ? WHERE job_id = ?",
                (str(job_state), reason, now, job.job_id),
            )
            cur.execute(
                "UPDATE studies SET state = ?, reason = ?, updated_at = ? WHERE study_uid = ?",
                (str(study_state), None if retry else reason, now, job.study_uid),
            )

        self.db.run(work)

    # ---- outbox ----------------------------------------------------------------------------

    def due_outbox(
        self, now: float, limit: int = 50, *, lease_seconds: float = OUTBOX_LEASE_SECONDS
    ) -> list[OutboxItem]:
        """Claim up to `limit` PENDING rows due at `now` for `lease_seconds`, so two senders
        never send the same row at once; a sender that dies releases them when the lease ends."""

        def work(cur: Cursor) -> list[OutboxItem]:
            rows = cur.execute(
                "SELECT outbox_id, study_uid, sop_uid, path, destination, attempts FROM outbox"
                " WHERE state = 'PENDING' AND next_attempt_at <= ?"
                " AND (lease_until IS NULL OR lease_until < ?)"
                " ORDER BY next_attempt_at, created_at, outbox_id LIMIT ?" + self._skip_locked,
                (now, now, limit),
            ).fetchall()
            if rows:
                marks = ", ".join("?" * len(rows))
                cur.execute(
                    f"UPDATE outbox SET lease_until = ? WHERE outbox_id IN ({marks})",
                    (now + lease_seconds, *(r[0] for r in rows)),
                )
            return [
                OutboxItem(
                    outbox_id=r[0],
                    study_uid=r[1],
                    sop_uid=r[2],
                    path=Path(r[3]),
                    destination=r[4],
                    attempts=r[5],
                )
                for r in rows
            ]

        return self.db.run(work)

    def outbox_sent(self, item: OutboxItem, now: float) -> None:
        """Mark a row SENT; when every row of the study's current version is SENT, the study
        is DELIVERED."""

        def work(cur: Cursor) -> None:
            study = cur.execute(
                "SELECT version, state FROM studies WHERE study_uid = ?" + self._for_update,
                (item.study_uid,),
            ).fetchone()
            cur.execute(
                "UPDATE outbox SET state = 'SENT', lease_until = NULL, last_error = NULL,"
                " updated_at = ? WHERE outbox_id = ?",
                (now, item.outbox_id),
            )
            if study is None or study[1] != StudyState.REPORTED:
                return
            unsent = cur.execute(
                "SELECT COUNT(*) FROM outbox WHERE study_uid = ? AND version = ?"
                " AND state <> 'SENT'",
                (item.study_uid, study[0]),
            ).fetchone()[0]
            if unsent == 0:
                cur.execute(
                    "UPDATE studies SET state = 'DELIVERED', updated_at = ?"
                    " WHERE study_uid = ? AND version = ?",
                    (now, item.study_uid, study[0]),
                )

        self.db.run(work)

    def outbox_retry(self, item: OutboxItem, error: str, next_attempt_at: float) -> None:
        """A transient failure: attempts+1, remember the error, try again at `next_attempt_at`."""
        self.db.run(
            lambda cur: cur.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " lease_until = NULL WHERE outbox_id = ? AND state = 'PENDING'",
                (error, next_attempt_at, item.outbox_id),
            )
        )

    def outbox_dead(self, item: OutboxItem, error: str) -> None:
        """A permanent failure or too many attempts: DEAD (a dead letter) until resend_dead."""
        self.db.run(
            lambda cur: cur.execute(
                "UPDATE outbox SET state = 'DEAD', attempts = attempts + 1, last_error = ?,"
                " lease_until = NULL WHERE outbox_id = ? AND state = 'PENDING'",
                (error, item.outbox_id),
            )
        )

    def resend_dead(self, study_uid: str | None = None, *, now: float = 0.0) -> int:
        """Dead letters (of one study, or all) back to PENDING with attempts 0, due at `now`
        (by default at once); returns how many."""
        where, params = "state = 'DEAD'", ()
        if study_uid is not None:
            where += " AND study_uid = ?"
            params = (require_uid("Study Instance UID", study_uid),)

        def work(cur: Cursor) -> int:
            cur.execute(
                "UPDATE outbox SET state = 'PENDING', attempts = 0, next_attempt_at = ?,"
                f" lease_until = NULL WHERE {where}",
                (now, *params),
            )
            return cur.rowcount

        return self.db.run(work)

    # ---- operations ------------------------------------------------------------------------

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Every study and outbox row, for `lungnode status` and the health page."""

        def work(cur: Cursor) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            studies = cur.execute(
                "SELECT s.study_uid, s.state, s.instances,"
                " (SELECT COUNT(*) FROM series e WHERE e.study_uid = s.study_uid),"
                " s.updated_at, s.reason, s.version FROM studies s"
                " ORDER BY s.updated_at DESC, s.study_uid"
            ).fetchall()
            outbox = cur.execute(
                "SELECT study_uid, sop_uid, destination, state, attempts, last_error,"
                " next_attempt_at FROM outbox ORDER BY created_at, outbox_id"
            ).fetchall()
            return studies, outbox

        studies, outbox = self.db.run(work, write=False)
        return {
            "studies": [
                {
                    "study_uid": r[0],
                    "state": r[1],
                    "instances": r[2],
                    "series": r[3],
                    "updated_at": _iso(r[4]),
                    "reason": r[5],
                    "version": r[6],
                }
                for r in studies
            ],
            "outbox": [
                {
                    "study_uid": r[0],
                    "sop_instance_uid": r[1],
                    "destination": r[2],
                    "state": r[3],
                    "attempts": r[4],
                    "last_error": r[5],
                    "next_attempt_at": _iso(r[6]),
                }
                for r in outbox
            ],
        }

    def expired_studies(self, older_than: float) -> list[str]:
        """DELIVERED studies last changed before `older_than` (for retention)."""
        rows = self.db.run(
            lambda cur: cur.execute(
                "SELECT study_uid FROM studies WHERE state = 'DELIVERED' AND updated_at < ?"
                " ORDER BY updated_at",
                (older_than,),
            ).fetchall(),
            write=False,
        )
        return [r[0] for r in rows]

    def forget_study(self, study_uid: str) -> None:
        """Remove every row of a study (the caller removes its files from the store)."""
        study_uid = require_uid("Study Instance UID", study_uid)

        def work(cur: Cursor) -> None:
            for table in ("outbox", "results", "jobs", "instances", "series", "studies"):
                cur.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))

        self.db.run(work)
