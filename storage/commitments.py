"""Storage Commitment of sent results: COMMITTING rows and what the destination reports of them.

A result C-STOREd to a destination with commit=yes is not SENT but COMMITTING, under the
Transaction UID of the N-ACTION that asked the destination to commit it, until `commit_due_at`.
The destination's N-EVENT-REPORT (on the sender's association or a later one it opens to the
node) names the instances it committed (COMMITTED; the study is DELIVERED once every row of its
current version is SENT or COMMITTED) and those it failed to (back to PENDING to be sent again,
DEAD once attempts are used up). A commitment that has not come by `commit_due_at` is
`overdue` and retried the same way by the sender.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from storage import events
from storage.database import Cursor, Database
from storage.outbox import add_sent_event, deliver_if_complete, item_of
from storage.queries import load
from storage.records import OutboxItem
from storage.states import OutboxState
from storage.uids import require_uid

_STATES = {
    "pending": OutboxState.PENDING.value,
    "committing": OutboxState.COMMITTING.value,
    "committed": OutboxState.COMMITTED.value,
    "dead": OutboxState.DEAD.value,
}

# Given the attempt number a failure makes (1-based): when to send the row again, or None when
# attempts are used up (the row becomes a dead letter).
RetryAt = Callable[[int], float | None]


@dataclass(frozen=True)
class ReportOutcome:
    """What one N-EVENT-REPORT did to the rows of its transaction."""

    committed: int = 0
    retried: int = 0
    dead: int = 0
    unknown: tuple[str, ...] = ()  # SOP Instance UIDs the report names that the transaction lacks
    still_waiting: int = 0  # rows of the transaction the report named neither way


class Commitments:
    """The Storage Commitment part of the outbox."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("commitments", db.dialect)
        self._outbox_q = load("outbox", db.dialect)

    def awaiting(
        self, items: Collection[OutboxItem], transaction_uid: str, due_at: float, now: float
    ) -> None:
        """Claimed rows the destination stored: COMMITTING under `transaction_uid` until
        `due_at`. Written before the N-ACTION goes out, so a report that comes at once finds
        them."""
        uid = require_uid("Transaction UID", transaction_uid)

        def work(cur: Cursor) -> None:
            for item in items:
                times = cur.run(self._outbox_q.row_times, outbox_id=item.outbox_id).fetchone()
                cur.run(
                    self._q.awaiting,
                    outbox_id=item.outbox_id,
                    transaction_uid=uid,
                    commit_due_at=due_at,
                    now=now,
                    **_STATES,
                )
                add_sent_event(
                    cur,
                    self.db.dialect,
                    item,
                    times,
                    now,
                    transaction_uid=uid,
                    commit_due_at=due_at,
                )

        self.db.run(work)

    def destinations_of(self, transaction_uid: str) -> list[str]:
        """The destination names of the rows ever asked under `transaction_uid` (normally one)."""
        return [
            r[0]
            for r in self.db.run(
                lambda cur: cur.run(
                    self._q.destinations_of, transaction_uid=transaction_uid
                ).fetchall(),
                write=False,
            )
        ]

    def report(
        self,
        transaction_uid: str,
        committed: Collection[str],
        failed: Mapping[str, str],
        now: float,
        retry_at: RetryAt,
    ) -> ReportOutcome:
        """Apply a Storage Commitment report to the COMMITTING rows of `transaction_uid`:
        the SOP Instance UIDs in `committed` become COMMITTED, those in `failed` (UID -> the
        reason in words) are sent again at `retry_at(attempt)` or become DEAD when it is None.
        Rows the report names neither way keep waiting for their commit_due_at."""
        q = self._q
        committed_set = set(committed)

        def work(cur: Cursor) -> ReportOutcome:
            rows = cur.run(q.of_transaction, transaction_uid=transaction_uid, **_STATES).fetchall()
            counts = {"committed": 0, "retried": 0, "dead": 0, "waiting": 0}
            for row in rows:
                item = item_of(row)
                if item.sop_uid in committed_set:
                    study = cur.run(self._outbox_q.lock_study, study_uid=item.study_uid).fetchone()
                    times = cur.run(self._outbox_q.row_times, outbox_id=item.outbox_id).fetchone()
                    cur.run(q.committed, outbox_id=item.outbox_id, now=now, **_STATES)
                    events.add(
                        cur,
                        self.db.dialect,
                        item.study_uid,
                        row[6],
                        "committed",
                        now,
                        destination=item.destination,
                        sop_instance_uid=item.sop_uid,
                        transaction_uid=transaction_uid,
                    )
                    deliver_if_complete(
                        cur,
                        self.db.dialect,
                        item.study_uid,
                        study,
                        now,
                        times[2] if times else None,
                    )
                    counts["committed"] += 1
                elif item.sop_uid in failed:
                    error = failed[item.sop_uid]
                    _, dead = self._failed(cur, item, row[6], error, now, retry_at)
                    counts["dead" if dead else "retried"] += 1
                else:
                    counts["waiting"] += 1
            known = {r[2] for r in rows}
            unknown = tuple(sorted((committed_set | set(failed)) - known))
            return ReportOutcome(
                counts["committed"], counts["retried"], counts["dead"], unknown, counts["waiting"]
            )

        return self.db.run(work)

    def overdue(self, now: float, limit: int = 50) -> list[OutboxItem]:
        """COMMITTING rows whose commitment has not come by their commit_due_at."""
        rows = self.db.run(
            lambda cur: cur.run(self._q.overdue, now=now, limit=limit, **_STATES).fetchall()
        )
        return [item_of(r) for r in rows]

    def commitment_failed(
        self, item: OutboxItem, error: str, now: float, next_attempt_at: float | None
    ) -> bool:
        """A COMMITTING row whose commitment failed or never came: PENDING again at
        `next_attempt_at` (attempts+1), or DEAD when it is None. False when the row was no
        longer COMMITTING (a report came meanwhile)."""

        def work(cur: Cursor) -> bool:
            times = cur.run(self._outbox_q.row_times, outbox_id=item.outbox_id).fetchone()
            if times is None:
                return False
            changed, _ = self._failed(cur, item, times[1], error, now, lambda _: next_attempt_at)
            return changed

        return self.db.run(work)

    def _failed(
        self,
        cur: Cursor,
        item: OutboxItem,
        version: int,
        error: str,
        now: float,
        retry_at: RetryAt,
    ) -> tuple[bool, bool]:
        """One COMMITTING row whose commitment failed: retried or dead; (whether it was still
        COMMITTING, whether it is dead)."""
        next_attempt_at = retry_at(item.attempts + 1)
        query = self._q.retry if next_attempt_at is not None else self._q.dead
        changed = cur.run(
            query,
            outbox_id=item.outbox_id,
            error=error,
            next_attempt_at=next_attempt_at,
            now=now,
            **_STATES,
        ).rowcount
        if changed:
            self._event(cur, item, version, error, now, next_attempt_at)
        return bool(changed), next_attempt_at is None

    def _event(
        self,
        cur: Cursor,
        item: OutboxItem,
        version: int | None,
        error: str,
        now: float,
        next_attempt_at: float | None,
    ) -> None:
        events.add(
            cur,
            self.db.dialect,
            item.study_uid,
            version,
            "commit_failed" if next_attempt_at is not None else "dead",
            now,
            destination=item.destination,
            sop_instance_uid=item.sop_uid,
            attempt=item.attempts + 1,
            error=error,
            next_attempt_at=next_attempt_at,
        )
