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

Destinations marked `tls` in [destinations] are reached over DICOM TLS (see scp_node.tls:
their certificate must chain to [security] tls_ca_certificates; ours is the client
certificate). A failed TLS handshake is transient, like a refused connection: a person fixes
the certificates and the next attempt goes through.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association

from scp_node.config import Config, Destination, SenderConfig
from scp_node.dicom_settings import configure_pynetdicom
from scp_node.dimse_status import (
    COERCION_OF_DATA_ELEMENTS,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING,
    ELEMENT_DISCARDED,
    PROCESSING_FAILURE,
    RESOURCE_LIMITATION,
    SUCCESS,
    is_out_of_resources,
)
from scp_node.metrics import METRICS
from scp_node.sop_classes import UNCOMPRESSED_TRANSFER_SYNTAXES
from scp_node.tls import client_context
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


def backoff_delay(attempt: int, cfg: SenderConfig, rng: random.Random) -> float:
    """Seconds before retry number `attempt` (1-based): initial * 2**(attempt-1), +-25% jitter,
    capped at max_backoff_seconds."""
    exponent = min(max(attempt, 1) - 1, 60)
    base = min(cfg.initial_backoff_seconds * 2.0**exponent, cfg.max_backoff_seconds)
    return min(base * rng.uniform(0.75, 1.25), cfg.max_backoff_seconds)


def is_transient_status(status: int) -> bool:
    """True for C-STORE failure statuses worth retrying later (resources, processing failure)."""
    return is_out_of_resources(status) or status in _TRANSIENT_STATUSES


@dataclass(frozen=True)
class _Outcome:
    """How one outbox row ended in this tick."""

    sent: bool
    transient: bool
    error: str


class Sender:
    """Delivers due outbox rows by C-STORE; one association per destination per tick."""

    def __init__(self, config: Config, index: Index, *, rng: random.Random | None = None) -> None:
        configure_pynetdicom()
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

    def deliver_due(self, now: float) -> int:
        """Send every due outbox row and record its outcome; returns the number of rows handled."""
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
            for item, outcome in self._send_batch(destination, batch):
                self._record(item, outcome, now)
        return len(items)

    def _send_batch(
        self, destination: Destination, batch: list[OutboxItem]
    ) -> list[tuple[OutboxItem, _Outcome]]:
        """C-STORE a batch of rows over one association to `destination`."""
        results: list[tuple[OutboxItem, _Outcome]] = []
        loaded: list[tuple[OutboxItem, Dataset]] = []
        for item in batch:
            try:
                loaded.append((item, dcmread(Path(item.path))))
            except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError) as exc:
                # an unreadable result file: no retry will fix it
                results.append((item, _Outcome(False, False, f"cannot read {item.path}: {exc}")))
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
        ae = self._build_ae([ds for _, ds in loaded])
        try:
            assoc = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                max_pdu=0,
                tls_args=tls_args,
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
            for item, ds in loaded:
                if not assoc.is_established:
                    error = f"association with {destination} ended before this object was sent"
                    results.append((item, _Outcome(False, True, error)))
                    continue
                results.append((item, self._send_one(assoc, destination, ds)))
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _build_ae(self, datasets: list[Dataset]) -> AE:
        """An SCU AE proposing, per SOP class, each file's own transfer syntax plus Explicit and
        Implicit VR Little Endian."""
        sender = self._config.sender
        ae = AE(ae_title=sender.calling_ae_title)
        ae.acse_timeout = sender.timeout_seconds
        ae.dimse_timeout = sender.timeout_seconds
        ae.network_timeout = sender.timeout_seconds
        ae.connection_timeout = sender.timeout_seconds
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
            peer.ae_title if peer else "",
            "sent"
            if outcome.sent
            else "retry"
            if outcome.transient and attempt_ < self._config.sender.max_attempts
            else "dead",
            item.path,
        )
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
