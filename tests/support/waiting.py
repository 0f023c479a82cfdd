"""Waiting for something another thread or process does after the call that caused it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 20.0, what: str = "the condition") -> T:
    """Poll `check` until it returns something true and return that; fail after `timeout` s.

    For effects a peer records after the exchange that caused them has already ended on
    this side (an audit line written after a refused TLS handshake, a commitment report).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {value!r}")
        time.sleep(0.1)
