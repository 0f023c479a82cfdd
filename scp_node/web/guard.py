"""The console's doors: security headers on every response, sessions the server can end, and a
limit on failed logins and Bearer tokens per client address.

- Headers (`SecurityHeaders`): a Content-Security-Policy that allows scripts and styles from the
  console itself only (no inline script or style attribute: the templates have none) and no
  framing (`frame-ancestors 'none'`); `X-Content-Type-Options: nosniff`;
  `Referrer-Policy: no-referrer`; `Cache-Control: no-store` on everything but /static (pages,
  JSON, pictures and result files hold patient data).
- Sessions (`Sessions`): the signed cookie carries only a random session id; the server keeps the
  live ids, so logout (or a restart) ends the session for every copy of the cookie.
- Failures (`FailureLimiter`): after MAX_FAILURES failed logins or Bearer tokens from one client
  address within WINDOW_SECONDS, that address is refused (429, Retry-After) for LOCKOUT_SECONDS,
  whatever it sends; each failure is audited (ATNA User Authentication) by the caller.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from typing import Any

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
CACHEABLE_PREFIX = "/static/"  # the stylesheet: no patient data

MAX_FAILURES = 5
WINDOW_SECONDS = 300.0
LOCKOUT_SECONDS = 300.0
SESSION_SECONDS = 12 * 3600


class SecurityHeaders:
    """ASGI middleware setting SECURITY_HEADERS (and Cache-Control: no-store but under
    /static) on every HTTP response, replacing any the app set."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(SECURITY_HEADERS)
        if not scope["path"].startswith(CACHEABLE_PREFIX):
            headers["cache-control"] = "no-store"
        ours = {name.encode("latin-1") for name in headers}

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in ours]
                added = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Sessions:
    """The live console sessions by id, each with its user and expiry; thread-safe."""

    def __init__(self, lifetime: float = SESSION_SECONDS) -> None:
        self._lifetime = lifetime
        self._live: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        """A new session id for `user`."""
        sid = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._live = {k: v for k, v in self._live.items() if v[1] > now}
            self._live[sid] = (user, now + self._lifetime)
        return sid

    def user(self, sid: object) -> str | None:
        """The user of the live session `sid`, or None (unknown, ended or expired)."""
        if not isinstance(sid, str):
            return None
        with self._lock:
            found = self._live.get(sid)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    def end(self, sid: object) -> None:
        """End the session `sid` (logout): its cookie is refused from now on, every copy."""
        if isinstance(sid, str):
            with self._lock:
                self._live.pop(sid, None)


class FailureLimiter:
    """Failed authentications per client address, and the addresses locked out for now."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        lockout: float = LOCKOUT_SECONDS,
    ) -> None:
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it is not locked out."""
        now = time.monotonic()
        with self._lock:
            until = self._locked.get(client)
            if until is None:
                return None
            if until <= now:
                del self._locked[client]
                return None
            return until - now

    def failed(self, client: str) -> bool:
        """Count one failure of `client`; True when that locks it out."""
        now = time.monotonic()
        with self._lock:
            recent = self._failures.setdefault(client, deque())
            recent.append(now)
            while recent and recent[0] <= now - self.window:
                recent.popleft()
            if len(recent) < self.max_failures:
                return False
            self._locked[client] = now + self.lockout
            del self._failures[client]
            if len(self._failures) > 10000:  # many addresses: forget the quiet ones
                self._failures = {
                    k: v for k, v in self._failures.items() if v and v[-1] > now - self.window
                }
            return True

    def succeeded(self, client: str) -> None:
        """Forget `client`'s failures after a successful login."""
        with self._lock:
            self._failures.pop(client, None)
