"""The timeline of each study: one row per event, written in the transaction that made it.

Kinds: ready (complete; stage waiting_for_completion), claimed (worker id; stage queued on the
first claim), lease_expired, analysis_started / analysis_done (model name, version, SHA-256;
stages analysis and encoding), reported, failed, retry_analysis, cstore (one per C-STORE
attempt, or STOW-RS request, that failed: destination, error, next retry), sent (stage
delivery; with a Transaction UID when Storage Commitment was asked), committed and
commit_failed (storage.commitments), dead, delivered
(stage turnaround: first instance to the last result accepted), resend, and the console's
actions (reanalyse, mark_complete) with the person who asked. `stage` and `duration_s` feed the
`lungnode_*_seconds` histograms of /metrics (scp_node.metrics), so they are counted once for
the whole node however many processes it runs. `detail` is a JSON object; no patient data.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from storage.database import Cursor, Database
from storage.queries import load


def add(
    cur: Cursor,
    dialect: str,
    study_uid: str | None,
    version: int | None,
    kind: str,
    at: float,
    *,
    stage: str | None = None,
    duration_s: float | None = None,
    actor: str | None = None,
    **detail: Any,
) -> None:
    """Within the caller's transaction: one event."""
    cur.run(
        load("events", dialect).add_event,
        event_id=uuid.uuid4().hex,
        study_uid=study_uid,
        version=version,
        at=at,
        kind=kind,
        stage=stage,
        duration_s=None if duration_s is None else max(0.0, float(duration_s)),
        detail=json.dumps(detail, sort_keys=True, default=str),
        actor=actor,
    )


class Events:
    """Events outside another transaction (the worker's analysis, the console's actions)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("events", db.dialect)

    def add(
        self,
        study_uid: str | None,
        version: int | None,
        kind: str,
        *,
        at: float | None = None,
        stage: str | None = None,
        duration_s: float | None = None,
        actor: str | None = None,
        detail: dict[str, object] | None = None,
        **more: object,
    ) -> None:
        """One event in its own transaction; `at` defaults to now; `detail` and `more` are
        its detail."""
        values = {**(detail or {}), **more}
        self.db.run(
            lambda cur: add(
                cur,
                self.db.dialect,
                study_uid,
                version,
                kind,
                time.time() if at is None else at,
                stage=stage,
                duration_s=duration_s,
                actor=actor,
                **values,
            )
        )

    def of_study(self, study_uid: str) -> list[dict[str, Any]]:
        rows = self.db.run(
            lambda cur: cur.run(self._q.events_of_study, study_uid=study_uid).fetchall(),
            write=False,
        )
        return [
            {
                "version": r[0],
                "at": r[1],
                "kind": r[2],
                "stage": r[3],
                "duration_s": r[4],
                "detail": json.loads(r[5] or "{}"),
                "actor": r[6],
            }
            for r in rows
        ]

    def durations(self) -> list[tuple[str, float]]:
        """(stage, seconds) of every event with a stage, for the histograms of /metrics."""
        rows = self.db.run(lambda cur: cur.run(self._q.stage_durations).fetchall(), write=False)
        return [(r[0], float(r[1])) for r in rows]

    def count(self, kind: str) -> int:
        return int(
            self.db.run(lambda cur: cur.run(self._q.count_kind, kind=kind).scalar(), write=False)
            or 0
        )
