"""The analysis work queue: one job per study version, claimed with a lease.

A worker claims the oldest QUEUED job, or a RUNNING one whose lease expired (its worker died);
on PostgreSQL several nodes claim with `FOR UPDATE SKIP LOCKED`, on SQLite the one writer
serialises them. A claim is (owner, attempts): a worker whose lease was taken over, or whose
study received new instances meanwhile, can neither renew, complete nor fail the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from pathlib import Path

from storage import events, outbox
from storage.database import Cursor, Database
from storage.queries import load
from storage.records import Job, ResultObject
from storage.states import JobState, ResultKind, StudyState
from storage.uids import require_uid


def enqueue(cur: Cursor, dialect: str, study_uid: str, version: int, now: float) -> None:
    """Within the caller's transaction: queue the job of a study version made READY (once per
    version) and make the jobs of its older versions STALE."""
    q = load("jobs", dialect)
    cur.run(
        q.stale_older_jobs,
        study_uid=study_uid,
        version=version,
        now=now,
        stale=JobState.STALE.value,
        queued=JobState.QUEUED.value,
        running=JobState.RUNNING.value,
    )
    cur.run(
        q.enqueue,
        job_id=uuid.uuid4().hex,
        study_uid=study_uid,
        version=version,
        now=now,
        queued=JobState.QUEUED.value,
    )


class JobQueue:
    """Claims, leases and completion of analysis jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("jobs", db.dialect)

    def claim_job(self, worker_id: str, lease_seconds: float, now: float) -> Job | None:
        """Take the oldest queued job, or one whose lease expired (its worker died): the study
        goes to ANALYZING and the job's attempts+1. None when there is nothing to do."""
        if not worker_id:
            raise ValueError("worker_id is empty; give each worker a distinct name")
        q = self._q

        def work(cur: Cursor) -> Job | None:
            row = cur.run(
                q.next_claimable,
                now=now,
                queued=JobState.QUEUED.value,
                running=JobState.RUNNING.value,
                ready=StudyState.READY.value,
                analyzing=StudyState.ANALYZING.value,
            ).fetchone()
            if row is None:
                return None
            job_id, study_uid, version, attempts, source_aet, state, created_at, owner = row
            if state == JobState.RUNNING:  # its worker died or hung: the lease ran out
                events.add(
                    cur, self.db.dialect, study_uid, version, "lease_expired", now, owner=owner
                )
            events.add(
                cur,
                self.db.dialect,
                study_uid,
                version,
                "claimed",
                now,
                stage="queued" if attempts == 0 else None,
                duration_s=now - float(created_at) if attempts == 0 else None,
                worker=worker_id,
                attempt=attempts + 1,
            )
            cur.run(
                q.claim,
                job_id=job_id,
                owner=worker_id,
                lease_until=now + lease_seconds,
                now=now,
                running=JobState.RUNNING.value,
            )
            cur.run(
                q.study_analyzing,
                study_uid=study_uid,
                version=version,
                now=now,
                analyzing=StudyState.ANALYZING.value,
            )
            previous = cur.run(
                q.previous_report, study_uid=study_uid, version=version, sr=ResultKind.SR.value
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
        q = self._q
        return self.db.run(
            lambda cur: (
                cur.run(
                    q.renew_lease,
                    lease_until=now + lease_seconds,
                    now=now,
                    job_id=job.job_id,
                    owner=job.owner,
                    attempts=job.attempts,
                    study_uid=job.study_uid,
                    running=JobState.RUNNING.value,
                ).rowcount
                == 1
            )
        )

    def _owned(self, cur: Cursor, job: Job) -> tuple[bool, bool]:
        """(still this worker's claim, study still at job.version and ANALYZING), with the
        study row locked first on PostgreSQL so version changes wait for this transaction."""
        study = cur.run(self._q.lock_study, study_uid=job.study_uid).fetchone()
        claim = cur.run(self._q.lock_job, job_id=job.job_id).fetchone()
        owned = claim is not None and tuple(claim) == (JobState.RUNNING, job.owner, job.attempts)
        current = study is not None and tuple(study) == (job.version, StudyState.ANALYZING)
        return owned, current

    def complete_job(
        self,
        job: Job,
        results: list[ResultObject],
        destinations: list[str] | Mapping[str, Collection[ResultKind]],
        now: float,
        *,
        reason: str | None = None,
    ) -> bool:
        """Record the result objects and one outbox row per (result, destination); the study
        becomes REPORTED (DELIVERED when there is nothing to send), with `reason` as a note for
        `status` (e.g. why nothing is sent). False, writing nothing, when the claim was lost or
        the study received new instances meanwhile.

        `destinations` is a list of names (each receives every result), or a mapping of name to
        the result kinds it receives."""
        for r in results:
            require_uid("result SOP Instance UID", r.sop_uid)
            require_uid("result Series Instance UID", r.series_uid)
        if any(not d for d in destinations):
            raise ValueError(f"destinations {destinations!r} contain an empty name")
        wanted: dict[str, frozenset[ResultKind] | None] = (
            {d: frozenset(ResultKind(k) for k in kinds) for d, kinds in destinations.items()}
            if isinstance(destinations, Mapping)
            else dict.fromkeys(destinations)
        )
        q = self._q

        def work(cur: Cursor) -> bool:
            owned, current = self._owned(cur, job)
            if not (owned and current):
                return False
            queued = 0
            for r in results:
                cur.run(
                    q.record_result,
                    sop_uid=r.sop_uid,
                    study_uid=job.study_uid,
                    series_uid=r.series_uid,
                    version=job.version,
                    sop_class_uid=r.sop_class_uid,
                    kind=r.kind.value,
                    path=str(r.path),
                    now=now,
                )
                for destination, kinds in wanted.items():
                    if kinds is None or r.kind in kinds:
                        outbox.add(cur, self.db.dialect, job, r, destination, now)
                        queued += 1
            cur.run(q.finish, job_id=job.job_id, now=now, done=JobState.DONE.value)
            state = StudyState.REPORTED if queued else StudyState.DELIVERED
            events.add(
                cur,
                self.db.dialect,
                job.study_uid,
                job.version,
                "reported",
                now,
                results=[f"{r.kind} {r.sop_uid}" for r in results],
                destinations=list(wanted),
                note=reason,
            )
            cur.run(
                q.set_study_state,
                study_uid=job.study_uid,
                state=state.value,
                reason=reason,
                now=now,
            )
            return True

        return self.db.run(work)

    def fail_job(self, job: Job, reason: str, *, retry: bool, now: float) -> None:
        """Give up this claim: with `retry` the job is queued again (attempts kept) and the study
        is READY; otherwise the study is FAILED with `reason`. Ignored for a lost claim."""
        q = self._q

        def work(cur: Cursor) -> None:
            owned, current = self._owned(cur, job)
            if not owned:
                return
            if not current:
                cur.run(
                    q.release, job_id=job.job_id, state=JobState.STALE.value, error=reason, now=now
                )
                return
            job_state, study_state = (
                (JobState.QUEUED, StudyState.READY)
                if retry
                else (JobState.FAILED, StudyState.FAILED)
            )
            cur.run(q.release, job_id=job.job_id, state=job_state.value, error=reason, now=now)
            events.add(
                cur,
                self.db.dialect,
                job.study_uid,
                job.version,
                "retry_analysis" if retry else "failed",
                now,
                reason=reason,
                attempt=job.attempts,
            )
            cur.run(
                q.set_study_state,
                study_uid=job.study_uid,
                state=study_state.value,
                reason=None if retry else reason,
                now=now,
            )

        self.db.run(work)
