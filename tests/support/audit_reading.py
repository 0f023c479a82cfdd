"""Reading the node's audit log (one JSON object per line) in tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def audit_events(path: Path | None) -> list[dict[str, Any]]:
    """Every event in the audit log at `path`; none when the node has not written it yet."""
    assert path is not None, "the node under test has no audit log configured"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
