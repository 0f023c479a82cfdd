"""The console's pause switches (intake, analysis) as the receivers and workers read them.

They live in the index (storage.console) so every process of the node sees the same switch;
this reads them at most once a second because every C-STORE asks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from storage.console import ANALYSIS_PAUSED, INTAKE_PAUSED
from storage.index import Index

log = logging.getLogger("lungnode.service")

SWITCH_CACHE_SECONDS = 1.0


class Switches:
    """The console's pause switches, read from the index at most once a second (every C-STORE
    asks); an index that does not answer leaves the last known value."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._lock = threading.Lock()
        self._flags: dict[str, Any] = {}
        self._read_at = 0.0

    def _on(self, name: str) -> bool:
        with self._lock:
            if time.monotonic() - self._read_at > SWITCH_CACHE_SECONDS:
                try:
                    self._flags = self._index.console.flags()
                except Exception as exc:
                    log.warning("pause switches not read: %s", exc)
                self._read_at = time.monotonic()
            return bool(self._flags.get(name, {}).get("on"))

    def intake_paused(self) -> bool:
        return self._on(INTAKE_PAUSED)

    def analysis_paused(self) -> bool:
        return self._on(ANALYSIS_PAUSED)
