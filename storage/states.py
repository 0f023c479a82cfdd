"""The state machines of the index: one enum each, stored as their text values.

Study: RECEIVING -> READY -> ANALYZING -> REPORTED -> DELIVERED, and FAILED (with a reason). An
instance arriving for a study that has left RECEIVING sends it back to RECEIVING with version+1.

Job (one per study version): QUEUED -> RUNNING -> DONE, RUNNING -> QUEUED (retry, or its lease
expired and another worker claims it), RUNNING -> FAILED, and STALE once a newer version of its
study exists.

Outbox row (one per result object and destination): PENDING -> SENT, PENDING -> DEAD (a dead
letter) -> PENDING again by `lungnode resend`. For a destination with Storage Commitment
(commit=yes): PENDING -> COMMITTING (stored there, commitment asked) -> COMMITTED, or back to
PENDING (reported failed, or no report in time; DEAD once attempts are used up).
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """Where a study is in the pipeline."""

    RECEIVING = "RECEIVING"
    READY = "READY"
    ANALYZING = "ANALYZING"
    REPORTED = "REPORTED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class JobState(StrEnum):
    """Where one analysis job (one study version) is in the work queue."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    STALE = "STALE"  # superseded by a newer version of its study


class OutboxState(StrEnum):
    """Where one (result object, destination) row is in delivery."""

    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"
    COMMITTING = "COMMITTING"  # stored by the destination, its Storage Commitment not yet come
    COMMITTED = "COMMITTED"  # the destination's N-EVENT-REPORT committed it


class ResultKind(StrEnum):
    """Which result object the node builds, stores and sends for a study version, in the order
    classifier.results.encode builds them: the one type from configuration ([routing]
    result_objects names each by its `word`) to the encoder and the outbox (the index stores
    the value)."""

    SR = "SR"  # TID 1500 Comprehensive 3D SR
    SEG = "SEG"  # Segmentation
    GSPS = "GSPS"  # Grayscale Softcopy Presentation State
    SC = "SC"  # Secondary Capture key images
    KO = "KO"  # Key Object Selection Document

    @property
    def word(self) -> str:
        """The kind as configuration and the CLI write it: "sr", "seg", "gsps", "sc" or "ko"."""
        return self.value.lower()

    @classmethod
    def from_word(cls, word: str) -> ResultKind:
        """The kind `word` names (any case); ValueError naming the word and the allowed ones."""
        try:
            return cls(word.strip().upper())
        except ValueError:
            allowed = ", ".join(kind.word for kind in cls)
            raise ValueError(f"{word!r} is not a result kind: one of {allowed}") from None
