"""STOW-RS intake (PS3.18 10.5): `POST /dicom-web/studies[/{study}]` on the web server.

The same door as C-STORE with another frame: each part of the multipart/related request is
streamed to a file in the store's incoming folder (never held in memory: one chunk at a time,
and the next chunk is read only once the part before it is stored), then handed to
scp_node.receive.intake, the code the C-STORE handler uses: header read by the one header
reader, the allow-list, the study quota, one patient per study, the reused-SOP-UID rule, the
commit (fsynced) and the index row, all before the response. Each instance is audited (DICOM
Instances Transferred) and counted in the metrics under the client's calling AE title.

Who sends: `[web] stow_token` as Bearer (calling AE `[web] stow_calling_aet`), or a [web] user
of `[web] stow_users` by HTTP Basic (its own calling AE); the calling AE must be on [security]
allowed_calling_aets as for an association. Failed credentials count towards the console's
lock-out per client address and are audited as the console's are.

One request acts as one association: the studies it brought are released when it ends (READY
after [pipeline] release_quiet_seconds), so a study sent partly by C-STORE and partly by
STOW-RS is one study, complete when its last sender is done.

Bounds: each part at most [storage] max_instance_mb (failed 0xA700 beyond), the body at most
[web] stow_max_request_mb and stow_max_parts parts (413), the whole request within
stow_timeout_seconds (408; a client that trickles is cut). Instances stored before a request is
cut stay stored (they were durable; sending them again is idempotent).

Response (application/dicom+json): Referenced SOP Sequence (0008,1199) for the instances
stored, Failed SOP Sequence (0008,1198) with Failure Reason (0008,1197) for the others; HTTP 200
when all were stored, 202 when some failed, 409 when all failed, 400 for a malformed request
(no boundary, not multipart, no part), 415 for another media type than application/dicom.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydicom.filereader import read_file_meta_info
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from scp_node.config import Config
from scp_node.credentials import verify_password
from scp_node.dicom.instance_header import InstanceHeader, header_of_first_bytes
from scp_node.dicom.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from scp_node.dicom.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
)
from scp_node.logs import escape_text
from scp_node.metrics import METRICS
from scp_node.ops.audit import AuditLog, Party
from scp_node.ops.health import InFlight
from scp_node.receive.intake import InstanceIntake, Rejected, Sending, read_instance_header
from storage.uids import InvalidUIDError, require_uid

log = logging.getLogger("lungnode.stow")

MEDIA_TYPE = "application/dicom+json"
DICOM = "application/dicom"
# PS3.18 Table 10.5.3-? Failure Reasons of STOW-RS beside the C-STORE ones (0xA700, 0xA900,
# 0xC000-0xCFFF, 0x0110, 0x0122): the transfer syntax is not one the origin server accepts.
REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
MIB = 1024 * 1024
HEAD_BYTES = 64 * 1024
_STORABLE = frozenset(STORAGE_SOP_CLASSES.values())
_SYNTAXES = frozenset(TRANSFER_SYNTAXES.values())


class StowRefused(Exception):
    """The whole request is refused with an HTTP status (the message says why)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Part:
    """One part as it streams to its file."""

    path: Path
    handle: IO[bytes] | None
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    refused: tuple[int, str] | None = None  # (status, reason) decided while streaming
    head: bytes = b""  # its first HEAD_BYTES: the UIDs of a part refused while streaming


@dataclass
class _Outcome:
    """What became of one part: stored (status 0) or failed with a Failure Reason."""

    status: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str | None = None
    new: bool = True
    reason: str = ""


