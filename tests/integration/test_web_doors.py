"""The console's doors (issue 17, item 3), over HTTP against the real web server (uvicorn on
loopback, as `lungnode serve` runs it): security headers on every page and JSON, logout that
ends the session on the server, failed logins and Bearer tokens rate-limited per address and
audited as ATNA User Authentication, named users with salted password hashes, and the start-up
refusal of plain HTTP beyond loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from audit_reading import audit_events

from scp_node.app.service import WebServer
from scp_node.config import ConfigError, load_config
from scp_node.credentials import hash_password, verify_password, weak_token_reason
from scp_node.ops.health import NodeState
from scp_node.web.guard import MAX_FAILURES
from storage.index import open_index

TOKEN = "Zk3v9QmX2pLr7TtB4nW8yHc6"
PASSWORD = "a long console passphrase"
PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Console:
    url: str
    audit_log: Path

    def request(
        self,
        path: str,
        *,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        """(status, headers with lower-case names, body); redirects are not followed."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {})
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=10) as rsp:
                return rsp.status, _lower(rsp.headers), rsp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, _lower(exc.headers), exc.read().decode()

    def login(self, name: str, secret: str) -> tuple[int, str]:
        """(status, the session cookie set, or "")."""
        status, headers, _ = self.request("/login", data={"name": name, "token": secret})
        return status, headers.get("set-cookie", "").split(";")[0]

    def audit(self) -> list[dict[str, Any]]:
        return audit_events(self.audit_log)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.fixture
def console(
    tmp_path: Path, make_config: Callable[..., Any], free_port: Callable[[], int]
) -> Iterator[Console]:
    port = free_port()
    config = make_config(
        web__token=TOKEN,
        web__port=port,
        web__users=f"alice:{hash_password(PASSWORD)}",
        storage__min_free_mb=1,
        security__audit_log=tmp_path / "audit.log",
    )
    index = open_index(config.storage.database_url)
    node = NodeState(config=config, index=index, role="receiver", scp_port=lambda: 11112)
    server = WebServer(config, node)
    server.start()
    try:
        yield Console(f"http://127.0.0.1:{port}", tmp_path / "audit.log")
    finally:
        server.stop()


def _assert_security_headers(headers: dict[str, str], path: str, cached: bool = False) -> None:
    policy = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, path
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, path
    assert headers.get("x-content-type-options") == "nosniff", path
    assert headers.get("referrer-policy") == "no-referrer", path
    if not cached:
        assert headers.get("cache-control") == "no-store", path


def test_security_headers_on_every_page_and_json(console: Console) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path, headers, expected in [
        ("/livez", {}, 200),
        ("/studies", {}, 401),  # JSON refusal
        ("/login", {}, 200),
        ("/studies", bearer, 200),
        ("/deliveries", bearer, 200),
        ("/node", bearer, 200),
        ("/readyz", bearer, 200),
        ("/metrics", bearer, 200),
        ("/studies/1.2.3", bearer, 404),
    ]:
        status, got, _ = console.request(path, headers=headers)
        assert status == expected, path
        _assert_security_headers(got, path)
    status, got, _ = console.request("/static/console.css")
    assert status == 200
    _assert_security_headers(got, "/static/console.css", cached=True)


def test_templates_hold_no_inline_script_or_style() -> None:
    """The policy forbids inline script and style: no template may need them."""
    folder = PROJECT / "scp_node" / "web" / "templates"
    for template in folder.glob("*.html"):
        text = template.read_text().lower()
        for banned in ("<script", "<style", " style=", "javascript:", " onclick=", " onload="):
            assert banned not in text, f"{template.name}: {banned}"


def test_a_cookie_copied_before_logout_is_refused_after_it(console: Console) -> None:
    status, cookie = console.login("Ada", TOKEN)
    assert status == 303 and cookie.startswith("lungnode_session=")
    copied = {"Cookie": cookie}
    assert console.request("/studies", headers=copied)[0] == 200
    assert console.request("/logout", data={}, headers=copied)[0] == 303
    status, _, _ = console.request("/studies", headers=copied)
    assert status == 401, "the copied cookie still opens the console after logout"
    status, headers, _ = console.request("/studies", headers={**copied, "Accept": "text/html"})
    assert status == 303 and headers["location"].startswith("/login")
    logout = [e for e in console.audit() if e.get("Event") == "user-logout"]
    assert [e["ActiveParticipant"][0]["UserID"] for e in logout] == ["Ada"]


