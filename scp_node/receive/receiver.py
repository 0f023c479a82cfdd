"""The node's C-ECHO and C-STORE SCP: receives images and makes them durable before Success.

pynetdicom streams each C-STORE dataset to a file in the store's `.incoming` folder (see
scp_node.dicom.pynetdicom_adapter.streaming); the handler reads only a few header elements from
it, renames it into the store (fsynced), records it in the index, and only then answers 0x0000.
Pixels are never decoded here. On SQLite the index row is committed lazily and recovered from
the store's files at start (see lazy_index), so the durable file is the one fsync that bounds
each C-STORE. A refusal is answered as a status dataset whose Error Comment tells the peer why.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from scp_node.config import Config
from scp_node.dicom import pynetdicom_adapter
from scp_node.dicom.connections import (
    GuardedServer,
    associated,
    calling_ae_of,
    negotiating_association,
)
from scp_node.dicom.instance_header import InstanceHeader, is_code_string
from scp_node.dicom.pynetdicom_adapter.server import acceptor_server
from scp_node.dicom.pynetdicom_adapter.streaming import (
    ParkedStream,
    parked_stream,
    route_incoming,
)
from scp_node.dicom.sop_classes import (
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    UNCOMPRESSED_TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
)
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    refusal,
)
from scp_node.dicom.storage_commitment import ReportHandler, add_report_context
from scp_node.dicom.tls import peer_certificate_subject, server_context, start_server
from scp_node.logs import escape_text
from scp_node.metrics import METRICS
from scp_node.ops.audit import AssociationAuditor, AuditLog, Party
from scp_node.receive.intake import InstanceIntake
from scp_node.receive.intake import Rejected as _Rejected
from scp_node.receive.intake import Sending as _Sending
from scp_node.receive.intake import read_instance_header as _read_header
from scp_node.receive.lazy_index import LazyIndexing, reindex_store
from storage.index import Index
from storage.instance_store import InstanceStore
from storage.records import InstanceRecord

log = logging.getLogger("lungnode.receiver")

MAX_REFUSED_NAMED = 8


class _NodeAE(ApplicationEntity):
    """pynetdicom's AE with the node's admission rules, applied where pynetdicom's ACSE reads
    them: in the acceptor association's own thread, while it negotiates
    (`connections.negotiating_association`).

    - `require_calling_aet`: an empty allow-list means nobody (`[""]`, which no peer can send;
      pynetdicom reads an empty list as anybody). With TLS and `ae_titles_of_subject` set, the
      AE titles the peer's certificate may present ([security] tls_client_ae_titles), within
      the allow-list.
    - `active_associations` (as the limit check sees it): only associations that delivered an
      A-ASSOCIATE-RQ and have not ended, so connections still negotiating, or rejected ones
      waiting to close, hold no slot of `maximum_associations`.
    - `maximum_associations` (as the limit check sees it): 0 when the calling AE already holds
      `max_associations_per_ae` associations, or the node `maximum_associations`, so the
      request is rejected as local limit exceeded; counted on the whole node when several
      receiver processes share the port (`GuardedServer.associations_on_node`).

    Why an association was rejected by these rules is kept for the audit (`rejection_note`).
    """

    admits_nobody = False
    max_associations_per_ae = 0  # 0: no per-AE limit
    ae_titles_of_subject: Callable[[str], tuple[str, ...] | None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._notes: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._notes_lock = threading.Lock()

    def rejection_note(self, assoc: Association) -> str:
        """Why the node's rules rejected `assoc` ('' when they did not)."""
        with self._notes_lock:
            return self._notes.pop(assoc, "")

    def _note(self, assoc: Association, note: str) -> None:
        with self._notes_lock:
            self._notes[assoc] = note

    @property
    def require_calling_aet(self) -> list[str]:
        allowed = [""] if self.admits_nobody else super().require_calling_aet
        assoc = negotiating_association(self)
        if assoc is None or self.ae_titles_of_subject is None:
            return allowed
        subject = peer_certificate_subject(assoc)
        if subject is None:  # no TLS
            return allowed
        mapped = self.ae_titles_of_subject(subject)
        if mapped is None:  # no mapping configured
            return allowed
        permitted = [ae for ae in (allowed or mapped) if ae in mapped]
        calling = str(getattr(assoc.requestor.primitive, "calling_ae_title", "")).strip()
        if calling not in permitted and (not allowed or calling in allowed):
            self._note(
                assoc,
                f"certificate {escape_text(subject or 'without subject', 256)} may not present "
                f"AE title {escape_text(calling, 16)} ([security] tls_client_ae_titles)",
            )
        return permitted or [""]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        # super() cannot set a property; mypy types the class attribute as the getter's value
        # (list[str]), not as the property object that has fset
        ApplicationEntity.require_calling_aet.fset(self, ae_titles)  # type: ignore[attr-defined]

    @property
    def active_associations(self) -> list[Association]:
        every = super().active_associations
        if negotiating_association(self) is None:
            return every
        return [a for a in every if not a.is_acceptor or associated(a)]

    @property
    def maximum_associations(self) -> int:
        limit = super().maximum_associations
        assoc = negotiating_association(self)
        if assoc is None:
            return limit
        calling = calling_ae_of(assoc)
        acceptors = [a for a in self.active_associations if a.is_acceptor]
        server = acceptor_server(assoc)
        on_node = None
        if isinstance(server, GuardedServer):
            on_node = server.associations_on_node(calling)
        if on_node is None:  # this process is the node's only receiver
            on_node = (sum(1 for a in acceptors if calling_ae_of(a) == calling), len(acceptors))
        of_calling, in_all = on_node  # both with the one negotiated
        if self.max_associations_per_ae and of_calling > self.max_associations_per_ae:
            self._note(
                assoc,
                f"calling AE {escape_text(calling, 16)} already holds "
                f"{of_calling - 1} associations ([node] max_associations_per_ae)",
            )
            return 0
        if in_all > limit:
            self._note(assoc, f"{limit} associations in progress ([node] max_associations)")
            return 0
        return limit

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        ApplicationEntity.maximum_associations.fset(self, value)  # type: ignore[attr-defined]


