"""Every study and outbox row, for `lungnode status` and the health page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from storage.console import delivery_word
from storage.database import Cursor, Database
from storage.queries import load
from storage.states import OutboxState

Rows = list[tuple[Any, ...]]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC ('2024-05-01T12:00:00Z')."""
    if epoch is None:
        return None
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def result_outcome(state: str, last_error: str | None) -> str:
    """What became of one result at one destination, in words a person reads (the reason is
    `last_error`): sent, committed, sent and awaiting commitment, failed (retrying or a dead
    letter), or queued."""
    if state == OutboxState.SENT:
        return "sent"
    if state == OutboxState.COMMITTED:
        return "committed"
    if state == OutboxState.COMMITTING:
        return "sent, awaiting commitment"
    if state == OutboxState.DEAD:
        return "failed (dead letter)"
    return "failed, retrying" if last_error else "queued"


def status(db: Database) -> dict[str, list[dict[str, Any]]]:
    """{"studies": [...], "outbox": [...]}, newest study first, outbox rows oldest first."""
    q = load("operations", db.dialect)

    def work(cur: Cursor) -> tuple[Rows, Rows]:
        return cur.run(q.studies).fetchall(), cur.run(q.outbox).fetchall()

    studies, outbox = db.run(work, write=False)
    return {
        "studies": [
            {
                "study_uid": r[0],
                "state": r[1],
                "instances": r[2],
                "series": r[3],
                "updated_at": iso(r[4]),
                "reason": r[5],
                "version": r[6],
                "accession_number": r[7] or "",
                "study_date": r[8] or "",
                "sender": r[9],
                "modalities": sorted({m for m in (r[10] or "").split(",") if m}),
                # DELIVERED with nothing to deliver reads "DONE (no destination)"
                "shown_state": delivery_word(r[1], r[11]),
            }
            for r in studies
        ],
        "outbox": [
            {
                "study_uid": r[0],
                "sop_instance_uid": r[1],
                "destination": r[2],
                "state": r[3],
                "outcome": result_outcome(r[3], r[5]),
                "attempts": r[4],
                "last_error": r[5],
                "next_attempt_at": iso(r[6]),
                # Storage Commitment (storage.commitments); None for a destination without it
                "transaction_uid": r[7],
                "commit_due_at": iso(r[8]),
                "committed_at": iso(r[9]),
                "updated_at": iso(r[10]),
            }
            for r in outbox
        ],
    }
