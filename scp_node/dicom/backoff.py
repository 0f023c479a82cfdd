"""When to try a failed delivery again: exponential backoff with jitter, capped.

Shared by the C-STORE sender and the Storage Commitment report handler, which both schedule
outbox rows again.
"""

from __future__ import annotations

import random

from scp_node.config import SenderConfig


def backoff_delay(attempt: int, cfg: SenderConfig, rng: random.Random) -> float:
    """Seconds before retry number `attempt` (1-based): initial * 2**(attempt-1), +-25% jitter,
    capped at max_backoff_seconds."""
    exponent = min(max(attempt, 1) - 1, 60)
    base = min(cfg.initial_backoff_seconds * 2.0**exponent, cfg.max_backoff_seconds)
    return min(base * rng.uniform(0.75, 1.25), cfg.max_backoff_seconds)


def retry_at(attempt: int, now: float, cfg: SenderConfig, rng: random.Random) -> float | None:
    """When to send a row again after its failed attempt number `attempt` (1-based), or None
    when that was the last of [sender] max_attempts (the row becomes a dead letter)."""
    if attempt >= cfg.max_attempts:
        return None
    return now + backoff_delay(attempt, cfg, rng)
