"""Retention: which studies may go, and removing every row of one."""

from __future__ import annotations

from storage.database import Database
from storage.queries import load
from storage.states import StudyState
from storage.uids import require_uid


class Retention:
    """Expiry of delivered studies."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("operations", db.dialect)

    def expired_studies(self, older_than: float) -> list[str]:
        """DELIVERED studies last changed before `older_than` (for retention)."""
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
