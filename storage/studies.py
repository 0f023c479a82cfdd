"""Receiving: index instances and move studies from RECEIVING to READY (with one queued job).

A study's version grows each time an instance arrives after it left RECEIVING, so analysis of
an older version is stale (see storage.jobs).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from storage import events, jobs
from storage.database import Cursor, Database
from storage.queries import load
from storage.records import InstanceRecord
from storage.states import StudyState
from storage.study_files import InstanceFile, SeriesFiles, StudyFiles
from storage.uids import require_uid


class StudyConflict(ValueError):
    """An instance that cannot belong to its study: another patient's (Patient ID, or Patient's
    Birth Date when both have one, differs from the study's first instance), or a SOP Instance
    UID already indexed under another study. `kind` is PATIENT or OTHER_STUDY; the message
    names UIDs only, never a patient identifier."""

    PATIENT = "patient"
    OTHER_STUDY = "other-study"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _patient_conflict(
    study_uid: str,
    ours: tuple[str | None, str | None],
    study: tuple[str | None, str | None],
) -> StudyConflict | None:
    """The conflict between an instance's patient digests and its study's, if any: the Patient
    ID digest always counts (when both are known), the birth date's only when both have one."""
    (patient, birth), (study_patient, study_birth) = ours, study
    if patient is not None and study_patient is not None and patient != study_patient:
        return StudyConflict(
            StudyConflict.PATIENT,
            f"the instance's Patient ID differs from that of study {study_uid} "
            "(one patient per study)",
        )
    if birth is not None and study_birth is not None and birth != study_birth:
        return StudyConflict(
            StudyConflict.PATIENT,
            f"the instance's Patient's Birth Date differs from that of study {study_uid} "
            "(one patient per study)",
        )
    return None


def _other_study(sop_uid: str, study_uid: str, indexed_in: str) -> StudyConflict:
    return StudyConflict(
        StudyConflict.OTHER_STUDY,
        f"SOP Instance UID {sop_uid} is already stored under study {indexed_in}, "
        f"not {study_uid} (a SOP Instance belongs to one study)",
    )


