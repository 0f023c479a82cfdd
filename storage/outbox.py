"""The outbox: one row per (result object, destination), claimed by senders with a short lease.

A transient failure schedules a retry; a permanent one, or too many attempts, makes a dead
letter until `resend_dead`. When every row of a study's current version is SENT (or COMMITTED,
see storage.commitments), the study is DELIVERED.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from storage import events
from storage.database import Cursor, Database
from storage.queries import load
from storage.records import Job, OutboxItem, ResultObject
from storage.states import OutboxState, StudyState
from storage.uids import require_uid

OUTBOX_LEASE_SECONDS = 300.0
_PENDING = OutboxState.PENDING.value


def add(
    cur: Cursor, dialect: str, job: Job, result: ResultObject, destination: str, now: float
) -> None:
    """Within the caller's transaction: a PENDING row for one result and destination, due now."""
    cur.run(
        load("outbox", dialect).add,
        outbox_id=uuid.uuid4().hex,
        study_uid=job.study_uid,
        version=job.version,
        sop_uid=result.sop_uid,
        path=str(result.path),
        destination=destination,
        now=now,
        pending=_PENDING,
    )


def item_of(row: tuple[Any, ...]) -> OutboxItem:
    """An outbox row as read by the `due` and commitment queries: (id, study, SOP Instance UID,
    path, destination, attempts)."""
    return OutboxItem(
        outbox_id=row[0],
        study_uid=row[1],
        sop_uid=row[2],
        path=Path(row[3]),
        destination=row[4],
        attempts=row[5],
    )


def add_sent_event(
    cur: Cursor,
    dialect: str,
    item: OutboxItem,
    times: tuple[Any, ...] | None,
    now: float,
    **details: Any,
) -> None:
    """Within the caller's transaction: the study's "sent" event of one row, timed from the
    row's creation (`times` is the row's (created_at, version, first_received_at) as
    `row_times` read it, None when the row is gone)."""
    events.add(
        cur,
        dialect,
        item.study_uid,
        times[1] if times else None,
        "sent",
        now,
        stage="delivery",
        duration_s=now - float(times[0]) if times else None,
        destination=item.destination,
        sop_instance_uid=item.sop_uid,
        attempt=item.attempts + 1,
        **details,
    )


def deliver_if_complete(
    cur: Cursor,
    dialect: str,
    study_uid: str,
    study: tuple[Any, ...] | None,
    now: float,
    first_received_at: float | None,
) -> None:
    """Within the caller's transaction, after a row became SENT or COMMITTED: the study is
    DELIVERED when it is REPORTED and every row of its current version is SENT or COMMITTED.
    `study` is its (version, state) as `lock_study` read it at the start of the transaction."""
    if study is None or study[1] != StudyState.REPORTED:
        return
    q = load("outbox", dialect)
    version = study[0]
    unsent = cur.run(
        q.unsent_of_version,
        study_uid=study_uid,
        version=version,
        sent=OutboxState.SENT.value,
        committed=OutboxState.COMMITTED.value,
    ).scalar()
    if unsent != 0:
        return
    cur.run(
        q.study_delivered,
        study_uid=study_uid,
        version=version,
        now=now,
        delivered=StudyState.DELIVERED.value,
    )
    events.add(
        cur,
        dialect,
        study_uid,
        version,
        "delivered",
        now,
        stage="turnaround",
        duration_s=None if first_received_at is None else now - float(first_received_at),
    )


class Outbox:
    """Delivery of result objects to their destinations."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("outbox", db.dialect)

    def due_outbox(
        self, now: float, limit: int = 50, *, lease_seconds: float = OUTBOX_LEASE_SECONDS
    ) -> list[OutboxItem]:
        """Claim up to `limit` PENDING rows due at `now` for `lease_seconds`, so two senders
        never send the same row at once; a sender that dies releases them when the lease ends."""
        q = self._q

        def work(cur: Cursor) -> list[OutboxItem]:
            rows = cur.run(q.due, now=now, limit=limit, pending=_PENDING).fetchall()
            cur.run_many(
                q.lease, [{"outbox_id": r[0], "lease_until": now + lease_seconds} for r in rows]
            )
            return [item_of(r) for r in rows]

        return self.db.run(work)

    def outbox_sent(self, item: OutboxItem, now: float) -> None:
        """Mark a row SENT; when every row of the study's current version is SENT, the study
        is DELIVERED."""
        q = self._q
        sent = OutboxState.SENT.value

        def work(cur: Cursor) -> None:
            study = cur.run(q.lock_study, study_uid=item.study_uid).fetchone()
            times = cur.run(q.row_times, outbox_id=item.outbox_id).fetchone()
            cur.run(q.sent, outbox_id=item.outbox_id, now=now, sent=sent)
            add_sent_event(cur, self.db.dialect, item, times, now)
            deliver_if_complete(
                cur, self.db.dialect, item.study_uid, study, now, times[2] if times else None
            )

        self.db.run(work)

    def outbox_retry(self, item: OutboxItem, error: str, next_attempt_at: float) -> None:
        """A transient failure: attempts+1, remember the error, try again at `next_attempt_at`."""

        def work(cur: Cursor) -> None:
            cur.run(
                self._q.retry,
                outbox_id=item.outbox_id,
                error=error,
                next_attempt_at=next_attempt_at,
                pending=_PENDING,
            )
            events.add(
                cur,
                self.db.dialect,
                item.study_uid,
                None,
                "cstore_failed",
                time.time(),
                destination=item.destination,
                sop_instance_uid=item.sop_uid,
                attempt=item.attempts + 1,
                error=error,
                next_attempt_at=next_attempt_at,
            )

        self.db.run(work)

    def outbox_dead(self, item: OutboxItem, error: str) -> None:
        """A permanent failure or too many attempts: DEAD (a dead letter) until resend_dead."""

        def work(cur: Cursor) -> None:
            cur.run(
                self._q.dead,
                outbox_id=item.outbox_id,
                error=error,
                dead=OutboxState.DEAD.value,
                pending=_PENDING,
            )
            events.add(
                cur,
                self.db.dialect,
                item.study_uid,
                None,
                "dead",
                time.time(),
                destination=item.destination,
                sop_instance_uid=item.sop_uid,
                attempt=item.attempts + 1,
                error=error,
            )

        self.db.run(work)

    def resend_dead(self, study_uid: str | None = None, *, now: float = 0.0) -> int:
        """Dead letters (of one study, or all) back to PENDING with attempts 0, due at `now`
        (by default at once); returns how many."""
        states = {"pending": _PENDING, "dead": OutboxState.DEAD.value}
        if study_uid is None:
            query, params = self._q.resend_all_dead, states
        else:
            uid = require_uid("Study Instance UID", study_uid)
            query, params = self._q.resend_dead_of_study, {**states, "study_uid": uid}
        return self.db.run(lambda cur: cur.run(query, now=now, **params).rowcount)
