"""A started in-process receiver with the web server in front of it taking STOW-RS
(`StowNode`), and a STOW-RS client body (`multipart_body`), for tests and the bench."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from audit_reading import audit_events
from in_process import RunningNode
from ports import free_port

from scp_node.app.service import WebServer
from scp_node.ops.health import NodeState

WEB_TOKEN = "console-token-0123456789abcdef"
STOW_TOKEN = "stow-token-9f8e7d6c5b4a39281706"
BOUNDARY = "lungnode-test-boundary-3f2a"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


class StowNode(RunningNode):
    """RunningNode (C-STORE) plus the web server on a free port, STOW-RS by `STOW_TOKEN` as
    calling AE DICOMWEB (on the allow-list beside DCMTK's)."""

    def __init__(
        self, tmp: Path, *, intake_paused: Callable[[], bool] | None = None, **overrides: object
    ) -> None:
        settings: dict[str, object] = {
            "web__port": free_port(),
            "web__token": WEB_TOKEN,
            "web__stow_token": STOW_TOKEN,
            "security__allowed_calling_aets": "STORESCU,ECHOSCU,DICOMWEB",
            **overrides,
        }
        super().__init__(tmp, intake_paused=intake_paused, **settings)
        self.released: list[float] = []
        self.state = NodeState(
            config=self.config,
            index=self.index,
            intake=self.receiver.intake,
            on_released=self.released.append,
        )
        self.web = WebServer(self.config, self.state)
        self.web.start()
        self.url = f"http://127.0.0.1:{self.config.web.port}"

    def audit_events(self) -> list[dict[str, Any]]:
        return audit_events(
            self.config.security.audit_log or self.config.storage.root / "audit.log"
        )

    def close(self) -> None:
        self.web.stop()
        super().close()


def part(data: bytes, media_type: str = "application/dicom") -> bytes:
    """One body part with its headers, boundary delimiter first."""
    return f"--{BOUNDARY}\r\nContent-Type: {media_type}\r\n\r\n".encode() + data + b"\r\n"


def multipart_body(files: Iterable[Path | bytes]) -> bytes:
    """A multipart/related body of `files` (paths, or raw bytes as they are)."""
    parts = [part(f if isinstance(f, bytes) else Path(f).read_bytes()) for f in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def trickle(body: bytes, chunk: int, pause: float) -> Iterator[bytes]:
    """`body` in `chunk`-byte pieces, `pause` seconds apart: a slow client."""
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]
        time.sleep(pause)