class Studies:
    """Received instances, series and studies."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._q = load("studies", db.dialect)

    def record_instance(
        self,
        rec: InstanceRecord,
        *,
        expected_in_series: int | None = None,
        association_id: str | None = None,
        opens_association: bool = False,
    ) -> bool:
        """Index one stored instance in one transaction; False when its SOP Instance UID is
        already indexed in this study (or is one of the node's own result objects).
        `expected_in_series` is the series' expected instance count (PET Number of Slices)
        when known. `association_id` names the association that brought it (None: re-indexed,
        no association), which becomes the study's latest; `opens_association` also records
        that association as sending to the study until `association_ended` (the receiver
        passes it with the association's first new instance of each study).

        Raises StudyConflict, writing nothing, when the SOP Instance UID is indexed under
        another study, or when the record's patient digests differ from the study's (see
        `conflict`); the check and the insert are one transaction, so two instances of two
        patients racing into a new study cannot both be indexed."""
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
        # getattr: records of older callers (tests/support/index_v1's) carry no digests
        digests: tuple[str | None, str | None] = (
            getattr(rec, "patient_digest", None),
            getattr(rec, "birth_date_digest", None),
        )
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
            "patient_digest": digests[0],
            "birth_date_digest": digests[1],
            "association_id": association_id,
        }

        def work(cur: Cursor) -> bool:
            if cur.run(q.is_result, **row).fetchone():
                return False
            if cur.run(q.insert_instance, **row).rowcount == 0:
                indexed_in = cur.run(q.instance_study, **row).scalar()
                if indexed_in is not None and indexed_in != study:
                    raise _other_study(sop, study, str(indexed_in))
                return False
            counted = cur.run(q.count_instance_in_study, **row).fetchone()
            assert counted is not None  # INSERT ... RETURNING always returns the row
            version, patient, birth = counted
            conflict = _patient_conflict(study, digests, (patient, birth))
            if conflict is not None:
                raise conflict  # rolls the instance and study rows back
            cur.run(q.count_instance_in_series, **row, version=version)
            if opens_association and association_id is not None:
                cur.run(q.open_association, **row)
            return True

        return self.db.run(work)

    def conflict(
        self,
        study_uid: str,
        sop_uid: str,
        patient_digest: str | None,
        birth_date_digest: str | None,
    ) -> StudyConflict | None:
        """Why an instance may not be stored in `study_uid`, checked before its file is: its SOP
        Instance UID is indexed under another study, or its Patient ID digest (or, when both
        have one, Patient's Birth Date digest) differs from the study's. None when it may."""
        q = self._q
        study = require_uid("Study Instance UID", study_uid)
        sop = require_uid("SOP Instance UID", sop_uid)

        def work(cur: Cursor) -> StudyConflict | None:
            indexed_in = cur.run(q.instance_study, sop_uid=sop).scalar()
            if indexed_in is not None and indexed_in != study:
                return _other_study(sop, study, str(indexed_in))
            known = cur.run(q.study_patient, study_uid=study).fetchone()
            if known is None:
                return None
            return _patient_conflict(
                study, (patient_digest, birth_date_digest), (known[0], known[1])
            )

        return self.db.run(work, write=False)

    def patient_digests(self, study_uid: str) -> tuple[str | None, str | None] | None:
        """The study's (Patient ID, Patient's Birth Date) digests as the receiver indexed them
        (scp_node.dicom.instance_header.patient_digest; None where not indexed); None when the study
        is not in the index."""
        q = self._q
        study = require_uid("Study Instance UID", study_uid)
        row = self.db.run(
            lambda cur: cur.run(q.study_patient, study_uid=study).fetchone(), write=False
        )
        return None if row is None else (row[0], row[1])

    def study_known(self, study_uid: str) -> bool:
        """True when the study is in the index."""
        study = require_uid("Study Instance UID", study_uid)
        q = self._q
        return self.db.run(
            lambda cur: cur.run(q.study_exists, study_uid=study).fetchone() is not None,
            write=False,
        )

    def studies_started_by(self, calling_aet: str, since: float) -> int:
        """How many studies' first instance came from `calling_aet` at or after `since`."""
        q = self._q
        return int(
            self.db.run(
                lambda cur: cur.run(
                    q.studies_started_by, calling_aet=calling_aet, since=float(since)
                ).scalar(),
                write=False,
            )
            or 0
        )

    def senders(self, study_uid: str, series_uids: list[str] | None = None) -> list[str]:
        """The calling AE titles that sent instances of these series of the study (of every
        series when `series_uids` is None), sorted, without duplicates."""
        q = self._q
        study = require_uid("Study Instance UID", study_uid)
        wanted = None if series_uids is None else [require_uid("Series", s) for s in series_uids]

        def work(cur: Cursor) -> list[str]:
            if wanted is None:
                return [r[0] for r in cur.run(q.study_senders, study_uid=study).fetchall()]
            found: set[str] = set()
            for series in wanted:
                rows = cur.run(q.series_senders, study_uid=study, series_uid=series).fetchall()
                found.update(r[0] for r in rows)
            return sorted(found)

        return self.db.run(work, write=False)

    def association_ended(
        self, association_id: str, study_uids: Iterable[str], *, released: bool, now: float
    ) -> None:
        """An association that sent instances of `study_uids` ended: released normally
        (`released`), the studies whose latest instance it brought are released at `now` (see
        `mark_ready`); aborted, they are not. Either way it no longer holds them open."""
        q = self._q
        studies = [require_uid("Study Instance UID", uid) for uid in study_uids]
        receiving = StudyState.RECEIVING.value

        def work(cur: Cursor) -> None:
            if released:
                for study in studies:
                    cur.run(
                        q.association_released,
                        study_uid=study,
                        association_id=association_id,
                        now=now,
                        receiving=receiving,
                    )
            cur.run(q.association_ended, association_id=association_id)

        self.db.run(work)

    def mark_ready(
        self, now: float, quiet_seconds: float, release_quiet_seconds: float | None = None
    ) -> list[str]:
        """Move RECEIVING studies to READY and queue one analysis job per study version.

        A study is ready when nothing arrived for `quiet_seconds`; or `release_quiet_seconds`
        after the association that brought its latest instance was released normally, when no
        other association that sent to it is still open (None: `quiet_seconds`); or sooner when
        every series with an expected count has reached it and at least one such series
        received instances in the study's current version (so a late CT series does not
        re-trigger on a PET series completed earlier). Returns the study UIDs made ready.
        """
        q = self._q
        states = {"receiving": StudyState.RECEIVING.value, "ready": StudyState.READY.value}
        released_quiet = quiet_seconds if release_quiet_seconds is None else release_quiet_seconds

        def work(cur: Cursor) -> list[str]:
            candidates = cur.run(
                q.ready_candidates,
                quiet_since=now - quiet_seconds,
                released_since=now - released_quiet,
                **states,
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