class StowIntake:
    """The STOW-RS endpoint over one InstanceIntake (shared with the C-STORE receiver)."""

    def __init__(
        self,
        config: Config,
        intake: InstanceIntake,
        audit: AuditLog,
        *,
        on_released: Callable[[float], None] | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.config = config
        self.intake = intake
        self.audit = audit
        self._on_released = on_released
        self.in_flight = in_flight or InFlight()  # requests being received (analysis yields)

    # ---- who sends -------------------------------------------------------------------------

    def calling_aet(self, request: Request) -> str | None | Literal[False]:
        """The calling AE of the request's credentials; None when it sends none, False when
        they are wrong."""
        web = self.config.web
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and web.stow_token:
            ok = hmac.compare_digest(value.strip().encode(), web.stow_token.encode())
            return web.stow_calling_aet if ok else False
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            users = {n.casefold(): h for n, h in web.users}
            senders = {n.casefold(): ae for n, ae in web.stow_users}
            hashed = users.get(name.casefold())
            if hashed is None or name.casefold() not in senders:
                return False
            return senders[name.casefold()] if verify_password(password, hashed) else False
        return False if header else None

    def allowed(self, calling_aet: str) -> bool:
        """True when `calling_aet` may store here ([security] allowed_calling_aets)."""
        security = self.config.security
        return security.allow_any_calling_aet or calling_aet in security.allowed_calling_aets

    # ---- the request -----------------------------------------------------------------------

    async def post(self, request: Request, calling_aet: str) -> Response:
        """Store every part of one STOW-RS request; see the module's docstring."""
        study = request.path_params.get("study")
        sending = Sending()
        party = self.party(request, calling_aet, sending.association_id)
        try:
            if study is not None:
                try:
                    study = require_uid("Study Instance UID", study)
                except InvalidUIDError as exc:
                    raise StowRefused(400, str(exc)) from None
            boundary = _boundary(request.headers.get("content-type", ""))
            self._check_length(request)
        except StowRefused as refused:
            return self._refused(party, refused)
        outcomes: list[_Outcome] = []
        released = False
        try:
            with self.in_flight:
                async with asyncio.timeout(self.config.web.stow_timeout_seconds):
                    await self._receive(request, boundary, party, study, sending, outcomes)
            released = True
        except TimeoutError:
            reason = (
                f"request still arriving after [web] stow_timeout_seconds "
                f"({self.config.web.stow_timeout_seconds:g} s): cut"
            )
            self.audit.connection_dropped(party, reason)
            return self._refused(party, StowRefused(408, reason), outcomes)
        except StowRefused as refused:
            return self._refused(party, refused, outcomes)
        except ClientDisconnect:
            self.audit.connection_dropped(party, "STOW-RS client disconnected mid-request")
            return self._refused(party, StowRefused(400, "client disconnected"), outcomes)
        finally:
            self._ended(party, sending, outcomes, released=released)
        if not outcomes:
            return self._refused(party, StowRefused(400, "no part in the multipart body"))
        return _response(outcomes)

    def party(self, request: Request, calling_aet: str, association_id: str) -> Party:
        """The request as the audit names an association: client identity and address."""
        return Party(
            association_id=association_id[:16],
            calling_ae=calling_aet,
            called_ae=self.config.node.ae_title,
            peer=f"{request.client.host}:{request.client.port}" if request.client else "?",
        )

    def _check_length(self, request: Request) -> None:
        limit = self.config.web.stow_max_request_mb * MIB
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise StowRefused(413, f"body of {length} bytes: over [web] stow_max_request_mb")

    async def _receive(
        self,
        request: Request,
        boundary: bytes,
        party: Party,
        study: str | None,
        sending: Sending,
        outcomes: list[_Outcome],
    ) -> None:
        """Stream the body part by part to files, storing each part once it has arrived."""
        web, store = self.config.web, self.intake.store
        max_part = self.config.storage.max_instance_mb * MIB or None
        finished: list[_Part] = []
        current: list[_Part] = []
        field_name: list[bytes] = []
        value: list[bytes] = []
        parts = 0

        def begin() -> None:
            nonlocal parts
            parts += 1
            path = store.temp_path()
            if parts > web.stow_max_parts:  # refused once the parts before it are stored
                current.append(_Part(path, None))
                return
            current.append(_Part(path, open(path, "wb")))

        def header_field(data: bytes, start: int, end: int) -> None:
            field_name.append(data[start:end])

        def header_value(data: bytes, start: int, end: int) -> None:
            value.append(data[start:end])

        def header_end() -> None:
            name = b"".join(field_name).decode("latin-1").strip().lower()
            current[-1].headers[name] = b"".join(value).decode("latin-1").strip()
            field_name.clear()
            value.clear()

        def headers_finished() -> None:
            part = current[-1]
            media = part.headers.get("content-type")
            if media is not None and parse_options_header(media)[0].decode().lower() != DICOM:
                self._refuse_part(part, CANNOT_UNDERSTAND, f"part of media type {media!r}")

        def data(chunk: bytes, start: int, end: int) -> None:
            part = current[-1]
            if part.handle is None:
                return
            before = part.size
            part.size += end - start
            if before < HEAD_BYTES:
                part.head += chunk[start : min(end, start + HEAD_BYTES - before)]
            if max_part is not None and part.size > max_part:
                self._refuse_part(
                    part,
                    OUT_OF_RESOURCES,
                    f"part larger than [storage] max_instance_mb "
                    f"({self.config.storage.max_instance_mb} MiB)",
                )
                return
            if before // MIB != part.size // MIB and not store.has_free_space():
                self._refuse_part(
                    part,
                    OUT_OF_RESOURCES,
                    f"free space on {store.root} is below [storage] min_free_mb "
                    f"({self.config.storage.min_free_mb} MiB)",
                )
                return
            part.handle.write(chunk[start:end])

        def part_end() -> None:
            part = current.pop()
            if part.handle is not None:
                part.handle.close()
                part.handle = None
            finished.append(part)

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": begin,
                "on_header_field": header_field,
                "on_header_value": header_value,
                "on_header_end": header_end,
                "on_headers_finished": headers_finished,
                "on_part_data": data,
                "on_part_end": part_end,
            },
        )

        async def drain() -> None:
            while finished:
                part = finished.pop(0)
                if part.handle is None and part.refused is None and not part.path.exists():
                    continue  # beyond stow_max_parts: never written
                outcome = await asyncio.to_thread(self._store_part, part, party, study, sending)
                outcomes.append(outcome)
                self._audit_instance(outcome, party)

        limit = web.stow_max_request_mb * MIB
        total = 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise StowRefused(
                        413, f"body over [web] stow_max_request_mb ({web.stow_max_request_mb})"
                    )
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise StowRefused(400, f"not a multipart/related body: {exc}") from None
                await drain()
                if parts > web.stow_max_parts:
                    raise StowRefused(
                        413, f"more than [web] stow_max_parts ({web.stow_max_parts}) parts"
                    )
            try:
                parser.finalize()
            except MultipartParseError as exc:
                raise StowRefused(400, f"not a multipart/related body: {exc}") from None
            await drain()
        finally:
            for part in [*current, *finished]:
                if part.handle is not None:
                    part.handle.close()
                part.path.unlink(missing_ok=True)
        if current:
            raise StowRefused(400, "the multipart body ends inside a part (no closing boundary)")

    @staticmethod
    def _refuse_part(part: _Part, status: int, reason: str) -> None:
        """Stop writing `part` (its file is removed) and fail it with `status`."""
        if part.handle is not None:
            part.handle.close()
            part.handle = None
        part.path.unlink(missing_ok=True)
        part.refused = (status, reason)

    def _store_part(
        self, part: _Part, party: Party, study: str | None, sending: Sending
    ) -> _Outcome:
        """Check and store one streamed part (in a worker thread: it fsyncs)."""
        path, calling_aet = part.path, party.calling_ae
        try:
            if part.refused is not None:
                raise Rejected(*part.refused)
            self.intake.check_open()
            header = read_instance_header(path)
            record = self.intake.record_of(header, path, calling_aet)
            outcome = _Outcome(SUCCESS, record.sop_class_uid, record.sop_uid, record.study_uid)
            if record.sop_class_uid not in _STORABLE:
                raise Rejected(SOP_CLASS_NOT_SUPPORTED, "SOP Class not accepted by this node")
            syntax = str(read_file_meta_info(path).get("TransferSyntaxUID", ""))
            if syntax not in _SYNTAXES:
                raise Rejected(
                    REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED,
                    f"Transfer Syntax {escape_text(syntax, 64)} not accepted by this node",
                )
            if study is not None and record.study_uid != study:
                raise Rejected(
                    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                    f"Study Instance UID {record.study_uid} is not the request's {study}",
                )
            stored, new = self.intake.store_record(
                path,
                record,
                header,
                sending,
                on_quota=lambda study_uid, reason: self.audit.study_quota(party, study_uid, reason),
            )
            outcome.new = new
            METRICS.cstore(calling_aet, SUCCESS, stored.path.stat().st_size)
            return outcome
        except Rejected as rejected:
            return self._failed(part, rejected.status, str(rejected), path)
        except Exception as exc:
            log.exception("STOW-RS part failed calling_ae=%s", calling_aet)
            return self._failed(part, PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}", path)
        finally:
            path.unlink(missing_ok=True)

    def _failed(self, part: _Part, status: int, reason: str, path: Path) -> _Outcome:
        """The outcome of a refused part, with whatever UIDs its header gave."""
        header: InstanceHeader | None = None
        if path.exists():
            try:
                header = read_instance_header(path)
            except Rejected:
                header = None
        elif part.head:  # not kept (too large, no space): the UIDs from its first bytes
            header = header_of_first_bytes(part.head)
        if header is None:
            return _Outcome(status, reason=reason)
        return _Outcome(
            status,
            _uid_or_empty(header.sop_class_uid),
            _uid_or_empty(header.sop_instance_uid),
            _uid_or_empty(header.study_instance_uid) or None,
            reason=reason,
        )

    def _audit_instance(self, outcome: _Outcome, party: Party) -> None:
        """Audit and log one part's outcome (DICOM Instances Transferred), as for a C-STORE."""
        calling_aet = party.calling_ae
        self.audit.instance_transferred(
            party,
            status=outcome.status,
            study_uid=outcome.study_uid,
            sop_class_uid=outcome.sop_class_uid or None,
            sop_instance_uid=outcome.sop_instance_uid or None,
            new=outcome.new,
            reason=outcome.reason or None,
        )
        if outcome.status == SUCCESS:
            log.info(
                "STOW-RS stored calling_ae=%s sop_instance_uid=%s study_uid=%s new=%s",
                calling_aet,
                outcome.sop_instance_uid,
                outcome.study_uid,
                outcome.new,
            )
        else:
            METRICS.cstore(calling_aet, outcome.status)
            log.warning(
                "STOW-RS refused status=0x%04X calling_ae=%s sop_instance_uid=%r reason=%s",
                outcome.status,
                calling_aet,
                outcome.sop_instance_uid,
                outcome.reason,
            )

    def _ended(
        self, party: Party, sending: Sending, outcomes: list[_Outcome], *, released: bool
    ) -> None:
        """Audit the request's end and release its studies (completion as after A-RELEASE)."""
        stored = sum(1 for o in outcomes if o.status == SUCCESS)
        self.audit.association_ended(
            party,
            "released" if released else "aborted",
            stored,
            len(outcomes) - stored,
        )
        if not sending.studies:
            return
        index = self.intake.index
        try:
            index.association_ended(
                sending.association_id, sending.studies, released=released, now=time.time()
            )
        except Exception:
            log.exception("STOW-RS request end not recorded (studies complete when quiet)")
            return
        if released and self._on_released is not None:
            try:
                self._on_released(self.config.pipeline.release_quiet_seconds)
            except Exception:
                log.exception("completion check after STOW-RS not scheduled")

    def _refused(
        self, party: Party, refused: StowRefused, outcomes: list[_Outcome] | None = None
    ) -> Response:
        log.warning(
            "STOW-RS request refused http=%d calling_ae=%s peer=%s reason=%s",
            refused.status,
            party.calling_ae,
            party.peer,
            refused,
        )
        body: dict[str, Any] = {"error": str(refused)}
        if outcomes:
            body["stored"] = sum(1 for o in outcomes if o.status == SUCCESS)
        return JSONResponse(body, status_code=refused.status)


