"""`/readyz`: may this process take work? Each check says why not; `/livez` checks nothing.

Checks: `database` (a real query), `scp_listening` (a receiver role's SCP accepts TCP
connections), `model_loaded` (a worker role has its model), `disk` (free space on the store
above [storage] min_free_mb), `intake_paused` / `analysis_paused` (the console's switches), and
`draining` (SIGTERM received: the process is stopping). A load balancer or Kubernetes stops
sending work to a process that is not ready; it answers 503 with the failing checks as JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scp_node.metrics import free_bytes
from storage.console import ANALYSIS_PAUSED, INTAKE_PAUSED


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


def readiness(node: NodeState) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(ready, {check: {"ok": bool, "detail": str}})."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ok: bool, detail: str) -> None:
        checks[name] = {"ok": ok, "detail": detail}

    flags: dict[str, Any] = {}
    try:
        node.index.console.ping()
        flags = node.index.console.flags()
        check("database", True, f"{node.index.db.dialect} answers")
    except Exception as exc:
        check("database", False, f"{type(exc).__name__}: {str(exc)[:200]}")
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
