"""`/readyz`: may this process take work? Each check says why not; `/livez` checks nothing.

Checks: `database` (a real query, answered within DATABASE_CHECK_SECONDS), `scp_listening` (a
receiver role's SCP accepts TCP connections), `model_loaded` (a worker role has its model),
`disk` (free space on the store above [storage] min_free_mb), `intake_paused` /
`analysis_paused` (the console's switches), and `draining` (SIGTERM received: the process is
stopping). A load balancer or Kubernetes stops sending work to a process that is not ready; it
answers 503 with the failing checks as JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scp_node.metrics import free_bytes
from storage.console import ANALYSIS_PAUSED, INTAKE_PAUSED


class InFlight:
    """How many requests are being received now (`with in_flight:` around each one): what
    the analysis yields to besides associations (STOW-RS requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def __enter__(self) -> None:
        with self._lock:
            self._count += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._count -= 1

    def __call__(self) -> int:
        return self._count


@dataclass
class NodeState:
    """What the web layer knows of the running node (filled in by service.serve)."""

    config: Any  # scp_node.config.Config
    index: Any  # storage.index.Index
    role: str = "all"
    draining: threading.Event = field(default_factory=threading.Event)
    associations: Callable[[], int] = lambda: 0
    scp_port: Callable[[], int | None] = lambda: None
    model: Callable[[], Any] = lambda: None  # classifier ModelInfo once loaded
    gpus: list[str] = field(default_factory=list)
    started_at: float = 0.0
    # scp_node.receive.intake.InstanceIntake where this process receives (STOW-RS uses it)
    intake: Any = None
    on_released: Callable[[float], None] | None = None  # completion check after a release
    stow_requests: InFlight = field(default_factory=InFlight)  # STOW-RS requests arriving


DATABASE_CHECK_SECONDS = 3.0  # a database that does not answer within this is not ready
_probe_lock = threading.Lock()
_probe: dict[int, threading.Thread] = {}  # id(index) -> the query still waiting, if any


def _database(node: NodeState) -> tuple[bool, str, dict[str, Any]]:
    """(answers, detail, the console's flags): a real query, waited for at most
    DATABASE_CHECK_SECONDS. PostgreSQL's pool waits up to 30 s for a connection to a stopped
    server; /readyz must answer long before a load balancer's probe gives up, so the query runs
    in a daemon thread, and while one is still waiting the next probe fails at once."""
    key = id(node.index)
    with _probe_lock:
        waiting = _probe.get(key)
        if waiting is not None and waiting.is_alive():
            return False, "no answer: the previous query is still waiting", {}
        answer: dict[str, Any] = {}

        def query() -> None:
            try:
                node.index.console.ping()
                answer["flags"] = node.index.console.flags()
            except Exception as exc:
                answer["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

        thread = threading.Thread(target=query, name="readyz-database", daemon=True)
        _probe[key] = thread
        thread.start()
    thread.join(DATABASE_CHECK_SECONDS)
    if thread.is_alive():
        return False, f"no answer within {DATABASE_CHECK_SECONDS:g} s", {}
    if "error" in answer:
        return False, answer["error"], {}
    return True, f"{node.index.db.dialect} answers", answer["flags"]


def readiness(node: NodeState) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(ready, {check: {"ok": bool, "detail": str}})."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    ok, detail, flags = _database(node)
    check("database", ok, detail)
    if node.role in ("all", "receiver"):
        port = node.scp_port()
        check(
            "scp_listening",
            port is not None,
            f"{node.config.node.host}:{port}" if port else "not listening",
        )
    if node.role in ("all", "worker"):
        model = node.model()
        check("model_loaded", model is not None, getattr(model, "name", "not loaded"))
    free = free_bytes(Path(node.config.storage.root))
    limit = node.config.storage.min_free_mb * 1024 * 1024
    check("disk", free >= limit, f"{free // 2**20} MiB free, at least {limit // 2**20} MiB needed")
    for name in (INTAKE_PAUSED, ANALYSIS_PAUSED):
        on = bool(flags.get(name, {}).get("on"))
        check(name, not on, f"paused by {flags[name]['actor']}" if on else "no")
    check("draining", not node.draining.is_set(), "stopping" if node.draining.is_set() else "no")
    return all(c["ok"] for c in checks.values()), checks