def _boundary(content_type: str) -> bytes:
    """The boundary of a multipart/related; type="application/dicom" body, or StowRefused."""
    media, params = parse_options_header(content_type)
    if media.decode("latin-1").lower() != "multipart/related":
        raise StowRefused(
            415,
            f"Content-Type {escape_text(content_type, 128)!s}: expected multipart/related; "
            f'type="{DICOM}"',
        )
    kind = params.get(b"type", b"").decode("latin-1").lower()
    if kind and kind != DICOM:
        raise StowRefused(415, f"multipart/related of type {kind!r}: only {DICOM} is accepted")
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise StowRefused(400, "multipart/related without a boundary parameter")
    return boundary


def _uid_or_empty(value: object) -> str:
    try:
        return require_uid("UID", value)
    except InvalidUIDError:
        return ""


def _response(outcomes: list[_Outcome]) -> Response:
    """The Store Instances Response Module (PS3.18 10.5.3) and its HTTP status."""
    stored = [o for o in outcomes if o.status == SUCCESS]
    failed = [o for o in outcomes if o.status != SUCCESS]
    body: dict[str, Any] = {}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(o) for o in stored]}
    if failed:
        items = []
        for o in failed:
            item = _reference(o)
            item["00081197"] = {"vr": "US", "Value": [o.status]}
            items.append(item)
        body["00081198"] = {"vr": "SQ", "Value": items}
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def _reference(outcome: _Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for tag, uid in (("00081150", outcome.sop_class_uid), ("00081155", outcome.sop_instance_uid)):
        item[tag] = {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"}
    return item
