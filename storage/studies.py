"""Receiving: index instances and move studies from RECEIVING to READY (with one queued job).

A study's version grows each time an instance arrives after it left RECEIVING, so analysis of
an older version is stale (see storage.jobs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage import events, jobs
from storage.database import Cursor, Database
from storage.queries import load
from storage.records import InstanceRecord
from storage.states import StudyState
from storage.study_files import InstanceFile, SeriesFiles, StudyFiles
from storage.uids import require_uid


class Studies:
    """Received instances, series and studies."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("studies", db.dialect)

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
        q = self._q
        row = {
            "sop_uid": sop,
            "study_uid": study,
            "series_uid": series,
            "sop_class_uid": str(rec.sop_class_uid),
            "modality": rec.modality,
            "path": str(rec.path),
            "calling_aet": rec.calling_aet,
            "source_aet": rec.calling_aet,
            "received_at": float(rec.received_at),
            "expected_instances": expected_in_series,
            "receiving": StudyState.RECEIVING.value,
            "accession_number": getattr(rec, "accession_number", ""),  # an older record type: none
            "study_date": getattr(rec, "study_date", ""),  # an older record type: none
            "patient_id": getattr(rec, "patient_id", ""),  # an older record type: none
        }

        def work(cur: Cursor) -> bool:
            if cur.run(q.is_result, **row).fetchone():
                return False
            if cur.run(q.insert_instance, **row).rowcount == 0:
                return False
            version = cur.run(q.count_instance_in_study, **row).scalar()
            cur.run(q.count_instance_in_series, **row, version=version)
            return True

        return self.db.run(work)

    def mark_ready(self, now: float, quiet_seconds: float) -> list[str]:
        """Move RECEIVING studies to READY and queue one analysis job per study version.

        A study is ready when nothing arrived for `quiet_seconds`, or sooner when every series
        with an expected count has reached it and at least one such series received instances
        in the study's current version (so a late CT series does not re-trigger on a PET series
        completed earlier). Returns the study UIDs made ready.
        """
        q = self._q
        states = {"receiving": StudyState.RECEIVING.value, "ready": StudyState.READY.value}

        def work(cur: Cursor) -> list[str]:
            candidates = cur.run(
                q.ready_candidates, quiet_since=now - quiet_seconds, **states
            ).fetchall()
            ready: list[str] = []
            for study_uid, version in candidates:
                made = cur.run(
                    q.make_ready, study_uid=study_uid, version=version, now=now, **states
                )
                if made.rowcount != 1:
                    continue  # another node's tick, or a new instance, got there first
                jobs.enqueue(cur, self.db.dialect, study_uid, version, now)
                first = cur.run(q.first_received, study_uid=study_uid).scalar()
                events.add(
                    cur,
                    self.db.dialect,
                    study_uid,
                    version,
                    "ready",
                    now,
                    stage="waiting_for_completion",
                    duration_s=now - float(first or now),
                )
                ready.append(study_uid)
            return ready

        return self.db.run(work)

    def study_files(self, study_uid: str) -> StudyFiles:
        """Every received instance of a study grouped by series (never the node's own results);
        raises KeyError for a study not in the index."""
        study_uid = require_uid("Study Instance UID", study_uid)
        q = self._q

        def work(cur: Cursor) -> list[tuple[Any, ...]]:
            if not cur.run(q.study_exists, study_uid=study_uid).fetchone():
                raise KeyError(f"study {study_uid} is not in the index")
            return cur.run(q.study_instances, study_uid=study_uid).fetchall()

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