def test_failed_logins_are_rate_limited_per_address_and_audited(console: Console) -> None:
    for attempt in range(MAX_FAILURES - 1):
        assert console.login(f"mallory{attempt}", "wrong-token")[0] == 401
    status, headers, _ = console.request("/login", data={"name": "mallory", "token": "x"})
    assert status == 429 and int(headers["retry-after"]) > 0
    # locked out: even the right token and the Bearer token are refused for now
    assert console.login("Ada", TOKEN)[0] == 429
    assert console.request("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 429
    assert console.request("/livez")[0] == 200
    logins = [e for e in console.audit() if e.get("Event") == "user-login"]
    assert len(logins) == MAX_FAILURES
    for event in logins:
        assert event["EventID"]["displayName"] == "User Authentication"
        assert event["EventTypeCode"]["displayName"] == "Login"
        assert event["EventOutcomeIndicator"] == 4
        assert event["ActiveParticipant"][0]["NetworkAccessPointID"] == "127.0.0.1"
    names = [e["ActiveParticipant"][0]["UserID"] for e in logins]
    assert names == [f"mallory{i}" for i in range(MAX_FAILURES - 1)] + ["mallory"]
    assert logins[-1]["Detail"]["locked_out"] is True


def test_failed_bearer_tokens_are_rate_limited_and_audited(console: Console) -> None:
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    statuses = [console.request("/metrics", headers=wrong)[0] for _ in range(MAX_FAILURES)]
    assert statuses == [401] * (MAX_FAILURES - 1) + [429]
    assert console.request("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 429
    failed = [e for e in console.audit() if e.get("Event") == "user-login"]
    assert len(failed) == MAX_FAILURES
    assert {e["ActiveParticipant"][0]["UserID"] for e in failed} == {"bearer token"}
    assert {e["EventOutcomeIndicator"] for e in failed} == {4}


def test_named_user_logs_in_with_a_password_and_the_audit_says_who(console: Console) -> None:
    assert console.login("alice", TOKEN)[0] == 401, "the shared token does not log in as alice"
    status, cookie = console.login("alice", PASSWORD)
    assert status == 303
    page = console.request("/studies", headers={"Cookie": cookie})
    assert page[0] == 200 and "alice" in page[2]
    logins = [e for e in console.audit() if e.get("Event") == "user-login"]
    assert [(e["ActiveParticipant"][0]["UserID"], e["EventOutcomeIndicator"]) for e in logins] == [
        ("alice", 4),
        ("alice", 0),
    ]
    assert logins[1]["Detail"]["method"] == "password"
    assert PASSWORD not in console.audit_log.read_text()


def test_hash_password_cli_prints_a_salted_hash(tmp_path: Path) -> None:
    def run() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "scp_node", "hash-password", "--user", "bob"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    first, second = run(), run()
    assert first.startswith("bob:scrypt$") and first != second  # a new salt each time
    assert verify_password(PASSWORD, first.split(":", 1)[1])
    assert not verify_password("another passphrase", first.split(":", 1)[1])
    assert PASSWORD not in first


def test_plain_http_beyond_loopback_is_refused_at_start_up(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LUNGNODE__")},
        "PYTHONPATH": str(PROJECT),
        "LUNGNODE__STORAGE__ROOT": str(tmp_path / "store"),
        "LUNGNODE__WEB__TOKEN": TOKEN,
        "LUNGNODE__WEB__HOST": "0.0.0.0",
    }
    config = str(PROJECT / "config.ini")
    proc = subprocess.run(
        [sys.executable, "-m", "scp_node", "serve", "-c", config],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2 and "[web] host" in proc.stderr, proc.stderr
    assert "insecure_http" in proc.stderr
    # said explicitly: allowed, with a WARNING in check-config
    env["LUNGNODE__WEB__INSECURE_HTTP"] = "yes"
    check = subprocess.run(
        [sys.executable, "-m", "scp_node", "check-config", "-c", config, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    findings = json.loads(check.stdout)["findings"]
    assert any(
        f["level"] == "WARNING" and f["subject"] == "[web] insecure_http" for f in findings
    ), findings


def test_weak_token_is_a_warning(tmp_path: Path) -> None:
    for weak in ("aaaaaaaaaaaaaaaaaaaa", "passwordpassword123", "abababababababababab"):
        assert weak_token_reason(weak) is not None, weak
    assert weak_token_reason(TOKEN) is None
    assert weak_token_reason("3f9c1a7be04d52a8c6e1f0b9d7a4c2e5") is None  # openssl rand -hex 16
    from scp_node.app.check_config import check_config

    environ = {
        "LUNGNODE__STORAGE__ROOT": str(tmp_path / "store"),
        "LUNGNODE__WEB__TOKEN": "lungnode-password-1",
    }
    findings = check_config(PROJECT / "config.ini", environ, echo_timeout=1)
    assert [(f.level, f.subject) for f in findings if f.check == "web"] == [
        ("WARNING", "[web] token")
    ]


def test_loopback_and_tls_hosts_need_no_insecure_http(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        environ = {"LUNGNODE__WEB__TOKEN": TOKEN, "LUNGNODE__WEB__HOST": host}
        assert load_config(None, environ).web.host == host
    with pytest.raises(ConfigError, match=r"\[web\] host"):
        load_config(None, {"LUNGNODE__WEB__TOKEN": TOKEN, "LUNGNODE__WEB__HOST": "10.0.0.5"})
    with pytest.raises(ConfigError, match=r"\[web\] users"):
        load_config(None, {"LUNGNODE__WEB__USERS": "alice:plaintext-password"})


def test_insecure_http_and_a_weak_token_are_logged_at_start(
    tmp_path: Path, make_config: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The console is built (not started: nothing listens beyond loopback in tests) with plain
    HTTP on all interfaces, said explicitly, and a guessable token: two WARNINGs."""
    config = make_config(
        web__token="lungnode-password-1",
        web__host="0.0.0.0",
        web__insecure_http=True,
        security__audit_log=tmp_path / "audit.log",
    )
    node = NodeState(
        config=config,
        index=open_index(config.storage.database_url),
        role="receiver",
        scp_port=lambda: 11112,
    )
    with caplog.at_level("WARNING", logger="lungnode"):
        WebServer(config, node)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("[web] insecure_http:") for m in warned), warned
    assert any(m.startswith("[web] token:") for m in warned), warned
