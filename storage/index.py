"""The index as the node uses it: one object over one database, with every operation by name.

`open_index(url, pool_size=...)` opens the database and brings its schema up to date;
`Index(db)` does the same over an open Database. Each operation belongs to the module of its
concern, and the Index only names them in one place for the node's components:

    receiving (storage.studies)   record_instance, association_ended, instance_conflict,
                                  mark_ready, study_files,
                                  senders, study_known, studies_started_by
    work queue (storage.jobs)     claim_job, renew_lease, complete_job, fail_job
    delivery (storage.outbox)     due_outbox, outbox_sent, outbox_retry, outbox_dead, resend_dead
    commitment                    index.commitments (storage.commitments): awaiting, report,
                                  overdue, commitment_failed
    operations                    status (storage.status), expired_studies, forget_study
                                  (storage.retention)
    console (storage.console)     index.console: search, study, deliveries, counts, flags,
                                  actions; index.events: the timeline (storage.events)

All state of the pipeline lives here, so pending studies, queued jobs and unsent results
survive a restart. Every timestamp is float epoch seconds given by the caller. The states are
in storage.states.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from storage import status as _status
from storage.commitments import Commitments
from storage.console import Console
from storage.database import DEFAULT_POOL_SIZE, Database
from storage.events import Events
from storage.jobs import JobQueue
from storage.migrations import migrate
from storage.outbox import OUTBOX_LEASE_SECONDS, Outbox
from storage.records import InstanceRecord, Job, OutboxItem, ResultObject
from storage.retention import Retention
from storage.states import JobState, OutboxState, ResultKind, StudyState
from storage.studies import Studies, StudyConflict
from storage.study_files import StudyFiles

__all__ = [
    "DEFAULT_POOL_SIZE",
    "OUTBOX_LEASE_SECONDS",
    "Index",
    "InstanceRecord",
    "Job",
    "JobState",
    "OutboxItem",
    "OutboxState",
    "ResultKind",
    "ResultObject",
    "StudyConflict",
    "StudyState",
    "open_index",
]


def open_index(database_url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Index:
    """Open the database at `database_url` ([storage] database_url; PostgreSQL with a pool of
    up to `pool_size` connections) and migrate it to the current schema."""
    db = Database.connect(database_url, pool_size=pool_size)
    try:
        return Index(db)
    except BaseException:
        db.close()
        raise


class Index:
    """Instances, studies, the analysis queue and the outbox, over one Database."""

    def __init__(self, db: Database) -> None:
        """Upgrade the schema to the current version (nothing to do when it is) and refuse a
        database written by a newer lungnode."""
        self.db = db
        migrate(db)
        self.studies = Studies(db)
        self.jobs = JobQueue(db)
        self.outbox = Outbox(db)
        self.commitments = Commitments(db)  # Storage Commitment of sent results
        self.retention = Retention(db)
        self.console = Console(db)  # the web console's reads and actions, /metrics, /readyz
        self.events = Events(db)  # the timeline of each study

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # ---- receiving: storage.studies --------------------------------------------------------

    def record_instance(
        self,
        rec: InstanceRecord,
        *,
        expected_in_series: int | None = None,
        association_id: str | None = None,
        opens_association: bool = False,
    ) -> bool:
        """See Studies.record_instance."""
        return self.studies.record_instance(
            rec,
            expected_in_series=expected_in_series,
            association_id=association_id,
            opens_association=opens_association,
        )

    def association_ended(
        self, association_id: str, study_uids: Iterable[str], *, released: bool, now: float
    ) -> None:
        """See Studies.association_ended."""
        self.studies.association_ended(association_id, study_uids, released=released, now=now)

    def instance_conflict(
        self,
        study_uid: str,
        sop_uid: str,
        patient_digest: str | None,
        birth_date_digest: str | None,
    ) -> StudyConflict | None:
        """See Studies.conflict."""
        return self.studies.conflict(study_uid, sop_uid, patient_digest, birth_date_digest)

    def patient_digests(self, study_uid: str) -> tuple[str | None, str | None] | None:
        """See Studies.patient_digests."""
        return self.studies.patient_digests(study_uid)

    def study_known(self, study_uid: str) -> bool:
        """See Studies.study_known."""
        return self.studies.study_known(study_uid)

    def studies_started_by(self, calling_aet: str, since: float) -> int:
        """See Studies.studies_started_by."""
        return self.studies.studies_started_by(calling_aet, since)

    def senders(self, study_uid: str, series_uids: list[str] | None = None) -> list[str]:
        """See Studies.senders."""
        return self.studies.senders(study_uid, series_uids)

    def mark_ready(
        self, now: float, quiet_seconds: float, release_quiet_seconds: float | None = None
    ) -> list[str]:
        """See Studies.mark_ready."""
        return self.studies.mark_ready(now, quiet_seconds, release_quiet_seconds)

    def study_files(self, study_uid: str) -> StudyFiles:
        """See Studies.study_files."""
        return self.studies.study_files(study_uid)

    # ---- work queue: storage.jobs ----------------------------------------------------------

    def claim_job(self, worker_id: str, lease_seconds: float, now: float) -> Job | None:
        """See JobQueue.claim_job."""
        return self.jobs.claim_job(worker_id, lease_seconds, now)

    def renew_lease(self, job: Job, lease_seconds: float, now: float) -> bool:
        """See JobQueue.renew_lease."""
        return self.jobs.renew_lease(job, lease_seconds, now)

    def complete_job(
        self,
        job: Job,
        results: list[ResultObject],
        destinations: list[str] | Mapping[str, Collection[ResultKind]],
        now: float,
        *,
        reason: str | None = None,
    ) -> bool:
        """See JobQueue.complete_job."""
        return self.jobs.complete_job(job, results, destinations, now, reason=reason)

    def fail_job(self, job: Job, reason: str, *, retry: bool, now: float) -> None:
        """See JobQueue.fail_job."""
        self.jobs.fail_job(job, reason, retry=retry, now=now)

    # ---- delivery: storage.outbox ----------------------------------------------------------

    def due_outbox(
        self, now: float, limit: int = 50, *, lease_seconds: float = OUTBOX_LEASE_SECONDS
    ) -> list[OutboxItem]:
        """See Outbox.due_outbox."""
        return self.outbox.due_outbox(now, limit, lease_seconds=lease_seconds)

    def outbox_sent(self, item: OutboxItem, now: float) -> None:
        """See Outbox.outbox_sent."""
        self.outbox.outbox_sent(item, now)

    def outbox_retry(self, item: OutboxItem, error: str, next_attempt_at: float) -> None:
        """See Outbox.outbox_retry."""
        self.outbox.outbox_retry(item, error, next_attempt_at)

    def outbox_dead(self, item: OutboxItem, error: str) -> None:
        """See Outbox.outbox_dead."""
        self.outbox.outbox_dead(item, error)

    def resend_dead(self, study_uid: str | None = None, *, now: float = 0.0) -> int:
        """See Outbox.resend_dead."""
        return self.outbox.resend_dead(study_uid, now=now)

    # ---- operations: storage.status, storage.retention -------------------------------------

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Every study and outbox row, for `lungnode status` and the health page."""
        return _status.status(self.db)

    def expired_studies(self, older_than: float) -> list[str]:
        """See Retention.expired_studies."""
        return self.retention.expired_studies(older_than)

    def forget_study(self, study_uid: str) -> None:
        """See Retention.forget_study."""
        self.retention.forget_study(study_uid)
