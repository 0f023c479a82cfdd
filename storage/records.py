"""The values the index takes and gives: received instances, claimed jobs, results, outbox rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage.states import ResultKind


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance as the receiver indexes it, after the store committed its file."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    path: Path
    calling_aet: str
    received_at: float
    accession_number: str = ""  # what the PACS shows, for the console's search
    study_date: str = ""
    patient_id: str = ""
    # SHA-256 digests of the Patient ID and Patient's Birth Date (see
    # scp_node.dicom.instance_header.patient_digest); None: not compared (birth date absent, or a
    # record made without them). The index keeps digests only, never the values.
    patient_digest: str | None = None
    birth_date_digest: str | None = None


@dataclass(frozen=True)
class Job:
    """A claimed analysis job for one version of one study.

    `owner` and `attempts` identify this claim: a worker whose lease was taken over holds an
    older `attempts` and is refused. `previous_sr_*` name the SR of the latest earlier version
    (for Predecessor Documents), or None.
    """

    job_id: str
    study_uid: str
    version: int
    attempts: int
    source_aet: str
    previous_sr_path: Path | None
    previous_sr_sop_uid: str | None
    owner: str = ""


@dataclass(frozen=True)
class ResultObject:
    """A result object the node wrote to the store (SR, SEG, GSPS, SC or KO) for one study
    version."""

    sop_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    kind: ResultKind

    def __post_init__(self) -> None:
        try:  # a value as the index stores it ("SR") is taken as its kind
            object.__setattr__(self, "kind", ResultKind(self.kind))
        except ValueError:
            raise ValueError(
                f"ResultObject kind {self.kind!r} is not one of "
                + ", ".join(repr(k.value) for k in ResultKind)
            ) from None


@dataclass(frozen=True)
class OutboxItem:
    """One result object to C-STORE to one destination, claimed by a sender for a short lease."""

    outbox_id: str
    study_uid: str
    sop_uid: str
    path: Path
    destination: str
    attempts: int