def _refused_summary(refused: list[str]) -> str:
    """The SOP classes refused at negotiation, for the association log line: named when few
    (a modality sending one unsupported class), counted when a peer proposes everything it
    knows (storescu offers some sixty); the audit log always lists them all."""
    if not refused:
        return ""
    if len(refused) <= MAX_REFUSED_NAMED:
        return f" refused_sop_classes={','.join(refused)} (not accepted by this node)"
    return (
        f" refused_sop_classes={len(refused)} (not accepted by this node; listed in the audit log)"
    )


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """How one C-STORE ended: the status answered; the record stored, or why not (`reason` for
    the log and audit, `comment` for the peer; `error` when it was not a refusal but a fault)."""

    status: int
    record: InstanceRecord | None = None
    new: bool = False
    reason: str = ""
    comment: str = ""
    error: Exception | None = None

    def answer(self) -> int | Dataset:
        """What the handler returns: the bare status on Success, else a status dataset with
        the Error Comment."""
        return SUCCESS if self.record is not None else refusal(self.status, self.comment)


def _refuse_what_streaming_stopped(parked: ParkedStream) -> None:
    """Raise _Rejected(0xA700) when the disk filled or a limit of `route_incoming` stopped
    the dataset while it streamed (nothing of it is left to store)."""
    if parked.disk_full is not None:
        raise _Rejected(
            OUT_OF_RESOURCES,
            f"disk full while receiving the dataset: {parked.disk_full}",
            "disk full on the node while receiving",
        )
    if parked.refused is not None:
        raise _Rejected(OUT_OF_RESOURCES, parked.refused, parked.refused_comment)


def _header_of(parked: ParkedStream, streamed: Path) -> InstanceHeader:
    """The header read while the dataset streamed, or from the file where something follows
    Pixel Data (pydicom reads it); _Rejected(0xC210) for a file that does not parse."""
    header = parked.header
    if header is None or header.file_size != _size(streamed):
        header = _read_header(streamed)
    return header


def _check_matches_request(record: InstanceRecord, request: C_STORE) -> None:
    """Raise _Rejected when the dataset's SOP Class or Instance UID is not the request's."""
    if record.sop_class_uid != str(request.AffectedSOPClassUID).strip():
        raise _Rejected(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class UID {record.sop_class_uid} is not the request's "
            f"Affected SOP Class UID {request.AffectedSOPClassUID}",
            "SOP Class UID is not the request's Affected SOP Class UID",
        )
    if record.sop_uid != str(request.AffectedSOPInstanceUID).strip():
        raise _Rejected(
            CANNOT_UNDERSTAND,
            f"dataset SOP Instance UID {record.sop_uid} is not the request's "
            f"Affected SOP Instance UID {request.AffectedSOPInstanceUID!r}",
            "SOP Instance UID is not the request's Affected SOP Instance UID",
        )


