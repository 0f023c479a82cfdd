"""Storage Commitment Push Model, SCU role: ask a destination to commit results, take its report.

After C-STOREing results to a destination with commit=yes, the sender sends on the same
association an N-ACTION (Action Type 1, Request Storage Commitment) whose Transaction UID and
Referenced SOP Sequence name them (`commitment_request`). The destination answers with an
N-EVENT-REPORT (Event Type 1: all committed; 2: some failed, with a Failure Reason each) either
on that association or on one it opens to the node's SCP later (PS3.4 J.3.3). `ReportHandler`
takes it in both places: it checks that the report comes from the AE title the transaction was
asked of, and applies it to the outbox (storage.commitments).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.ae import ApplicationEntity
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event

from scp_node.config import Config
from scp_node.dicom.backoff import retry_at
from scp_node.dicom.sop_classes import UNCOMPRESSED_TRANSFER_SYNTAXES
from scp_node.dicom.status import PROCESSING_FAILURE, SUCCESS
from scp_node.metrics import METRICS
from storage.index import Index
from storage.uids import require_uid

log = logging.getLogger("lungnode.commitment")

STORAGE_COMMITMENT_PUSH_MODEL = UID("1.2.840.10008.1.20.1")
# The well-known SOP Instance of the Push Model (PS3.4 J.3.2): N-ACTION and N-EVENT-REPORT name it
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID of the N-ACTION
ALL_COMMITTED = 1  # Event Type IDs of the N-EVENT-REPORT
SOME_FAILED = 2
NO_SUCH_EVENT_TYPE = 0x0113  # N-EVENT-REPORT statuses (PS3.7 10.1.1.1.8)
INVALID_ARGUMENT_VALUE = 0x0115

# Failure Reason (0008,1197) values of PS3.3 C.14.1.1, in words for the outbox's last_error
FAILURE_REASONS: dict[int, str] = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


def add_report_context(ae: ApplicationEntity) -> None:
    """Let a destination open an association to the node's SCP to send its report: the
    Storage Commitment Push Model with the peer in the SCP role (role selection)."""
    ae.add_supported_context(
        STORAGE_COMMITMENT_PUSH_MODEL,
        list(UNCOMPRESSED_TRANSFER_SYNTAXES),
        scu_role=False,
        scp_role=True,
    )


def commitment_request(transaction_uid: str, instances: Iterable[tuple[str, str]]) -> Dataset:
    """The N-ACTION's Action Information: Transaction UID and a Referenced SOP Sequence of
    (SOP Class UID, SOP Instance UID) pairs."""
    request = Dataset()
    request.TransactionUID = require_uid("Transaction UID", transaction_uid)
    items = []
    for sop_class, sop_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    if not items:
        raise ValueError("a Storage Commitment request needs at least one instance")
    request.ReferencedSOPSequence = items
    return request


@dataclass(frozen=True)
class CommitmentReport:
    """What an N-EVENT-REPORT says: the instances committed, and those failed with the reason."""

    transaction_uid: str
    committed: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason in words


def parse_report(event_type_id: int, info: Dataset | None) -> CommitmentReport:
    """The report in an N-EVENT-REPORT's Event Information; ValueError naming what is wrong."""
    if event_type_id not in (ALL_COMMITTED, SOME_FAILED):
        raise ValueError(f"Event Type ID {event_type_id} is not 1 or 2 (Storage Commitment)")
    if info is None or "TransactionUID" not in info:
        raise ValueError("the Event Information has no Transaction UID (0008,1195)")
    transaction_uid = str(info.TransactionUID)
    committed = tuple(
        str(item.ReferencedSOPInstanceUID)
        for item in info.get("ReferencedSOPSequence", [])
        if "ReferencedSOPInstanceUID" in item
    )
    failed: dict[str, str] = {}
    for item in info.get("FailedSOPSequence", []):
        if "ReferencedSOPInstanceUID" not in item:
            continue
        code = item.get("FailureReason")
        words = FAILURE_REASONS.get(int(code), "unknown reason") if code is not None else "none"
        reason = f"Failure Reason 0x{int(code):04X} ({words})" if code is not None else words
        failed[str(item.ReferencedSOPInstanceUID)] = reason
    if event_type_id == SOME_FAILED and not failed:
        raise ValueError("Event Type 2 (failures) without a Failed SOP Sequence item")
    return CommitmentReport(transaction_uid, committed, failed)


