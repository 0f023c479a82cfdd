"""What the web console and /metrics read from the index, and the administrator's actions.

Reads are plain rows as dicts (epoch seconds kept as floats; the web layer formats them).
Every action runs in one transaction, writes an event with the person who asked onto the
study's timeline (storage.events) and returns how many rows it changed, so the caller can say
"nothing to do" instead of pretending; the caller also writes the audit log.
"""

from __future__ import annotations

import time
from typing import Any

from storage import events, jobs
from storage.database import Cursor, Database
from storage.queries import load
from storage.states import JobState, OutboxState, StudyState
from storage.uids import require_uid

INTAKE_PAUSED = "intake_paused"
ANALYSIS_PAUSED = "analysis_paused"
FLAGS = (INTAKE_PAUSED, ANALYSIS_PAUSED)
NO_DESTINATION = "no destination"  # a study done with nothing to send, shown instead of DELIVERED


def delivery_word(state: str, outbox_rows: int) -> str:
    """The state a person reads: DELIVERED only when something was delivered."""
    if state == StudyState.DELIVERED and outbox_rows == 0:
        return f"DONE ({NO_DESTINATION})"
    return state


class Console:
    """Queries and actions of the console over one Database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("console", db.dialect)

    def _read(self, query: Any, **params: Any) -> list[tuple[Any, ...]]:
        return self.db.run(lambda cur: cur.run(query, **params).fetchall(), write=False)

    # ---- reads ------------------------------------------------------------------------------

    def search(
        self,
        *,
        accession: str = "",
        patient_id: str = "",
        study_uid: str = "",
        study_date: str = "",
        sender: str = "",
        state: str = "",
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Studies matching every filter given, most recently changed first."""
        date = study_date.replace("-", "").strip()
        rows = self._read(
            self._q.search_studies,
            accession=accession.strip(),
            patient_id=patient_id.strip(),
            study_uid=study_uid.strip(),
            study_uid_prefix=_like_prefix(study_uid.strip()),
            study_date=date,
            study_date_prefix=_like_prefix(date),
            sender=sender.strip(),
            state=state.strip().upper(),
            limit=limit,
        )
        return [_study(r) for r in rows]

    def study(self, study_uid: str) -> dict[str, Any] | None:
        """One study with its series, senders, jobs, results and outbox rows; None if unknown."""
        study_uid = require_uid("Study Instance UID", study_uid)
        found = self.search(study_uid=study_uid, limit=2)
        row = next((s for s in found if s["study_uid"] == study_uid), None)
        if row is None:
            return None
        q = self._q

        def work(cur: Cursor) -> dict[str, list[tuple[Any, ...]]]:
            queries = {
                "instances_by_sender": q.instances_by_sender,
                "series_of_study": q.series_of_study,
                "jobs_of_study": q.jobs_of_study,
                "results_of_study": q.results_of_study,
                "outbox_of_study": q.outbox_of_study,
            }
            return {
                name: cur.run(query, study_uid=study_uid).fetchall()
                for name, query in queries.items()
            }

        parts = self.db.run(work, write=False)
        keys = {
            "instances_by_sender": ("calling_ae", "instances", "first_at", "last_at"),
            "series_of_study": ("series_uid", "modality", "instances", "expected", "version"),
            "jobs_of_study": (
                "version",
                "state",
                "owner",
                "attempts",
                "created_at",
                "updated_at",
                "last_error",
            ),
            "results_of_study": (
                "sop_uid",
                "series_uid",
                "version",
                "sop_class_uid",
                "kind",
                "path",
                "created_at",
            ),
            "outbox_of_study": (
                "outbox_id",
                "version",
                "sop_uid",
                "destination",
                "state",
                "attempts",
                "next_attempt_at",
                "last_error",
                "updated_at",
            ),
        }
        for name, rows in parts.items():
            row[name] = [dict(zip(keys[name], r, strict=True)) for r in rows]
        row["events"] = events.Events(self.db).of_study(study_uid)
        return row

    def result_path(self, sop_uid: str) -> tuple[str, str] | None:
        """(path, kind) of one of the node's result objects, or None."""
        sop_uid = require_uid("SOP Instance UID", sop_uid)
        rows = self._read(self._q.result_path, sop_uid=sop_uid)
        return (rows[0][0], rows[0][1]) if rows else None

    def instance_path(self, sop_uid: str) -> str | None:
        """The stored file of a received instance, or None."""
        rows = self._read(self._q.instance_path, sop_uid=require_uid("SOP Instance UID", sop_uid))
        return rows[0][0] if rows else None

    def deliveries(self) -> dict[str, dict[str, Any]]:
        """Per destination: rows by state, last change, last error."""
        out: dict[str, dict[str, Any]] = {}
        for destination, state, count, last in self._read(self._q.deliveries):
            d = out.setdefault(destination, {"states": {}, "last_at": None, "last_error": None})
            d["states"][state] = count
            d["last_at"] = max(d["last_at"] or 0.0, last or 0.0)
        for destination, error, at in self._read(self._q.last_errors):
            d = out.setdefault(destination, {"states": {}, "last_at": None, "last_error": None})
            if d["last_error"] is None:
                d["last_error"], d["last_error_at"] = error, at
        return out

    def unfinished(self, limit: int = 500) -> list[dict[str, Any]]:
        """Results sent and awaiting their Storage Commitment (with when it is due), and
        results that failed and wait for their next try (with the reason)."""
        keys = (
            "outbox_id",
            "study_uid",
            "sop_uid",
            "destination",
            "state",
            "attempts",
            "last_error",
            "at",
            "next_attempt_at",
            "commit_due_at",
            "transaction_uid",
        )
        rows = self._read(
            self._q.unfinished,
            committing=OutboxState.COMMITTING.value,
            pending=OutboxState.PENDING.value,
            limit=limit,
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def dead_letters(self, limit: int = 500) -> list[dict[str, Any]]:
        keys = ("outbox_id", "study_uid", "sop_uid", "destination", "attempts", "last_error", "at")
        rows = self._read(self._q.dead_letters, dead=OutboxState.DEAD.value, limit=limit)
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def counts(self) -> dict[str, Any]:
        """Numbers for the Node page and /metrics: studies by state, queue depth, outbox."""

        def work(cur: Cursor) -> dict[str, Any]:
            q = self._q
            pending, oldest = cur.run(
                q.pending_outbox, pending=OutboxState.PENDING.value
            ).fetchone() or (0, None)
            dead = cur.run(q.dead_letters, dead=OutboxState.DEAD.value, limit=1_000_000).fetchall()
            return {
                "studies": dict(cur.run(q.studies_by_state).fetchall()),
                "queue_depth": int(
                    cur.run(
                        q.queue_depth,
                        queued=JobState.QUEUED.value,
                        running=JobState.RUNNING.value,
                    ).scalar()
                    or 0
                ),
                "outbox_pending": int(pending or 0),
                "outbox_oldest_pending_at": oldest,
                "dead_letters": len(dead),
            }

        return self.db.run(work, write=False)

    def ping(self) -> None:
        """A real query: raises when the database does not answer."""
        self.db.run(lambda cur: cur.run(self._q.ping).scalar(), write=False)

    def flags(self) -> dict[str, dict[str, Any]]:
        """Node-wide switches: {name: {"on": bool, "at": epoch, "actor": who}}."""
        return {
            name: {"on": value == "1", "at": at, "actor": actor}
            for name, value, at, actor in self._read(self._q.flags)
        }

    def flag_on(self, name: str) -> bool:
        return bool(self.flags().get(name, {}).get("on"))

    # ---- actions ----------------------------------------------------------------------------

    def set_flag(self, name: str, on: bool, actor: str) -> None:
        if name not in FLAGS:
            raise ValueError(f"unknown switch {name!r}; expected one of {FLAGS}")
        self.db.run(
            lambda cur: cur.run(
                self._q.set_flag, name=name, value="1" if on else "0", now=time.time(), actor=actor
            )
        )

    def resend_one(self, outbox_id: str, actor: str) -> int:
        """One dead letter back to PENDING, due now."""
        q = self._q
        now = time.time()

        def work(cur: Cursor) -> int:
            row = cur.run(q.outbox_row, outbox_id=outbox_id).fetchone()
            if row is None:
                return 0
            return self._resend(cur, outbox_id, row[0], row[1], row[2], now, actor)

        return self.db.run(work)

    def _resend(
        self,
        cur: Cursor,
        outbox_id: str,
        study_uid: str,
        destination: str,
        sop_uid: str,
        now: float,
        actor: str,
    ) -> int:
        """Within the caller's transaction: one dead letter PENDING again, due `now`, and its
        "resend" event; 0 when the row is not a dead letter."""
        changed: int = cur.run(
            self._q.resend_one,
            outbox_id=outbox_id,
            now=now,
            pending=OutboxState.PENDING.value,
            dead=OutboxState.DEAD.value,
        ).rowcount
        if changed:
            events.add(
                cur,
                self.db.dialect,
                study_uid,
                None,
                "resend",
                now,
                actor=actor,
                destination=destination,
                sop_instance_uid=sop_uid,
            )
        return changed

    def resend_destination(self, destination: str, actor: str) -> int:
        """Every dead letter of one destination back to PENDING."""
        q = self._q
        now = time.time()

        def work(cur: Cursor) -> int:
            rows = cur.run(
                q.dead_of_destination, destination=destination, dead=OutboxState.DEAD.value
            ).fetchall()
            return sum(
                self._resend(cur, outbox_id, study_uid, destination, sop_uid, now, actor)
                for outbox_id, study_uid, sop_uid in rows
            )

        return self.db.run(work)

    def mark_complete(self, study_uid: str, actor: str) -> int:
        """A RECEIVING study READY now (the sender will send no more), its job queued."""
        study_uid = require_uid("Study Instance UID", study_uid)
        q = self._q
        now = time.time()

        def work(cur: Cursor) -> int:
            row = cur.run(q.study_state, study_uid=study_uid).fetchone()
            changed = cur.run(
                q.mark_complete,
                study_uid=study_uid,
                now=now,
                ready=StudyState.READY.value,
                receiving=StudyState.RECEIVING.value,
            ).rowcount
            if changed and row is not None:
                jobs.enqueue(cur, self.db.dialect, study_uid, row[1], now)
                events.add(
                    cur, self.db.dialect, study_uid, row[1], "mark_complete", now, actor=actor
                )
            return changed

        return self.db.run(work)

    def analyse_again(self, study_uid: str, actor: str) -> int:
        """A REPORTED, DELIVERED or FAILED study analysed again as a new version."""
        study_uid = require_uid("Study Instance UID", study_uid)
        q = self._q
        now = time.time()

        def work(cur: Cursor) -> int:
            changed = cur.run(
                q.analyse_again,
                study_uid=study_uid,
                now=now,
                ready=StudyState.READY.value,
                reported=StudyState.REPORTED.value,
                delivered=StudyState.DELIVERED.value,
                failed=StudyState.FAILED.value,
            ).rowcount
            if changed:
                row = cur.run(q.study_state, study_uid=study_uid).fetchone()
                version = int(row[1]) if row else 0
                jobs.enqueue(cur, self.db.dialect, study_uid, version, now)
                events.add(cur, self.db.dialect, study_uid, version, "reanalyse", now, actor=actor)
            return changed

        return self.db.run(work)


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "").replace("%", "").replace("_", "")
    return escaped + "%"


def _study(r: tuple[Any, ...]) -> dict[str, Any]:
    modalities = sorted({m for m in (r[12] or "").split(",") if m})
    return {
        "study_uid": r[0],
        "state": r[1],
        "shown_state": delivery_word(r[1], r[14]),
        "version": r[2],
        "sender": r[3],
        "instances": r[4],
        "first_received_at": r[5],
        "last_received_at": r[6],
        "updated_at": r[7],
        "reason": r[8],
        "accession_number": r[9] or "",
        "study_date": r[10] or "",
        "patient_id": r[11] or "",
        "modalities": modalities,
        "series": r[13],
        "outbox_rows": r[14],
    }
