"""The C-STORE SCU that delivers result objects (SR, SEG) from the outbox, with backoff.

Each tick takes the due outbox rows, opens ONE association per destination and C-STOREs the
files as stored. Every outcome is classified as sent, transient (retried later with exponential
backoff and jitter) or permanent (dead letter, `lungnode resend` retries it):

- sent: Success 0x0000 and the warnings 0xB000, 0xB006, 0xB007 (the peer stored the object).
- transient: the association could not be opened (connection refused, timeout) or was rejected
  -- rejected-permanent included, because the usual cause is a peer not yet configured with our
  AE title, which a person fixes without touching the node; aborted associations; no response
  within [sender] timeout_seconds; 0xA7xx Out of Resources; 0x0110 Processing Failure;
  0x0213 Resource Limitation.
- permanent: any other failure status (0xA9xx Data Set does not match SOP Class, 0xCxxx Cannot
  Understand, 0x0122 SOP Class Not Supported, 0x0117 Invalid Object Instance, ...); the peer
  accepted no presentation context for the object's SOP class; the result file is missing or
  unreadable; the destination is not in [destinations]; and any transient failure once
  [sender] max_attempts attempts are used up.

Destinations marked `tls` in [destinations] are reached over DICOM TLS (see scp_node.dicom.tls:
their certificate must chain to [security] tls_ca_certificates; ours is the client
certificate). A failed TLS handshake is transient, like a refused connection: a person fixes
the certificates and the next attempt goes through.

Destinations marked `commit=yes` are asked, on the same association, to commit what it stored
(Storage Commitment, scp_node.dicom.storage_commitment): those rows are COMMITTING, not sent,
until the destination's report commits them; a report of failure, a refused N-ACTION, or no report
within [sender] commit_timeout_seconds sends them again (an attempt, with backoff; dead after
max_attempts). A peer that accepts no Storage Commitment context makes them dead letters.

DICOMweb destinations (a URL in [destinations]) receive the same rows by STOW-RS, one request
per destination per tick (scp_node.pipeline.dicomweb_sender classifies the answers the same way).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType

from scp_node.config import Config, Destination
from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.backoff import backoff_delay, retry_at
from scp_node.dicom.pynetdicom_adapter.no_delay import NO_DELAY
from scp_node.dicom.sop_classes import UNCOMPRESSED_TRANSFER_SYNTAXES
from scp_node.dicom.status import (
    COERCION_OF_DATA_ELEMENTS,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    ELEMENT_DISCARDED,
    PROCESSING_FAILURE,
    RESOURCE_LIMITATION,
    SUCCESS,
    is_out_of_resources,
)
from scp_node.dicom.storage_commitment import (
    REPORTED,
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    ReportHandler,
    commitment_request,
)
from scp_node.dicom.tls import client_context
from scp_node.metrics import METRICS
from scp_node.pipeline.dicomweb_sender import StowSender
from storage.index import Index
from storage.records import OutboxItem

log = logging.getLogger("lungnode.sender")

_SENT_STATUSES = frozenset(
    {
        SUCCESS,
        COERCION_OF_DATA_ELEMENTS,
        ELEMENT_DISCARDED,
        DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    }
)
_TRANSIENT_STATUSES = frozenset({PROCESSING_FAILURE, RESOURCE_LIMITATION})
_MAX_CONTEXTS = 128  # presentation contexts one A-ASSOCIATE-RQ may carry
OUTBOX_LEASE_TIMEOUTS = 3  # how long an outbox row stays claimed, in [sender] timeout_seconds


def is_transient_status(status: int) -> bool:
    """True for C-STORE failure statuses worth retrying later (resources, processing failure)."""
    return is_out_of_resources(status) or status in _TRANSIENT_STATUSES


@dataclass(frozen=True)
class _Outcome:
    """How one outbox row ended in this tick."""

    sent: bool
    transient: bool
    error: str
    recorded: bool = False  # the index already holds the row's new state (Storage Commitment)


class Sender:
    """Delivers due outbox rows by C-STORE; one association per destination per tick."""

    def __init__(self, config: Config, index: Index, *, rng: random.Random | None = None) -> None:
        pynetdicom_adapter.install()
        self._config = config
        self._index = index
        self._rng = rng or random.Random()
        # Built once per TLS destination (host name check and pin are per destination), so a
        # bad [security] TLS file fails here (at start) with a ConfigError.
        self._tls_contexts = {
            d.name: client_context(config.security, d)
            for d in config.destinations.values()
            if d.tls
        }
        self._reports = ReportHandler(config, index, rng=self._rng)
        self._stow = {d.name: StowSender(config, d) for d in config.destinations.values() if d.url}

    def deliver_due(self, now: float) -> int:
        """Send every due outbox row and record its outcome, and send again the rows whose
        Storage Commitment is overdue; returns the number of rows handled."""
        overdue = self._commitments_overdue(now)
        # A row stays claimed for a few sender timeouts: long enough for this tick's
        # association, short enough that a crashed node resends soon after it restarts.
        items = self._index.due_outbox(
            now, lease_seconds=OUTBOX_LEASE_TIMEOUTS * self._config.sender.timeout_seconds
        )
        by_destination: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in items:
            by_destination[item.destination].append(item)
        for name, batch in by_destination.items():
            destination = self._config.destination(name)  # case-insensitive
            if destination is None:
                known = ", ".join(self._config.destinations) or "none"
                for item in batch:
                    self._record(
                        item,
                        _Outcome(
                            False,
                            False,
                            f"destination {name!r} is not in [destinations] "
                            f"(known: {known}); add it to config.ini and resend",
                        ),
                        now,
                    )
                continue
            if destination.url:
                outcomes = self._stow_batch(destination, batch)
            else:
                outcomes = self._send_batch(destination, batch, now)
            for item, outcome in outcomes:
                self._record(item, outcome, now)
        return len(items) + overdue

    def _send_batch(
        self, destination: Destination, batch: list[OutboxItem], now: float
    ) -> list[tuple[OutboxItem, _Outcome]]:
        """C-STORE a batch of rows over one association to `destination`."""
        results, loaded = _read_results(batch)
        if not loaded:
            return results

        tls_args = None
        if destination.tls:
            context = self._tls_contexts.get(destination.name)
            if context is None:  # never fall back to a plain connection
                error = (
                    f"{destination} is marked tls but the sender holds no TLS context for it; "
                    "nothing was sent (never in plain): restart the node so it builds one from "
                    "[security], then lungnode resend"
                )
                return results + [(item, _Outcome(False, False, error)) for item, _ in loaded]
            # host: SNI, and checked when the destination says verify_hostname
            tls_args = (context, destination.host)
        ae = self._build_ae([ds for _, ds in loaded], commit=destination.commit)
        # a destination may report its Storage Commitment on this association
        handlers: list[EventHandlerType] = [NO_DELAY]
        if destination.commit:
            handlers.append((evt.EVT_N_EVENT_REPORT, self._reports))
        try:
            assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                max_pdu=0,
                tls_args=tls_args,
                evt_handlers=handlers,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            error = f"cannot associate with {destination}: {exc}"
            return results + [(item, _Outcome(False, True, error)) for item, _ in loaded]
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                # The peer answered but takes none of these SOP classes: no retry will help.
                error = (
                    f"{destination} accepted no presentation context for SOP classes "
                    + ", ".join(sorted({str(ds.SOPClassUID) for _, ds in loaded}))
                )
                transient = False
            else:
                error, transient = _association_failure(assoc, destination), True
            log.warning("%s", error)
            return results + [(item, _Outcome(False, transient, error)) for item, _ in loaded]

        log.info("association established destination=%s objects=%d", destination, len(loaded))
        try:
            stored: list[tuple[OutboxItem, Dataset]] = []
            for item, ds in loaded:
                if not assoc.is_established:
                    error = f"association with {destination} ended before this object was sent"
                    results.append((item, _Outcome(False, True, error)))
                    continue
                outcome = self._send_one(assoc, destination, ds)
                if outcome.sent and destination.commit:
                    stored.append((item, ds))
                else:
                    results.append((item, outcome))
            if stored:
                outcome = self._request_commitment(assoc, destination, stored, now)
                results.extend((item, outcome) for item, _ in stored)
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _stow_batch(
        self, destination: Destination, batch: list[OutboxItem]
    ) -> list[tuple[OutboxItem, _Outcome]]:
        """STOW-RS a batch of rows in one request to a DICOMweb `destination`."""
        results, loaded = _read_results(batch)
        if not loaded:
            return results
        outcomes = self._stow[destination.name].store([ds for _, ds in loaded])
        log.info(
            "STOW-RS destination=%s objects=%d stored=%d",
            destination,
            len(loaded),
            sum(o.sent for o in outcomes),
        )
        return results + [
            (item, _Outcome(o.sent, o.transient, o.error))
            for (item, _), o in zip(loaded, outcomes, strict=True)
        ]

    def _request_commitment(
        self,
        assoc: Association,
        destination: Destination,
        stored: list[tuple[OutboxItem, Dataset]],
        now: float,
    ) -> _Outcome:
        """Ask `destination` to commit the objects it just stored (N-ACTION on `assoc`), then
        keep the association open up to [sender] commit_wait_seconds for a report on it.

        The rows are COMMITTING (in the index) before the N-ACTION goes out, so a report that
        comes at once on another association finds them. A refused N-ACTION is an outcome of
        the commitment: the rows are sent again (or dead-lettered) here."""
        sender = self._config.sender
        transaction_uid = generate_uid()
        items = [item for item, _ in stored]
        self._index.commitments.awaiting(
            items, transaction_uid, now + sender.commit_timeout_seconds, now
        )
        request = commitment_request(
            transaction_uid, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for _, ds in stored]
        )
        with REPORTED.expecting(transaction_uid) as wait_for_report:
            error, transient = _send_n_action(assoc, destination, request)
            if not error:
                log.info(
                    "storage commitment requested destination=%s transaction_uid=%s objects=%d",
                    destination,
                    transaction_uid,
                    len(items),
                )
                if sender.commit_wait_seconds > 0:
                    wait_for_report(sender.commit_wait_seconds)
        if error:
            log.warning("%s transaction_uid=%s", error, transaction_uid)
            for item in items:
                self._commitment_failed(item, error, now, transient=transient)
        return _Outcome(True, False, error, recorded=True)

    def _commitments_overdue(self, now: float) -> int:
        """Send again (or dead-letter) the rows whose commitment has not come in time."""
        overdue = self._index.commitments.overdue(now)
        for item in overdue:
            peer = self._config.destination(item.destination)
            error = (
                f"no Storage Commitment report from {peer or item.destination} within "
                f"{self._config.sender.commit_timeout_seconds:g} s "
                "([sender] commit_timeout_seconds)"
            )
            self._commitment_failed(item, error, now, transient=True)
        return len(overdue)

    def _commitment_failed(
        self, item: OutboxItem, error: str, now: float, *, transient: bool
    ) -> None:
        """A COMMITTING row whose commitment failed: PENDING again with backoff, or DEAD."""
        attempt = item.attempts + 1
        next_attempt_at = (
            retry_at(attempt, now, self._config.sender, self._rng) if transient else None
        )
        if next_attempt_at is None and transient:
            error = f"{error}; gave up after {attempt} attempts ([sender] max_attempts)"
        if self._index.commitments.commitment_failed(item, error, now, next_attempt_at):
            peer = self._config.destination(item.destination)
            METRICS.sent(
                peer.ae_title if peer else "",
                "commit_retry" if next_attempt_at is not None else "commit_dead",
            )
            log.warning(
                "result commitment failed sop_instance_uid=%s destination=%s attempt=%d "
                "next=%s error=%s",
                item.sop_uid,
                item.destination,
                attempt,
                "dead letter" if next_attempt_at is None else f"in {next_attempt_at - now:.1f} s",
                error,
            )

    def _build_ae(self, datasets: list[Dataset], *, commit: bool = False) -> AE:
        """An SCU AE proposing, per SOP class, each file's own transfer syntax plus Explicit and
        Implicit VR Little Endian; and the Storage Commitment Push Model when `commit`."""
        sender = self._config.sender
        ae = AE(ae_title=sender.calling_ae_title)
        ae.acse_timeout = sender.timeout_seconds
        ae.dimse_timeout = sender.timeout_seconds
        ae.network_timeout = sender.timeout_seconds
        ae.connection_timeout = sender.timeout_seconds
        if commit:
            ae.add_requested_context(
                STORAGE_COMMITMENT_PUSH_MODEL, list(UNCOMPRESSED_TRANSFER_SYNTAXES)
            )
        proposals: dict[str, list[str]] = {}
        for ds in datasets:
            sop_class = str(ds.SOPClassUID)
            syntaxes = proposals.setdefault(sop_class, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
            own = str(ds.file_meta.TransferSyntaxUID)
            if own not in syntaxes:
                syntaxes.insert(0, own)
        for sop_class, syntaxes in list(proposals.items())[:_MAX_CONTEXTS]:
            # One context per transfer syntax, so the peer can accept the file's own one even
            # when it would pick another from a combined list.
            for syntax in syntaxes:
                if len(ae.requested_contexts) < _MAX_CONTEXTS:
                    ae.add_requested_context(sop_class, syntax)
        return ae

    def _send_one(self, assoc: Association, destination: Destination, ds: Dataset) -> _Outcome:
        """C-STORE one dataset and classify the answer."""
        sop_uid = str(ds.SOPInstanceUID)
        try:
            status = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for this SOP class / TS
            return _Outcome(False, False, f"{destination} accepted no presentation context: {exc}")
        except (OSError, RuntimeError) as exc:
            return _Outcome(False, True, f"C-STORE to {destination} failed: {exc}")
        if "Status" not in status:
            return _Outcome(
                False, True, f"no C-STORE response from {destination} (timeout or abort)"
            )
        code = int(status.Status)
        if code in _SENT_STATUSES:
            if code != SUCCESS:
                log.warning(
                    "C-STORE warning 0x%04X from %s sop_instance_uid=%s", code, destination, sop_uid
                )
            return _Outcome(True, False, "")
        comment = str(status.get("ErrorComment", "") or "")
        error = f"{destination} answered C-STORE status 0x{code:04X}" + (
            f" ({comment})" if comment else ""
        )
        return _Outcome(False, is_transient_status(code), error)

    def _record(self, item: OutboxItem, outcome: _Outcome, now: float) -> None:
        """Write the outcome of one row to the index: sent, retry with backoff, or dead."""
        peer = self._config.destination(item.destination)
        attempt_ = item.attempts + 1
        METRICS.sent(
            (peer.ae_title or peer.name) if peer else "",
            "sent"
            if outcome.sent
            else "retry"
            if outcome.transient and attempt_ < self._config.sender.max_attempts
            else "dead",
            item.path,
        )
        if outcome.recorded:
            return
        if outcome.sent:
            self._index.outbox_sent(item, now)
            log.info(
                "result sent sop_instance_uid=%s study_uid=%s destination=%s",
                item.sop_uid,
                item.study_uid,
                item.destination,
            )
            return
        attempt = item.attempts + 1
        max_attempts = self._config.sender.max_attempts
        if outcome.transient and attempt < max_attempts:
            delay = backoff_delay(attempt, self._config.sender, self._rng)
            self._index.outbox_retry(item, outcome.error, now + delay)
            log.warning(
                "result delivery retry sop_instance_uid=%s destination=%s attempt=%d/%d "
                "next_in_s=%.1f error=%s",
                item.sop_uid,
                item.destination,
                attempt,
                max_attempts,
                delay,
                outcome.error,
            )
            return
        error = outcome.error
        if outcome.transient:
            error = f"{error}; gave up after {attempt} attempts ([sender] max_attempts)"
        self._index.outbox_dead(item, error)
        log.error(
            "result delivery dead sop_instance_uid=%s destination=%s error=%s "
            "(lungnode resend retries it)",
            item.sop_uid,
            item.destination,
            error,
        )


def _send_n_action(
    assoc: Association, destination: Destination, request: Dataset
) -> tuple[str, bool]:
    """Send the Storage Commitment N-ACTION; ("", True) when the destination took it, else
    (why not, whether a later attempt may succeed)."""
    try:
        status, _ = assoc.send_n_action(
            request,
            REQUEST_STORAGE_COMMITMENT,
            STORAGE_COMMITMENT_PUSH_MODEL,
            STORAGE_COMMITMENT_INSTANCE,
        )
    except ValueError:  # no accepted presentation context for Storage Commitment
        return (
            f"{destination} accepted no Storage Commitment Push Model context; set "
            "commit=no on its [destinations] line, or enable Storage Commitment there",
            False,
        )
    except (OSError, RuntimeError) as exc:
        return f"N-ACTION (Storage Commitment) to {destination} failed: {exc}", True
    if "Status" not in status:
        return f"no N-ACTION response from {destination} (timeout or abort)", True
    if int(status.Status) != SUCCESS:
        return (
            f"{destination} answered the Storage Commitment N-ACTION with status "
            f"0x{int(status.Status):04X}",
            True,
        )
    return "", True


def _read_results(
    batch: list[OutboxItem],
) -> tuple[list[tuple[OutboxItem, _Outcome]], list[tuple[OutboxItem, Dataset]]]:
    """(rows whose file cannot be read, as dead-letter outcomes; the others with their dataset)."""
    results: list[tuple[OutboxItem, _Outcome]] = []
    loaded: list[tuple[OutboxItem, Dataset]] = []
    for item in batch:
        try:
            loaded.append((item, dcmread(Path(item.path))))
        except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError) as exc:
            # an unreadable result file: no retry will fix it
            results.append((item, _Outcome(False, False, f"cannot read {item.path}: {exc}")))
    return results, loaded


def _association_failure(assoc: Association, destination: Destination) -> str:
    """Words for why an association with `destination` was not established."""
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result = getattr(rsp, "result_str", "?")
        source = getattr(rsp, "source_str", "?")
        reason = getattr(rsp, "reason_str", "?")
        return (
            f"association rejected by {destination}: {result}, {source}, {reason} "
            f"(calling AE {assoc.requestor.ae_title}, called AE {destination.ae_title})"
        )
    # pynetdicom reports a refused TCP connection as an abort, so the two read alike here.
    if destination.tls:
        return (
            f"cannot connect to {destination}: connection refused, unreachable, timed out, "
            "the TLS handshake failed (is its certificate signed by [security] "
            "tls_ca_certificates, and does it trust our tls_certificate?), or the association "
            "request was aborted"
        )
    return (
        f"cannot connect to {destination}: connection refused, unreachable, timed out, "
        "or the association request was aborted"
    )