class _Reported:
    """Transaction UIDs reported in this process, so a sender waiting on its association for
    the report stops as soon as it came, on whichever association. Only UIDs someone waits for
    are kept, and only while they wait."""

    def __init__(self) -> None:
        self._waiting: set[str] = set()
        self._done: set[str] = set()
        self._cond = threading.Condition()

    def add(self, transaction_uid: str) -> None:
        with self._cond:
            if transaction_uid in self._waiting:
                self._done.add(transaction_uid)
                self._cond.notify_all()

    @contextmanager
    def expecting(self, transaction_uid: str) -> Iterator[Callable[[float], bool]]:
        """Within the block, a report of `transaction_uid` is kept; the block gets a function
        that waits up to its argument in seconds for it (True once it came). Entered before
        the N-ACTION goes out, so a report that comes at once is not missed."""
        with self._cond:
            self._waiting.add(transaction_uid)

        def wait(timeout: float) -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: transaction_uid in self._done, timeout)

        try:
            yield wait
        finally:
            with self._cond:
                self._waiting.discard(transaction_uid)
                self._done.discard(transaction_uid)


REPORTED = _Reported()


class ReportHandler:
    """The EVT_N_EVENT_REPORT handler of the sender's associations and of the node's SCP."""

    def __init__(self, config: Config, index: Index, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._index = index
        self._rng = rng or random.Random()

    def __call__(self, event: Event) -> tuple[int, Dataset | None]:
        """Handle an N-EVENT-REPORT request of the Storage Commitment Push Model.

        Statuses
        --------
        0x0000 Success: the report was applied to the outbox (instances it names that the
               transaction does not hold are logged and ignored).
        0x0113 No Such Event Type: an Event Type ID other than 1 and 2.
        0x0115 Invalid Argument Value: no Transaction UID, or failures without a Failed SOP
               Sequence.
        0x0110 Processing Failure: an unknown Transaction UID, a report from an AE title the
               transaction was not asked of, or the index could not be written (the peer may
               report again).
        """
        request = event.request
        if not isinstance(request, N_EVENT_REPORT):  # pynetdicom binds this event to it alone
            return PROCESSING_FAILURE, None
        remote_ae = str(event.assoc.remote.get("ae_title", "")).strip()
        event_type = int(request.EventTypeID or 0)
        try:
            report = parse_report(event_type, event.event_information)
        except ValueError as exc:
            log.warning("storage commitment report refused calling_ae=%s error=%s", remote_ae, exc)
            bad_type = event_type not in (ALL_COMMITTED, SOME_FAILED)
            return (NO_SUCH_EVENT_TYPE if bad_type else INVALID_ARGUMENT_VALUE), None
        except (AttributeError, TypeError, KeyError) as exc:  # a malformed Event Information
            log.warning(
                "storage commitment report unreadable calling_ae=%s error=%s", remote_ae, exc
            )
            return INVALID_ARGUMENT_VALUE, None
        return self.apply(report, remote_ae, time.time()), None

    def apply(self, report: CommitmentReport, remote_ae: str, now: float) -> int:
        """Apply a report from AE title `remote_ae` to the outbox; the status to answer."""
        names = self._index.commitments.destinations_of(report.transaction_uid)
        asked = {d.ae_title for n in names if (d := self._config.destination(n)) is not None}
        if not names or remote_ae not in asked:
            log.warning(
                "storage commitment report refused transaction_uid=%s calling_ae=%s: %s",
                report.transaction_uid,
                remote_ae,
                "unknown transaction"
                if not names
                else f"the transaction was asked of {', '.join(sorted(asked)) or 'nobody'}",
            )
            return PROCESSING_FAILURE
        destination = self._config.destination(names[0])
        failed = {
            uid: f"{destination} reported it not committed (Storage Commitment): {reason}"
            for uid, reason in report.failed.items()
        }
        sender = self._config.sender
        outcome = self._index.commitments.report(
            report.transaction_uid,
            report.committed,
            failed,
            now,
            lambda attempt: retry_at(attempt, now, sender, self._rng),
        )
        for label, count in (
            ("committed", outcome.committed),
            ("commit_retry", outcome.retried),
            ("commit_dead", outcome.dead),
        ):
            for _ in range(count):
                METRICS.sent(remote_ae, label)
        log.info(
            "storage commitment report transaction_uid=%s calling_ae=%s committed=%d "
            "retry=%d dead=%d waiting=%d unknown_instances=%d",
            report.transaction_uid,
            remote_ae,
            outcome.committed,
            outcome.retried,
            outcome.dead,
            outcome.still_waiting,
            len(outcome.unknown),
        )
        REPORTED.add(report.transaction_uid)
        return SUCCESS
