"""Audit trail of the SCP: one JSON line per association and per instance transfer.

In the spirit of IHE ATNA (PS3.15 A.5 audit messages), with its vocabulary: EventID
"Begin Transferring DICOM Instances" (DCM 110102) when an association is accepted,
"DICOM Instances Transferred" (DCM 110104) for each C-STORE and when an association ends
(released or aborted, with counts), and "Security Alert" (DCM 110113, type "Node
Authentication") when an association is rejected. EventOutcomeIndicator: 0 success, 4 minor
failure (the peer's request was refused: bad data, unknown AE), 8 serious failure (the transfer
failed: aborted association, out of resources, processing failure), 12 major failure (unused).

Who (calling and called AE title, and with TLS the subject of the client certificate), from
where (peer IP:port), when (UTC) and the outcome are recorded; connections the node cuts
(scp_node.dicom.connections) and new-study quotas reached are Security Alerts too; instances by
Study/SOP Class/SOP Instance UID only. ATNA's participant object also
carries the Patient ID; this log deliberately holds no Patient Name, Patient ID or Birth Date,
so operators can read it without access to patient data (UIDs link to the index when needed).
Lines go to [security] audit_log, apart from the stdout log, flushed one by one (no fsync).
The file is 0600 (made so when it exists) and a folder created for it 0700, whatever the umask:
it names peers, hosts and studies. JSON with ensure_ascii escapes every control character a
peer may put in an AE title or UID, so one event is always one line.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from scp_node.dicom import status as dimse_status
from scp_node.dicom.tls import peer_certificate_subject
from storage.private_files import make_private_dir, private_opener

log = logging.getLogger("lungnode.audit")

# (code, codeSystemName, displayName) of the DICOM Controlled Terminology (PS3.16).
BEGIN_TRANSFERRING = ("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = ("110113", "DCM", "Security Alert")
NODE_AUTHENTICATION = ("110126", "DCM", "Node Authentication")
APPLICATION_ACTIVITY = ("110100", "DCM", "Application Activity")  # console actions
USER_AUTHENTICATION = ("110114", "DCM", "User Authentication")  # console logins, tokens
LOGIN, LOGOUT = ("110122", "DCM", "Login"), ("110123", "DCM", "Logout")
STUDY_DELETED = ("110105", "DCM", "DICOM Study Deleted")  # retention removed a study's inputs

# EventOutcomeIndicator (IHE ATNA, RFC 3881 / DICOM PS3.15 A.5): the outcome of an audited
# event, not a DIMSE status (those are in scp_node.dicom.status).
OUTCOME_SUCCESS = 0
OUTCOME_MINOR_FAILURE = 4
OUTCOME_SERIOUS_FAILURE = 8
OUTCOME_MAJOR_FAILURE = 12  # unused: the node never audits one

# A-ASSOCIATE-RJ (result source, diagnostic) -> reason (PS3.8 9.3.4). Keyed by object: the
# values come from getattr on the primitive and may be None.
_REJECT_REASONS: dict[tuple[object, object], str] = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given (ACSE)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (too many associations)",
}
_MAX_TEXT = 128  # peer-supplied values (UIDs, AE titles) are clipped to this many characters


def _coded(code: tuple[str, str, str]) -> dict[str, str]:
    return {"code": code[0], "codeSystemName": code[1], "displayName": code[2]}


def _clip(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip(" \x00")
    return text[:_MAX_TEXT] if text else None


def outcome_of_status(status: int) -> int:
    """EventOutcomeIndicator of a C-STORE status: 0 success (Success or a Warning), 8 serious
    failure for the node's own failures (0xA7xx out of resources, 0x0110 processing failure),
    4 minor failure for a refused request."""
    if status == dimse_status.SUCCESS or dimse_status.is_warning(status):
        return OUTCOME_SUCCESS
    if dimse_status.is_out_of_resources(status) or status == dimse_status.PROCESSING_FAILURE:
        return OUTCOME_SERIOUS_FAILURE
    return OUTCOME_MINOR_FAILURE


@dataclass(frozen=True)
class Party:
    """The two AEs of one association and where the requestor connected from."""

    association_id: str
    calling_ae: str
    called_ae: str
    peer: str
    certificate_subject: str | None = None  # TLS client certificate; None without TLS


class AuditLog:
    """Appends audit events as JSON lines to one file; safe to call from any thread."""

    def __init__(self, path: Path, source_id: str) -> None:
        """Open (append) `path`, creating its folder; `source_id` is the node's AE title
        (ATNA AuditSourceID). Raises OSError naming the file when it cannot be opened."""
        self.path = Path(path)
        self.source_id = source_id
        self._lock = threading.Lock()
        self._failed = False
        try:
            make_private_dir(self.path.parent, parents=True)
            self._file = open(self.path, "a", encoding="utf-8", opener=private_opener)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot open the audit log {self.path}: {exc.strerror}; "
                "fix [security] audit_log or the folder's permissions",
            ) from exc

    def write(self, event: dict[str, Any]) -> None:
        """Append one event with its EventDateTime and AuditSourceID; a failed write is logged
        (once per failure streak) and never raised, so auditing cannot stop a transfer."""
        now = time.time()
        record = {
            "EventDateTime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            **event,
            "AuditSourceID": self.source_id,
        }
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self._file.write(line)
                self._file.flush()
                self._failed = False
            except (OSError, ValueError) as exc:  # ValueError: written after close()
                if not self._failed:
                    log.error("audit log %s not written: %s", self.path, exc)
                self._failed = True

    def close(self) -> None:
        """Flush and close the file; later writes are logged as failures. A flush that fails
        (the disk full: lines a failed write left buffered) is logged, not raised: the file is
        closed all the same and the node stops as it would."""
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:
                log.error("audit log %s: last lines not written at close: %s", self.path, exc)

    # --- events ----------------------------------------------------------------------------

    def operator_action(
        self, actor: str, client: str, action: str, outcome: int, **detail: Any
    ) -> None:
        """An administrator's action from the web console (resend, analyse again, pause...):
        who (the name given at login, or "bearer token"), from which address, what, the result."""
        self.write(
            {
                "EventID": _coded(APPLICATION_ACTIVITY),
                "EventActionCode": "E",
                "EventOutcomeIndicator": outcome,
                "Action": action,
                "ActiveParticipant": [
                    {
                        "UserID": _clip(actor),
                        "UserIsRequestor": True,
                        "NetworkAccessPointID": _clip(client),
                    }
                ],
                "Detail": {k: _clip(v) if isinstance(v, str) else v for k, v in detail.items()},
            }
        )

    def user_authentication(
        self, user: str, client: str, outcome: int, *, logout: bool = False, **detail: Any
    ) -> None:
        """User Authentication (Login or Logout) at the console: the name typed (or "bearer
        token"), the client address it came from, the outcome (0 success, 4 refused)."""
        self.write(
            {
                "Event": "user-logout" if logout else "user-login",
                "EventID": _coded(USER_AUTHENTICATION),
                "EventTypeCode": _coded(LOGOUT if logout else LOGIN),
                "EventActionCode": "E",
                "EventOutcomeIndicator": outcome,
                "ActiveParticipant": [
                    {
                        "UserID": _clip(user),
                        "UserIsRequestor": True,
                        "NetworkAccessPointID": _clip(client),
                    }
                ],
                "Detail": {k: _clip(v) if isinstance(v, str) else v for k, v in detail.items()},
            }
        )

    def study_inputs_deleted(
        self, actor: str, *, study_uid: str, rule: str, reason: str, instances: int, bytes: int
    ) -> None:
        """DICOM Study Deleted: retention removed the instances the node received for a study
        (its own result objects stay); who ran it (scheduler, watermark, an operator's CLI),
        under which rule and why."""
        self.write(
            {
                "Event": "study-inputs-deleted",
                "EventID": _coded(STUDY_DELETED),
                "EventActionCode": "D",
                "EventOutcomeIndicator": OUTCOME_SUCCESS,
                "ActiveParticipant": [{"UserID": _clip(actor), "UserIsRequestor": True}],
                "StudyInstanceUID": _clip(study_uid),
                "Rule": rule,
                "EventOutcomeDescription": reason[:1024],
                "InstancesDeleted": instances,
                "BytesDeleted": bytes,
            }
        )

    def study_failed(self, actor: str, *, study_uid: str, reason: str, outcome: int) -> None:
        """Security Alert: the worker `actor` failed a study instead of reporting it, because
        its source instances as read for the analysis name another patient or study than the
        index holds (scp_node.pipeline.source_check); the reason names UIDs only."""
        self.write(
            {
                "Event": "study-failed-source-mismatch",
                "EventID": _coded(SECURITY_ALERT),
                "EventActionCode": "E",
                "EventOutcomeIndicator": outcome,
                "ActiveParticipant": [{"UserID": _clip(actor), "UserIsRequestor": True}],
                "StudyInstanceUID": _clip(study_uid),
                "EventOutcomeDescription": reason[:1024],
            }
        )

    def association_accepted(self, party: Party, rejected_contexts: list[str]) -> None:
        """Begin Transferring DICOM Instances: the association was accepted."""
        event = self._base("association-accepted", BEGIN_TRANSFERRING, "E", OUTCOME_SUCCESS, party)
        if rejected_contexts:
            event["RejectedAbstractSyntaxes"] = rejected_contexts
        self.write(event)

    def association_rejected(self, party: Party, reason: str) -> None:
        """Security Alert (Node Authentication): the association was rejected and why."""
        event = self._base(
            "association-rejected", SECURITY_ALERT, "E", OUTCOME_MINOR_FAILURE, party
        )
        event["EventTypeCode"] = _coded(NODE_AUTHENTICATION)
        event["EventOutcomeDescription"] = reason
        self.write(event)

    def connection_dropped(self, party: Party, reason: str) -> None:
        """Security Alert: the node cut a connection before or during an association (a PDU
        too long, too slow or not DICOM; too many pending connections from one address)."""
        event = self._base("connection-dropped", SECURITY_ALERT, "E", OUTCOME_MINOR_FAILURE, party)
        event["EventTypeCode"] = _coded(NODE_AUTHENTICATION)
        event["EventOutcomeDescription"] = reason[:1024]
        self.write(event)

    def study_quota(self, party: Party, study_uid: str, reason: str) -> None:
        """Security Alert: a calling AE reached its quota of new studies per hour."""
        event = self._base(
            "study-quota-exceeded", SECURITY_ALERT, "E", OUTCOME_MINOR_FAILURE, party
        )
        event["EventTypeCode"] = _coded(NODE_AUTHENTICATION)
        event["StudyInstanceUID"] = _clip(study_uid)
        event["EventOutcomeDescription"] = reason[:1024]
        self.write(event)

    def association_ended(self, party: Party, how: str, stored: int, refused: int) -> None:
        """DICOM Instances Transferred, summarised for the association; `how` is released or
        aborted (an abort is a serious failure of whatever was in flight)."""
        if how not in ("released", "aborted"):
            raise ValueError(f"association end {how!r}: expected released or aborted")
        if how == "aborted":
            outcome = OUTCOME_SERIOUS_FAILURE
        else:
            outcome = OUTCOME_SUCCESS if refused == 0 else OUTCOME_MINOR_FAILURE
        event = self._base(f"association-{how}", INSTANCES_TRANSFERRED, "C", outcome, party)
        event["InstancesStored"] = stored
        event["InstancesRefused"] = refused
        self.write(event)

    def instance_transferred(
        self,
        party: Party,
        *,
        status: int,
        study_uid: str | None,
        sop_class_uid: object,
        sop_instance_uid: object,
        new: bool = True,
        reason: str | None = None,
    ) -> None:
        """DICOM Instances Transferred for one C-STORE and the status it was answered with."""
        outcome = outcome_of_status(status)
        kind = "instance-stored" if outcome == OUTCOME_SUCCESS else "instance-refused"
        # C: a new instance was created; U: the same SOP Instance was received again.
        action = "C" if new or outcome != OUTCOME_SUCCESS else "U"
        event = self._base(kind, INSTANCES_TRANSFERRED, action, outcome, party)
        event.update(
            {
                "StudyInstanceUID": _clip(study_uid),
                "SOPClassUID": _clip(sop_class_uid),
                "SOPInstanceUID": _clip(sop_instance_uid),
                "Status": f"0x{status:04X}",
            }
        )
        if reason:
            event["EventOutcomeDescription"] = reason[:1024]
        self.write(event)

    @staticmethod
    def _base(
        name: str, event_id: tuple[str, str, str], action: str, outcome: int, party: Party
    ) -> dict[str, Any]:
        event = {
            "Event": name,
            "EventID": _coded(event_id),
            "EventActionCode": action,
            "EventOutcomeIndicator": outcome,
            "AssociationID": party.association_id,
            "CallingAETitle": party.calling_ae,
            "CalledAETitle": party.called_ae,
            "Peer": party.peer,
        }
        if party.certificate_subject is not None:
            event["CertificateSubject"] = party.certificate_subject[:512]
        return event


@dataclass
class _Tally:
    party: Party
    stored: int = 0
    refused: int = 0


class AssociationAuditor:
    """Turns pynetdicom's association and C-STORE events into AuditLog events, keeping one id
    and the stored/refused counts per association."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.audit_log = audit_log
        self._tallies: weakref.WeakKeyDictionary[Association, _Tally] = weakref.WeakKeyDictionary()
        self._subjects: weakref.WeakKeyDictionary[Association, str | None] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def connection_opened(self, event: Event) -> None:
        """EVT_CONN_OPEN: note the TLS certificate subject while the socket is surely open; by
        EVT_REJECTED the peer may already have read the A-ASSOCIATE-RJ and closed it."""
        subject = peer_certificate_subject(event.assoc)
        with self._lock:
            self._subjects[event.assoc] = subject

    def _tally(self, assoc: Association) -> _Tally:
        with self._lock:
            tally = self._tallies.get(assoc)
            if tally is None:
                requestor = assoc.requestor
                primitive = requestor.primitive
                called = getattr(primitive, "called_ae_title", None) or assoc.acceptor.ae_title
                subject = (
                    self._subjects.pop(assoc)
                    if assoc in self._subjects
                    else peer_certificate_subject(assoc)
                )
                tally = _Tally(
                    Party(
                        association_id=uuid.uuid4().hex[:16],
                        calling_ae=_clip(requestor.ae_title) or "",
                        called_ae=_clip(called) or "",
                        peer=f"{requestor.address}:{requestor.port}",
                        certificate_subject=subject,
                    )
                )
                self._tallies[assoc] = tally
            return tally

    def accepted(self, event: Event) -> None:
        """EVT_ACCEPTED: record the association and the abstract syntaxes refused in it."""
        rejected = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        self.audit_log.association_accepted(self._tally(event.assoc).party, rejected)

    def rejected(self, event: Event, note: str = "") -> str:
        """EVT_REJECTED: record the Security Alert; returns the reason for the stdout log.
        `note`: why the node's own rules rejected it (certificate, per-AE limit), if they did."""
        reason = rejection_reason(event.assoc) + (f": {note}" if note else "")
        self.audit_log.association_rejected(self._tally(event.assoc).party, reason)
        return reason

    def ended(self, event: Event, how: str) -> None:
        """EVT_RELEASED / EVT_ABORTED: record the end of the association with its counts."""
        tally = self._tally(event.assoc)
        self.audit_log.association_ended(tally.party, how, tally.stored, tally.refused)

    def study_quota(self, event: Event, study_uid: str, reason: str) -> None:
        """A calling AE reached its quota of new studies (Security Alert)."""
        self.audit_log.study_quota(self._tally(event.assoc).party, study_uid, reason)

    def instance(
        self,
        event: Event,
        status: int,
        *,
        study_uid: str | None = None,
        new: bool = True,
        reason: str | None = None,
    ) -> None:
        """One C-STORE answered with `status` (UIDs of the request, study when known)."""
        tally = self._tally(event.assoc)
        with self._lock:
            if outcome_of_status(status) == OUTCOME_SUCCESS:
                tally.stored += 1
            else:
                tally.refused += 1
        request = cast(C_STORE, event.request)  # called for EVT_C_STORE only
        self.audit_log.instance_transferred(
            tally.party,
            status=status,
            study_uid=study_uid,
            sop_class_uid=request.AffectedSOPClassUID,
            sop_instance_uid=request.AffectedSOPInstanceUID,
            new=new,
            reason=reason,
        )


def rejection_reason(assoc: Association) -> str:
    """Why the acceptor rejected `assoc`, from the A-ASSOCIATE-RJ it sent."""
    primitive = assoc.acceptor.primitive
    source = getattr(primitive, "result_source", None)
    diagnostic = getattr(primitive, "diagnostic", None)
    result = getattr(primitive, "result", None)
    kinds: dict[object, str] = {1: "rejected-permanent", 2: "rejected-transient"}
    kind = kinds.get(result, "rejected")
    text = _REJECT_REASONS.get((source, diagnostic), "unknown reason")
    return f"{kind}: {text} (source {source}, diagnostic {diagnostic})"
