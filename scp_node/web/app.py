"""The console: a web page for the PACS administrator, served inside `lungnode serve`.

Stack, and why: Starlette (ASGI routing, sessions, static files) under uvicorn, with Jinja2
templates rendered on the server. Every page is plain HTML with a stylesheet: no JavaScript
build step, no client framework, nothing to bundle or audit from npm, and pages that work in
any browser a hospital locks down. Pages that change refresh themselves with a
`<meta http-equiv="refresh">`. Starlette rather than FastAPI: the console serves pages, not a
typed JSON API, and Starlette is the part of FastAPI it would use. Jinja2 autoescaping is on
for every template, so whatever a peer put in an AE title, an Error Comment or a Series
Description is shown as text, never markup.

Authentication: every request but /livez needs [web] token, as `Authorization: Bearer <token>`
(Prometheus, scripts) or typed once into the login form, or the name and password of one of
[web] users (salted scrypt hashes, scp_node.credentials); a login sets a signed session cookie
(HttpOnly, SameSite=Strict, Secure under TLS) that carries only a session id the server keeps:
logout ends it for every copy of the cookie. The name given at login is who the audit log names
for the actions taken in the session ("bearer token" for Bearer requests); a configured user's
name logs in with that user's password only. Logins, logouts and failed Bearer tokens are
audited as ATNA User Authentication with the client address; failures are rate-limited per
address, and every response carries the security headers (scp_node.web.guard).

STOW-RS (`POST /dicom-web/studies[/{study}]`, scp_node.web.stow) has its own credentials
([web] stow_token, or [web] stow_users by HTTP Basic), not the console's token; failures count
towards the same lock-out and are audited the same way.

Actions (resend, analyse again, mark complete, pause/resume) are two steps: a GET shows what
will happen and a form; its POST carries the session's CSRF token (checked for cookie sessions;
Bearer requests carry no ambient credential) and does it, writes the audit log, and redirects.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from classifier.results.histology_gate import histology_shown
from scp_node.credentials import verify_password
from scp_node.logs import escape_text
from scp_node.metrics import METRICS, free_bytes, version
from scp_node.ops.audit import OUTCOME_MINOR_FAILURE, OUTCOME_SUCCESS, AuditLog
from scp_node.ops.health import NodeState, readiness
from scp_node.web import findings
from scp_node.web.guard import FailureLimiter, SecurityHeaders, Sessions
from scp_node.web.stow import StowIntake
from storage.console import ANALYSIS_PAUSED, INTAKE_PAUSED, NO_DESTINATION
from storage.redaction import MASK, redact_database_url
from storage.states import StudyState
from storage.uids import InvalidUIDError

log = logging.getLogger("lungnode.web")
HERE = Path(__file__).resolve().parent
OPEN_PATHS = ("/livez", "/login", "/static/")
STOW_PATH = "/dicom-web/"
SECRET_KEYS = ("token", "password", "private_key")

# action name -> (title, what it does, the parameter it takes)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "resend": (
        "Resend a dead letter",
        "Queue this result object for sending again now.",
        "outbox_id",
    ),
    "resend_destination": (
        "Resend every dead letter of a destination",
        "Queue every dead-letter result object of this destination for sending again now.",
        "destination",
    ),
    "reanalyse": (
        "Analyse the study again",
        "Analyse the study again as a new version; its report names the previous one.",
        "study_uid",
    ),
    "mark_complete": (
        "Mark the study complete",
        "Stop waiting for more instances: the study is READY and queued for analysis now.",
        "study_uid",
    ),
    "pause_intake": (
        "Pause intake",
        "Answer every C-STORE (and STOW-RS instance) with 0xA700 (Out of Resources) until resumed.",
        "",
    ),
    "resume_intake": ("Resume intake", "Accept C-STOREs again.", ""),
    "pause_analysis": (
        "Pause analysis",
        "Stop claiming analysis jobs until resumed (receiving and sending go on).",
        "",
    ),
    "resume_analysis": ("Resume analysis", "Claim analysis jobs again.", ""),
}


def _when(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(epoch: float | None) -> str:
    if not epoch:
        return ""
    s = max(0, int(time.time() - float(epoch)))
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def masked_config(config: Any) -> dict[str, dict[str, str]]:
    """The configuration as text, section by section, secrets masked (storage.redaction)."""
    out: dict[str, dict[str, str]] = {}
    for section in ("node", "security", "storage", "pipeline", "classifier", "sender", "web"):
        value = getattr(config, section)
        fields = (
            asdict(value) if is_dataclass(value) and not isinstance(value, type) else vars(value)
        )
        rows: dict[str, str] = {}
        for key, v in fields.items():
            text = ", ".join(map(str, v)) if isinstance(v, tuple | list) else str(v)
            if key == "database_url":
                text = redact_database_url(text)
            elif any(word in key for word in SECRET_KEYS) and key != "tls_private_key":
                text = MASK if text else ""
            rows[key] = text
        out[section] = rows
    out["destinations"] = {name: str(d) for name, d in config.destinations.items()}
    out["routing"] = {"send_results_to": ", ".join(config.send_results_to)}
    return out


class Console:
    """The Starlette app over one running node."""

    def __init__(self, node: NodeState, audit: AuditLog | None = None) -> None:
        self.node = node
        self.config = node.config
        self.index = node.index
        self.token = node.config.web.token
        self.users = {name.casefold(): hashed for name, hashed in node.config.web.users}
        self.audit = audit
        self.sessions = Sessions()
        self.failures = FailureLimiter()
        self.stow = (
            StowIntake(
                node.config,
                node.intake,
                audit,
                on_released=node.on_released,
                in_flight=node.stow_requests,
            )
            if node.intake is not None and audit is not None and node.config.web.stow_enabled
            else None
        )
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.env.filters["when"] = _when
        self.env.filters["ago"] = _ago
        routes = [
            Route("/livez", self.livez),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", lambda r: RedirectResponse("/studies", 303)),
            Route("/studies", self.studies),
            Route("/studies/{uid}", self.study),
            Route("/studies/{uid}/findings", self.findings_page),
            Route("/studies/{uid}/findings/{sop}/{segment:int}.png", self.picture),
            Route("/results/{sop}.dcm", self.download),
            Route("/deliveries", self.deliveries),
            Route("/node", self.node_page),
            Route("/actions/{name}", self.action, methods=["GET", "POST"]),
            Route("/dicom-web/studies", self.stow_rs, methods=["POST"]),
            Route("/dicom-web/studies/{study}", self.stow_rs, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        # A new key per start: sessions end when the node restarts (log in again).
        self.app = Starlette(
            routes=routes,
            middleware=[
                Middleware(SecurityHeaders),  # outermost: on every response, errors included
                Middleware(
                    SessionMiddleware,
                    secret_key=secrets.token_hex(32),
                    session_cookie="lungnode_session",
                    max_age=12 * 3600,
                    same_site="strict",
                    https_only=node.config.web.tls,
                ),
                Middleware(_AuthMiddleware, console=self),  # inside: it reads the session
            ],
        )

    # ---- helpers ---------------------------------------------------------------------------

    def bearer(self, request: Request) -> bool | None:
        """True for the right Bearer token, False for a wrong one, None when none is sent."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def bearer_ok(self, request: Request) -> bool:
        return self.bearer(request) is True

    def session_user(self, request: Request) -> str | None:
        """The user of the request's session while the server still holds it (not logged out,
        not expired, not from before a restart)."""
        return self.sessions.user(request.session.get("sid"))

    def actor(self, request: Request) -> str:
        if self.bearer_ok(request):
            return "bearer token"
        return self.session_user(request) or "?"

    def authentication_failed(self, request: Request, user: str, how: str) -> bool:
        """Count and audit one failed login or Bearer token; True when it locks the client
        address out."""
        client = _client_address(request)
        locked = self.failures.failed(client)
        log.warning("console %s refused client=%s locked_out=%s", how, client, locked)
        if self.audit is not None:
            self.audit.user_authentication(
                user, client, OUTCOME_MINOR_FAILURE, method=how, locked_out=locked
            )
        return locked

    def page(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        flags = {}
        try:
            flags = self.index.console.flags()
        except Exception:
            pass
        body = self.env.get_template(template).render(
            request=request,
            user=self.actor(request),
            csrf=request.session.get("csrf", ""),
            flash=request.session.pop("flash", None),
            refresh=self.config.web.refresh_seconds,
            intake_paused=flags.get(INTAKE_PAUSED, {}).get("on", False),
            analysis_paused=flags.get(ANALYSIS_PAUSED, {}).get("on", False),
            draining=self.node.draining.is_set(),
            version=version(),
            ae_title=self.config.node.ae_title,
            **values,
        )
        return HTMLResponse(body, status_code=status)

    # ---- health and metrics ----------------------------------------------------------------

    async def livez(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        ready, checks = readiness(self.node)
        failing = {k: v for k, v in checks.items() if not v["ok"]}
        body = {"status": "ready" if ready else "not ready", "failing": failing, "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(METRICS.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- login -----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        error = ""
        if request.method == "POST":
            form = await request.form()
            secret = str(form.get("token", ""))
            name = str(form.get("name", "")).strip()[:64] or "administrator"
            method = "password" if name.casefold() in self.users else "token"
            if method == "password":  # a configured user: that user's password only
                ok = verify_password(secret, self.users[name.casefold()])
            else:
                ok = hmac.compare_digest(secret.encode(), self.token.encode())
            if ok:
                client = _client_address(request)
                self.failures.succeeded(client)
                request.session.clear()
                request.session.update(
                    user=name, sid=self.sessions.start(name), csrf=secrets.token_urlsafe(24)
                )
                log.info("console login user=%r by=%s client=%s", name, method, client)
                if self.audit is not None:
                    self.audit.user_authentication(name, client, OUTCOME_SUCCESS, method=method)
                return RedirectResponse("/studies", 303)
            if self.authentication_failed(request, name, f"login by {method}"):
                return _locked_out(request, self.failures.lockout)
            error = "Wrong name, password or token."
        return self.page(request, "login.html", 401 if error else 200, error=error)

    async def logout(self, request: Request) -> Response:
        user = self.session_user(request)
        self.sessions.end(request.session.get("sid"))
        request.session.clear()
        if user is not None and self.audit is not None:
            self.audit.user_authentication(
                user, _client_address(request), OUTCOME_SUCCESS, logout=True
            )
        return RedirectResponse("/login", 303)

    # ---- pages -----------------------------------------------------------------------------

    async def studies(self, request: Request) -> Response:
        q = {
            k: request.query_params.get(k, "")
            for k in ("accession", "patient_id", "study_uid", "date", "sender", "state")
        }
        rows = self.index.console.search(
            accession=q["accession"],
            patient_id=q["patient_id"],
            study_uid=q["study_uid"],
            study_date=q["date"],
            sender=q["sender"],
            state=q["state"],
        )
        return self.page(
            request, "studies.html", q=q, studies=rows, states=[s.value for s in StudyState]
        )

    def _study_or_404(self, uid: str) -> dict[str, Any] | None:
        try:
            return self.index.console.study(uid)
        except InvalidUIDError:
            return None

    async def study(self, request: Request) -> Response:
        study = self._study_or_404(request.path_params["uid"])
        if study is None:
            return self.page(request, "message.html", 404, title="No such study", text="")
        return self.page(request, "study.html", s=study, timeline=timeline(study))

    async def findings_page(self, request: Request) -> Response:
        study = self._study_or_404(request.path_params["uid"])
        if study is None:
            return self.page(request, "message.html", 404, title="No such study", text="")
        latest = max((r["version"] for r in study["results_of_study"]), default=None)
        reports, pictures = [], []
        # The rule of the result objects ([results] histology); a console without the model
        # loaded (a receiver) cannot tell a trusted model and shows none under auto.
        model = self.node.model()
        mode = self.config.results.histology
        show_histology = mode == "on" or (
            mode == "auto" and model is not None and histology_shown(mode, model)
        )
        for r in study["results_of_study"]:
            if r["version"] != latest:
                continue
            try:
                if r["kind"] == "SR":
                    reports.append(findings.measurements(Path(r["path"]), show_histology))
                elif r["kind"] == "SEG":
                    for number, label in findings.segments(Path(r["path"])):
                        pictures.append((r["sop_uid"], number, label))
            except Exception as exc:  # a file gone (retention) or unreadable: say so
                reports.append(
                    {"title": r["kind"], "description": f"cannot read: {exc}", "groups": []}
                )
        return self.page(
            request,
            "findings.html",
            s=study,
            reports=reports,
            pictures=pictures,
            latest=latest,
            disclaimer=findings.DISCLAIMER,
        )

    async def picture(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        try:
            found = self.index.console.result_path(sop)
        except InvalidUIDError:
            found = None
        if found is None or found[1] != "SEG":
            return PlainTextResponse("no such segmentation", 404)
        try:
            png = findings.lesion_picture(
                Path(found[0]), self.index.console.instance_path, request.path_params["segment"]
            )
        except (KeyError, OSError) as exc:
            return PlainTextResponse(f"no picture: {exc}", 404)
        return Response(
            png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
        )

    async def download(self, request: Request) -> Response:
        sop = request.path_params["sop"]
        try:
            found = self.index.console.result_path(sop)
        except InvalidUIDError:
            found = None
        if found is None or not Path(found[0]).is_file():
            return PlainTextResponse("no such result object", 404)
        return FileResponse(
            found[0], media_type="application/dicom", filename=f"{found[1]}-{sop}.dcm"
        )

    async def deliveries(self, request: Request) -> Response:
        per_destination = self.index.console.deliveries()
        for name in self.config.destinations:
            per_destination.setdefault(name, {"states": {}, "last_at": None, "last_error": None})
        return self.page(
            request,
            "deliveries.html",
            destinations=per_destination,
            configured={n.casefold(): str(d) for n, d in self.config.destinations.items()},
            protocols={
                n.casefold(): d.protocol + (" + Storage Commitment" if d.commit else "")
                for n, d in self.config.destinations.items()
            },
            unfinished=self.index.console.unfinished(),
            now=time.time(),
            dead=self.index.console.dead_letters(),
        )

    async def node_page(self, request: Request) -> Response:
        ready, checks = readiness(self.node)
        counts = self.index.console.counts()
        model = self.node.model()
        free = free_bytes(Path(self.config.storage.root))
        from scp_node.pipeline.retention import run_retention

        try:  # the same dry run as `lungnode retention --dry-run`
            retention = run_retention(self.config, self.index, dry_run=True, actor="console")
        except Exception as exc:
            log.warning("retention dry run for the Node page failed: %s", exc)
            retention = None
        return self.page(
            request,
            "node.html",
            retention=retention,
            ready=ready,
            checks=checks,
            counts=counts,
            model=model,
            gpus=self.node.gpus,
            associations=self.node.associations(),
            free_mb=free // 2**20,
            min_free_mb=self.config.storage.min_free_mb,
            role=self.node.role,
            pid=os.getpid(),
            started=self.node.started_at,
            config=masked_config(self.config),
            flags=self.index.console.flags(),
        )

    # ---- STOW-RS intake --------------------------------------------------------------------

    async def stow_rs(self, request: Request) -> Response:
        """STOW-RS: authenticate the DICOMweb client, map it to its calling AE, store."""
        if self.stow is None:
            why = (
                "this process does not receive (role worker)"
                if self.config.web.stow_enabled
                else "STOW-RS intake is off: set [web] stow_token or stow_users"
            )
            return JSONResponse({"error": why}, status_code=503 if "role" in why else 404)
        calling_aet = self.stow.calling_aet(request)
        if calling_aet is None or calling_aet is False:
            if calling_aet is False and self.authentication_failed(
                request, "stow-rs client", "stow-rs credentials"
            ):
                return _locked_out(request, self.failures.lockout)
            return JSONResponse(
                {"error": "unauthorized: send [web] stow_token as Bearer, or a stow_users login"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="lungnode", Basic realm="lungnode"'},
            )
        self.failures.succeeded(_client_address(request))
        if not self.stow.allowed(calling_aet):
            party = self.stow.party(request, calling_aet, secrets.token_hex(8))
            reason = (
                f"calling AE {escape_text(calling_aet, 16)} is not on "
                "[security] allowed_calling_aets"
            )
            if self.audit is not None:
                self.audit.association_rejected(party, reason)
            log.warning("STOW-RS refused http=403 client=%s: %s", party.peer, reason)
            return JSONResponse({"error": reason}, status_code=403)
        return await self.stow.post(request, calling_aet)

    # ---- actions ---------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ACTIONS:
            return self.page(request, "message.html", 404, title="No such action", text=name)
        title, what, param = ACTIONS[name]
        if request.method == "GET":
            value = request.query_params.get(param, "") if param else ""
            return self.page(
                request,
                "confirm.html",
                name=name,
                title=title,
                what=what,
                param=param,
                value=value,
                back=_page_after(param, value),
            )
        form = await request.form()
        if not self.bearer_ok(request):
            sent = str(form.get("csrf", ""))
            if not sent or not hmac.compare_digest(sent, str(request.session.get("csrf", ""))):
                return self.page(
                    request,
                    "message.html",
                    403,
                    title="Refused",
                    text="The form is stale or not from this console; open the page again.",
                )
        if form.get("confirm") != "yes":
            return self.page(
                request, "message.html", 400, title="Not confirmed", text="Nothing was done."
            )
        value = str(form.get(param, "")) if param else ""
        actor = self.actor(request)
        try:
            changed = self._perform(name, value, actor)
        except (InvalidUIDError, ValueError) as exc:
            changed, error = 0, str(exc)
        else:
            error = ""
        outcome = OUTCOME_SUCCESS if changed else OUTCOME_MINOR_FAILURE
        if self.audit is not None:
            self.audit.operator_action(
                actor,
                _client(request),
                name,
                outcome,
                target=value,
                changed=changed,
                error=error or None,
            )
        log.info("console action=%s target=%s by=%r changed=%d", name, value, actor, changed)
        text = f"{title}: {changed} changed." if changed else f"{title}: nothing to do. {error}"
        if request.headers.get("accept", "").startswith("application/json") or self.bearer_ok(
            request
        ):
            return JSONResponse(
                {"action": name, "target": value, "changed": changed, "error": error}
            )
        request.session["flash"] = text
        return RedirectResponse(_page_after(param, value), 303)

    def _perform(self, name: str, value: str, actor: str) -> int:
        c = self.index.console
        if name == "resend":
            return int(c.resend_one(value, actor))
        if name == "resend_destination":
            return int(c.resend_destination(value, actor))
        if name == "reanalyse":
            return int(c.analyse_again(value, actor))
        if name == "mark_complete":
            return int(c.mark_complete(value, actor))
        flag = INTAKE_PAUSED if name.endswith("intake") else ANALYSIS_PAUSED
        on = name.startswith("pause")
        if c.flag_on(flag) == on:
            return 0
        c.set_flag(flag, on, actor)
        return 1


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


def _page_after(param: str, value: str) -> str:
    """The page an action on `param` = `value` goes back to (done or cancelled)."""
    if param == "study_uid":
        return f"/studies/{quote(value, safe='')}"
    return "/deliveries" if param in ("outbox_id", "destination") else "/node"


def _client_address(request: Request) -> str:
    """The client's address, without its port: what failures are counted by."""
    return request.client.host if request.client else "?"


def _locked_out(request: Request, seconds: float) -> Response:
    """429 for a client address locked out after too many failed authentications."""
    return JSONResponse(
        {"error": "too many failed logins or tokens from this address; try again later"},
        status_code=429,
        headers={"Retry-After": str(max(1, int(seconds)))},
    )


def timeline(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of the study in time order: instances per sender, then the events table."""
    rows: list[dict[str, Any]] = []
    for s in study["instances_by_sender"]:
        rows.append(
            {
                "at": s["first_at"],
                "kind": "instances",
                "version": None,
                "actor": None,
                "text": f"{s['instances']} instance(s) from {s['calling_ae']}, "
                f"{_when(s['first_at'])} to {_when(s['last_at'])}",
            }
        )
    for e in study["events"]:
        d = dict(e["detail"])
        text = ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if v not in (None, "", []))
        if e["duration_s"] is not None:
            text = f"{e['stage']} {e['duration_s']:.1f} s" + (f"; {text}" if text else "")
        if "next_attempt_at" in d:
            text += f" (next retry {_when(d['next_attempt_at'])})"
        rows.append(
            {
                "at": e["at"],
                "kind": e["kind"],
                "version": e["version"],
                "actor": e["actor"],
                "text": text,
            }
        )
    rows.sort(key=lambda r: r["at"] or 0.0)
    return rows


class _AuthMiddleware:
    """401 without the token (Bearer) or a logged-in session; pages redirect to the login."""

    def __init__(self, app: Any, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/livez" or path.startswith("/static/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        console = self.console
        wait = console.failures.retry_after(_client_address(request))
        if wait is not None:
            await _locked_out(request, wait)(scope, receive, send)
            return
        if path.startswith(STOW_PATH):  # its own credentials (Console.stow_rs)
            await self.app(scope, receive, send)
            return
        bearer = console.bearer(request)
        if bearer is False:
            locked = console.authentication_failed(request, "bearer token", "bearer token")
            if locked:
                await _locked_out(request, console.failures.lockout)(scope, receive, send)
                return
        if path.startswith(OPEN_PATHS) or bearer or console.session_user(request):
            await self.app(scope, receive, send)
            return
        wants_html = "text/html" in request.headers.get("accept", "")
        if wants_html and request.method == "GET":
            response: Response = RedirectResponse("/login?" + urlencode({"next": path}), 303)
        else:
            response = JSONResponse(
                {"error": "unauthorized: send Authorization: Bearer <[web] token>"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="lungnode"'},
            )
        await response(scope, receive, send)


def build_app(node: NodeState, audit: AuditLog | None = None) -> Starlette:
    """The ASGI app of the console for `node`."""
    return Console(node, audit).app


__all__ = ["NO_DESTINATION", "build_app", "timeline"]
