"""Storing one received instance file, whichever door it came in by (C-STORE or STOW-RS).

The checks, the commit into the store (fsynced) and the index row are the same for both
doors, so they live here once: `InstanceIntake.store` takes a file already written to the
store's incoming folder and its header (read by `read_instance_header`, the one entry point
to scp_node.dicom.instance_header), and returns the index record once the instance is durable, or
raises `Rejected` with the DIMSE status the caller answers (C-STORE) or reports as the
FailureReason (STOW-RS). One `Sending` per association or STOW-RS request says which studies
that transfer brought, for the per-AE study quota and the completion on release.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from scp_node.config import Config
from scp_node.dicom.instance_header import HeaderError, InstanceHeader, read_header
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    INSTANCE_IN_OTHER_STUDY,
    OUT_OF_RESOURCES,
    PATIENT_MISMATCH,
    error_comment,
)
from scp_node.logs import escape_text
from scp_node.receive.lazy_index import LazyIndexing, remember_calling_aet
from storage.database import DatabaseFull
from storage.index import Index, StudyConflict
from storage.instance_store import DataSync, InstanceStore
from storage.records import InstanceRecord
from storage.uids import InvalidUIDError

CONFLICT_STATUS = {
    StudyConflict.PATIENT: PATIENT_MISMATCH,
    StudyConflict.OTHER_STUDY: INSTANCE_IN_OTHER_STUDY,
}
# The Error Comment of each conflict (its message names the study, too long for one)
CONFLICT_COMMENT = {
    StudyConflict.PATIENT: "patient differs from the study's (one patient per study)",
    StudyConflict.OTHER_STUDY: "SOP Instance UID already stored in another study",
}


class Rejected(Exception):
    """An instance refused with a DICOM status; the message says why, for the log and the
    audit; `comment` says it for the peer in an Error Comment (at most 64 characters: the
    message, shortened, when no comment is given)."""

    def __init__(self, status: int, reason: str, comment: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.comment = error_comment(comment or reason)

    @classmethod
    def conflict(cls, conflict: StudyConflict) -> Rejected:
        """The refusal of an instance that cannot belong to its study."""
        return cls(CONFLICT_STATUS[conflict.kind], str(conflict), CONFLICT_COMMENT[conflict.kind])


@dataclasses.dataclass
class Sending:
    """What one association (or STOW-RS request) sent: its id in the index and the studies it
    brought new instances of (each recorded in open_associations with its first one)."""

    association_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    studies: set[str] = dataclasses.field(default_factory=set)


class InstanceIntake:
    """Checks, commit and index of received instance files; shared by both doors."""

    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        index: Index,
        indexing: LazyIndexing,
        *,
        intake_paused: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.indexing = indexing
        self._intake_paused = intake_paused  # the console's switch: refused with 0xA700

    def check_open(self) -> None:
        """Raise Rejected(0xA700) while intake is paused or the store is short of space."""
        if self._intake_paused is not None and self._intake_paused():
            raise Rejected(
                OUT_OF_RESOURCES,
                "intake is paused from the console",
                "intake is paused on the node",
            )
        if not self.store.has_free_space():
            floor = self.config.storage.min_free_mb
            raise Rejected(
                OUT_OF_RESOURCES,
                f"free space on {self.store.root} is below [storage] min_free_mb ({floor} MiB)",
                f"free space on the node is below min_free_mb ({floor} MiB)",
            )

    @staticmethod
    def record_of(header: InstanceHeader, path: Path, calling_aet: str) -> InstanceRecord:
        """The index row of the file at `path`; Rejected(0xC210) for a UID that is not one."""
        try:
            return header.record(path, calling_aet, time.time())
        except InvalidUIDError as exc:
            raise Rejected(CANNOT_UNDERSTAND, str(exc), _uid_comment(exc)) from None

    def store_record(
        self,
        streamed: Path,
        record: InstanceRecord,
        header: InstanceHeader,
        sending: Sending,
        *,
        data_sync: DataSync | None = None,
        on_quota: Callable[[str, str], None] | None = None,
    ) -> tuple[InstanceRecord, bool]:
        """Quota and one-patient checks, then commit `streamed` into the store and index it:
        (the record at its final path, whether the instance is new). Raises Rejected."""
        self.check_study_quota(record.study_uid, record.calling_aet, sending, on_quota)
        conflict = self.index.instance_conflict(
            record.study_uid, record.sop_uid, record.patient_digest, record.birth_date_digest
        )
        if conflict is not None:
            raise Rejected.conflict(conflict)
        temp = self._temp_in_store(streamed)
        with self.indexing.committing():
            try:
                remember_calling_aet(temp, record.calling_aet)
                final, new = self.store.commit(
                    temp, record.study_uid, record.series_uid, record.sop_uid, data_sync=data_sync
                )
            except InvalidUIDError as exc:
                raise Rejected(CANNOT_UNDERSTAND, str(exc), _uid_comment(exc)) from None
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise Rejected(
                        OUT_OF_RESOURCES,
                        f"disk full while storing: {exc}",
                        "disk full on the node while storing",
                    ) from None
                raise
            finally:
                if temp != streamed:
                    temp.unlink(missing_ok=True)
            record = dataclasses.replace(record, path=final, received_at=time.time())
            opens = record.study_uid not in sending.studies
            try:
                indexed = self.indexing.record(
                    record,
                    header.expected_in_series(),
                    association_id=sending.association_id,
                    opens_association=opens,
                )
            except StudyConflict as raced:  # with another instance: nothing was indexed
                if new:
                    self.store.remove_instance(final)
                raise Rejected.conflict(raced) from None
            except DatabaseFull as full:  # nothing was indexed; the peer sends it again later
                if new:
                    self.store.remove_instance(final)
                raise Rejected(
                    OUT_OF_RESOURCES, str(full), "index database full on the node"
                ) from None
            if indexed and opens:
                sending.studies.add(record.study_uid)
        return record, new

    def check_study_quota(
        self,
        study_uid: str,
        calling_aet: str,
        sending: Sending,
        on_quota: Callable[[str, str], None] | None = None,
    ) -> None:
        """Refuse (0xA700; `on_quota(study_uid, reason)` audits it) an instance that would
        start one more new study for a calling identity that started [security]
        max_new_studies_per_hour in the last hour."""
        quota = self.config.security.max_new_studies_per_hour
        if not quota or study_uid in sending.studies:
            return  # no quota, or a study this transfer already brought instances of
        if self.index.study_known(study_uid):
            return
        started = self.index.studies_started_by(calling_aet, time.time() - 3600.0)
        if started < quota:
            return
        reason = (
            f"calling AE {escape_text(calling_aet, 16)} started {started} new studies in the "
            f"last hour ([security] max_new_studies_per_hour = {quota})"
        )
        if on_quota is not None:
            on_quota(study_uid, reason)
        raise Rejected(
            OUT_OF_RESOURCES, reason, f"calling AE reached max_new_studies_per_hour ({quota})"
        )

    def _temp_in_store(self, streamed: Path) -> Path:
        """The streamed file when it lies in the store's incoming folder, else a copy there."""
        if streamed.parent == self.store.incoming:
            return streamed
        temp = Path(self.store.temp_path())
        shutil.copyfile(streamed, temp)
        return temp


def read_instance_header(path: Path) -> InstanceHeader:
    """The few header values the node indexes, read without touching Pixel Data; Rejected
    (0xC210) for a file that does not parse."""
    try:
        return read_header(path)
    except HeaderError as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"dataset does not parse: {exc}") from None
    except RecursionError:  # e.g. hundreds of nested sequences: refused, never a crash
        raise Rejected(
            CANNOT_UNDERSTAND, "dataset does not parse: sequences nested too deeply"
        ) from None
    except Exception as exc:  # pydicom on hostile bytes: struct.error, NotImplementedError (VR)...
        raise Rejected(
            CANNOT_UNDERSTAND, f"dataset does not parse: {type(exc).__name__}: {exc}"
        ) from None


def _uid_comment(exc: InvalidUIDError) -> str:
    """The Error Comment of a value that is not a UID: which attribute (the value may be long)."""
    return f"{exc.name} is not a valid UID" if exc.name else str(exc)