def _log_not_stored(event: Event, outcome: _Outcome) -> None:
    """The log line of a refused C-STORE, or of a failed one with its traceback."""
    request = cast(C_STORE, event.request)  # EVT_C_STORE: always a C-STORE request
    sop_uid = str(request.AffectedSOPInstanceUID or "")[:64]
    calling_aet = event.assoc.requestor.ae_title
    if outcome.error is not None:
        log.error(
            "C-STORE failed status=0x%04X calling_ae=%s sop_instance_uid=%r",
            outcome.status,
            calling_aet,
            sop_uid,
            exc_info=outcome.error,
        )
        return
    log.warning(
        "C-STORE refused status=0x%04X calling_ae=%s sop_instance_uid=%r reason=%s",
        outcome.status,
        calling_aet,
        sop_uid,
        outcome.reason,
    )


class Receiver:
    """C-ECHO and C-STORE SCP; each handler documents every status it may return.

    Completion on release: each association that brings new instances of a study is recorded
    as sending to it; a normal A-RELEASE marks the studies whose latest instance it brought as
    released (READY [pipeline] release_quiet_seconds later, see Studies.mark_ready) and calls
    `on_released(release_quiet_seconds)` so the completion check runs then instead of at the
    next tick; an abort only ends the association's hold (study_quiet_seconds applies).
    """

    def __init__(
        self,
        config: Config,
        store: InstanceStore,
        index: Index,
        *,
        on_stored: Callable[[InstanceRecord], None] | None = None,
        intake_paused: Callable[[], bool] | None = None,
        on_released: Callable[[float], None] | None = None,
        slot: int | None = None,
    ) -> None:
        """`slot`: this receiver's number when several processes receive ([node]
        receiver_processes): its own durability mark, and no re-indexing at start (the serve
        process re-indexes once, before it starts them)."""
        pynetdicom_adapter.install()
        self._slot = slot
        self._on_released_cb = on_released
        self._sending: weakref.WeakKeyDictionary[Association, _Sending] = (
            weakref.WeakKeyDictionary()
        )
        self._sending_lock = threading.Lock()
        self._config = config
        self._store = store
        self._index = index
        self._indexing = LazyIndexing(store, index, slot)
        # the console's switch (intake_paused): C-STORE answered 0xA700
        self._intake = InstanceIntake(
            config, store, index, self._indexing, intake_paused=intake_paused
        )
        self._on_stored = on_stored
        audit_path = config.security.audit_log or config.storage.root / "audit.log"
        self._audit = AssociationAuditor(AuditLog(audit_path, config.node.ae_title))
        self._server: ThreadedAssociationServer | None = None
        self._lock = threading.Lock()
        self._ae = self._build_ae()
        self._ssl_context = server_context(config.security)  # None without TLS

    def _build_ae(self) -> _NodeAE:
        node = self._config.node
        security = self._config.security
        ae = _NodeAE(ae_title=node.ae_title)
        ae.maximum_associations = node.max_associations
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.network_timeout = node.network_timeout
        ae.maximum_pdu_size = node.max_pdu_length  # announced; longer PDUs are refused
        ae.max_associations_per_ae = node.max_associations_per_ae
        ae.require_called_aet = security.require_called_aet
        if not security.allow_any_calling_aet:
            # only the allow-list: a destination's AE title is not allowed to send unless listed
            allowed = sorted(set(security.allowed_calling_aets))
            ae.require_calling_aet = allowed
            ae.admits_nobody = not allowed
        if security.tls_enabled and security.tls_client_ae_titles:
            ae.ae_titles_of_subject = security.ae_titles_of_subject
        if security.unmapped_certificates_note is not None:
            log.warning("%s", security.unmapped_certificates_note)
        ae.add_supported_context(VERIFICATION_SOP_CLASS, list(UNCOMPRESSED_TRANSFER_SYNTAXES))
        for uid in STORAGE_SOP_CLASSES.values():
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES.values()))
        add_report_context(ae)  # Storage Commitment reports of destinations with commit=yes
        mib = 1024 * 1024
        route_incoming(
            ae,
            self._store.incoming,
            min_free_bytes=self._config.storage.min_free_mb * mib,
            max_bytes=self._config.storage.max_instance_mb * mib,
            sync_early=self._alone_on_node,
        )
        return ae

    def _alone_on_node(self) -> bool:
        """True while at most one connection is open on the whole node. Then each instance's
        data is synced as soon as it has arrived, apart from its name (two disk flushes, the
        first overlapping the header checks: lower latency per instance, which is the
        throughput of one association). With several associations their flushes overlap
        anyway, and where one flush commits data and name together (XFS, journaled ext4) it
        costs the disk less."""
        server = self._server
        return not isinstance(server, GuardedServer) or server.connections_on_node() <= 1

    @property
    def ae(self) -> _NodeAE:
        """The pynetdicom AE (for inspection in tests and the Conformance Statement check)."""
        return self._ae

    @property
    def intake(self) -> InstanceIntake:
        """The checks, commit and index of received files (STOW-RS intake shares them)."""
        return self._intake

    @property
    def port(self) -> int:
        """The TCP port the SCP listens on (the configured one, or the bound one once started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._config.node.port

    @property
    def active_associations(self) -> int:
        """Associations open on the SCP now (0 when not listening)."""
        server = self._server
        return len(server.active_associations) if server is not None else 0

    @property
    def open_connections(self) -> int:
        """TCP connections open on the SCP now, associated or not (0 when not listening)."""
        server = self._server
        return server.open_connections() if isinstance(server, GuardedServer) else 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Re-index store files whose index rows a power cut lost, then listen on [node]
        host:port without blocking; raises OSError when the port is taken."""
        with self._lock:
            if self._server is not None:
                return
            if self._slot is None:
                reindex_store(self._store, self._index)
            handlers: list[EventHandlerType] = [
                (evt.EVT_CONN_OPEN, self._audit.connection_opened),
                (evt.EVT_C_ECHO, self._on_c_echo),
                (evt.EVT_C_STORE, self._on_c_store),
                (evt.EVT_N_EVENT_REPORT, ReportHandler(self._config, self._index)),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_RELEASED, self._on_released),
                (evt.EVT_ABORTED, self._on_aborted),
                (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            ]
            address = (self._config.node.host, self._config.node.port)
            self._server = start_server(
                self._ae,
                address,
                handlers,
                self._ssl_context,
                self._config.node.acse_timeout,
                on_handshake_failed=self._on_tls_refused,
                max_pdu_length=self._config.node.max_pdu_length,
                max_pending_per_address=self._config.node.max_pending_per_address,
                on_drop=self._on_connection_dropped,
            )
        log.info(
            "listening ae_title=%s address=%s:%d tls=%s",
            self._config.node.ae_title,
            address[0],
            self.port,
            "yes" if self._ssl_context else "no",
        )

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting associations, let in-flight ones finish for `grace_seconds`, abort the
        rest.

        An aborted C-STORE was never answered with Success, so nothing acknowledged is lost.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            # A connection that never sent an A-ASSOCIATE-RQ (a load balancer's probe) has
            # nothing in flight: closed now, so an idle node stops at once.
            for assoc in server.active_associations:
                if assoc.requestor.primitive is None:
                    _close_unassociated(assoc)
            if not [a for a in server.active_associations if a.requestor.primitive is not None]:
                break
            time.sleep(0.05)
        for assoc in server.active_associations:
            if assoc.requestor.primitive is None:
                continue
            log.warning("aborting association calling_ae=%s at shutdown", assoc.requestor.ae_title)
            assoc.abort()
        try:
            self._indexing.make_durable()
        except Exception as exc:  # e.g. the database is gone: the next start re-indexes instead
            log.warning("index rows not synced at shutdown (re-indexed at next start): %s", exc)
        self._audit.audit_log.close()
        log.info("stopped listening ae_title=%s", self._config.node.ae_title)

    def _on_tls_refused(self, peer: str, reason: str) -> None:
        """Audit a TLS connection closed before any association (Security Alert)."""
        party = Party(uuid.uuid4().hex[:16], calling_ae="", called_ae="", peer=peer)
        self._audit.audit_log.association_rejected(party, reason)

    def _on_connection_dropped(self, peer: str, calling_ae: str, reason: str) -> None:
        """Audit a connection the node cut (Security Alert): a PDU too long, too slow or not
        DICOM, or too many pending connections from one address."""
        party = Party(uuid.uuid4().hex[:16], calling_ae=calling_ae, called_ae="", peer=peer)
        self._audit.audit_log.connection_dropped(party, reason)

    # --- event handlers -----------------------------------------------------------------

    def _on_c_echo(self, event: Event) -> int:
        """Handle a C-ECHO request.

        Statuses
        --------
        0x0000 Success: always; C-ECHO works even when the store is out of space.
        """
        return SUCCESS

    def _on_c_store(self, event: Event) -> int | Dataset:
        """Handle a C-STORE request: make the instance durable and indexed, then answer.

        Every status other than Success is answered as a status dataset whose Error Comment
        (0000,0902) says why, at most 64 characters (e.g. "intake is paused on the node"), so
        the peer's log shows the reason beside the code; the node's log and audit give it in
        full.

        Statuses
        --------
        0x0000 Success: the file is renamed into the store (fsynced) and recorded in the index;
               also for an instance already stored (idempotent on SOP Instance UID).
        0xA700 Out of Resources: intake is paused from the console; or free space on the store
               is below [storage] min_free_mb (checked every MiB while the dataset streams:
               from then on nothing more is written), or the disk filled while the dataset was
               received or committed, or the index database is full; or the dataset grew past
               [storage] max_instance_mb while it streamed; or the calling AE already started
               [security] max_new_studies_per_hour new studies in the last hour (this instance
               would start one more; audited as a Security Alert). Nothing is left in the
               store or its incoming folder.
        0xA900 Data Set Does Not Match SOP Class: the dataset's SOP Class UID is not the
               request's Affected SOP Class UID.
        0xC210 Cannot Understand: the dataset does not parse, or its Study/Series/SOP Instance UID
               is missing or not a valid UID (e.g. contains '/'), or its SOP Instance UID is not the
               request's Affected SOP Instance UID. No path is ever built from such a value.
        0xC221 (Cannot Understand range) Patient Mismatch: one patient per study; the instance's
               Patient ID differs from the study's (that of its first instance), or both have a
               Patient's Birth Date and they differ. Not stored; audited.
        0xC222 (Cannot Understand range) Instance In Another Study: the SOP Instance UID is
               already stored under another Study Instance UID. Not stored; audited.
        0x0110 Processing Failure: any other error (e.g. the index database is unavailable); the
               peer may retry. The instance may be in the store but is not acknowledged.
        0x0122 SOP Class Not Supported is answered by pynetdicom at negotiation for SOP classes
               outside sop_classes.STORAGE_SOP_CLASSES; this handler never sees them.
        """
        started = time.perf_counter()
        outcome = self._receive(event)
        self._report(event, outcome, time.perf_counter() - started)
        if outcome.record is not None:
            self._announce(outcome.record)
        return outcome.answer()

    def _receive(self, event: Event) -> _Outcome:
        """Store the request's instance; how that ended, whatever happened (never raises)."""
        try:
            record, new = self._store_instance(event)
        except _Rejected as rejected:
            return _Outcome(rejected.status, reason=str(rejected), comment=rejected.comment)
        except Exception as exc:
            return _Outcome(
                PROCESSING_FAILURE,
                reason=f"{type(exc).__name__}: {exc}",
                comment=f"processing failure on the node ({type(exc).__name__}), retry",
                error=exc,
            )
        return _Outcome(SUCCESS, record=record, new=new)

    def _store_instance(self, event: Event) -> tuple[InstanceRecord, bool]:
        """Commit the streamed file into the store and index it: (the record, whether the
        instance is new). Raises _Rejected with the status to answer."""
        request = cast(C_STORE, event.request)  # EVT_C_STORE: always a C-STORE request
        parked = parked_stream(request)
        _refuse_what_streaming_stopped(parked)
        self._intake.check_open()
        streamed = Path(event.dataset_path)
        # started as the last fragment landed (alone on the node): the data goes to disk while
        # the header is checked and the index consulted; None: commit flushes data and name
        data_sync = parked.data_sync
        header = _header_of(parked, streamed)
        record = self._intake.record_of(header, streamed, event.assoc.requestor.ae_title)
        _check_matches_request(record, request)
        return self._intake.store_record(
            streamed,
            record,
            header,
            self._sending_of(event.assoc),
            data_sync=data_sync,
            on_quota=lambda study_uid, reason: self._audit.study_quota(event, study_uid, reason),
        )

    def _report(self, event: Event, outcome: _Outcome, seconds: float) -> None:
        """Log, audit and count one C-STORE once, however it ended."""
        calling_aet = event.assoc.requestor.ae_title
        record = outcome.record
        if record is None:
            self._audit.instance(event, outcome.status, reason=outcome.reason)
            METRICS.cstore(calling_aet, outcome.status)
            _log_not_stored(event, outcome)
            return
        self._audit.instance(event, SUCCESS, study_uid=record.study_uid, new=outcome.new)
        METRICS.cstore(calling_aet, SUCCESS, _size(record.path))
        valid_modality = is_code_string(record.modality)  # else indexed escaped and bounded
        log.log(
            logging.INFO if valid_modality else logging.WARNING,
            "C-STORE stored status=0x0000 calling_ae=%s sop_instance_uid=%s study_uid=%s "
            "modality=%s new=%s ms=%.1f%s",
            calling_aet,
            record.sop_uid,
            record.study_uid,
            record.modality,
            outcome.new,
            seconds * 1000.0,
            "" if valid_modality else " (Modality is not a valid CS value: indexed escaped)",
        )

    def _announce(self, record: InstanceRecord) -> None:
        """Tell `on_stored` of a stored instance; its failure never changes the answer."""
        if self._on_stored is None:
            return
        try:
            self._on_stored(record)
        except Exception:
            log.exception("on_stored callback failed for sop_instance_uid=%s", record.sop_uid)

    def _sending_of(self, assoc: Association) -> _Sending:
        with self._sending_lock:
            sending = self._sending.get(assoc)
            if sending is None:
                sending = self._sending[assoc] = _Sending()
            return sending

    def _association_ended(self, assoc: Association, *, released: bool) -> None:
        """Record in the index that `assoc` ended (see Studies.association_ended); after a
        release, ask for a completion check release_quiet_seconds from now."""
        with self._sending_lock:
            sending = self._sending.pop(assoc, None)
        if sending is None or not sending.studies:
            return
        try:
            self._index.association_ended(
                sending.association_id, sending.studies, released=released, now=time.time()
            )
        except Exception:
            log.exception(
                "association end not recorded (its studies complete after study_quiet_seconds)"
            )
            return
        if released and self._on_released_cb is not None:
            try:
                self._on_released_cb(self._config.pipeline.release_quiet_seconds)
            except Exception:
                log.exception("completion check after release not scheduled")

    def _on_accepted(self, event: Event) -> None:
        requestor = event.assoc.requestor
        refused = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        log.info(
            "association accepted calling_ae=%s called_ae=%s peer=%s:%s%s%s",
            requestor.ae_title,
            event.assoc.acceptor.ae_title,
            requestor.address,
            requestor.port,
            "" if self._slot is None else f" receiver={self._slot}",
            _refused_summary(refused),
        )
        self._audit.accepted(event)

    def _on_rejected(self, event: Event) -> None:
        requestor = event.assoc.requestor
        primitive = event.assoc.requestor.primitive
        called = getattr(primitive, "called_ae_title", "")
        reason = self._audit.rejected(event, self._ae.rejection_note(event.assoc))
        log.warning(
            "association rejected calling_ae=%s called_ae=%s peer=%s:%s reason=%s",
            requestor.ae_title,
            called,
            requestor.address,
            requestor.port,
            reason,
        )

    def _on_released(self, event: Event) -> None:
        log.info("association released calling_ae=%s", event.assoc.requestor.ae_title)
        self._audit.ended(event, "released")
        self._association_ended(event.assoc, released=True)

    def _on_aborted(self, event: Event) -> None:
        log.warning("association aborted calling_ae=%s", event.assoc.requestor.ae_title)
        self._audit.ended(event, "aborted")
        self._association_ended(event.assoc, released=False)

    def _on_connection_closed(self, event: Event) -> None:
        """A connection dropped without A-RELEASE or A-ABORT (the sender died) ends the
        association's hold on its studies like an abort. The close may be seen (in the DUL
        thread) just before the association's thread reports a normal release, so the hold
        ends once that thread has finished: after a release or an abort nothing is left."""
        assoc = event.assoc
        with self._sending_lock:
            if assoc not in self._sending:
                return
        if threading.current_thread() is assoc or not assoc.is_alive():
            self._association_ended(assoc, released=False)
            return

        def after_association() -> None:
            assoc.join(timeout=max(self._config.node.network_timeout, 1.0))
            self._association_ended(assoc, released=False)

        threading.Thread(target=after_association, name="association-end", daemon=True).start()


def _close_unassociated(assoc: Association) -> None:
    """Close a connection that sent no A-ASSOCIATE-RQ (DUL state Sta2, where the state machine
    takes no A-ABORT): closing the socket is event Evt17 (AA-5, back to Sta1), after which its
    DUL thread, which would keep the process alive, can be stopped."""
    dul = assoc.dul
    if dul.socket is not None and dul.state_machine.current_state == "Sta2":
        dul.socket.close()
    if dul.state_machine.current_state == "Sta1":
        dul.stop_dul()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
