"""The analysis yields to receiving: [pipeline] analysis_share_while_receiving.

A study's analysis slowed a sender to 0.65x of an idle node's ingest on 2 cores, and lower
priority (analysis_nice 10 / 19, SCHED_IDLE) left it there: the receiver waited in the run
queue behind the analysis (its session's autogroup weighs as much as a receiver's), and what
the analysis does to caches, memory bandwidth and the disk no priority removes. So while any
association is open on the node (its receivers' counts) or a STOW-RS request is arriving, the
analysis processes are paused
(`AnalysisPool.pause`: SIGSTOP, each between two index transactions, so none holds a database
lock a receiver waits for), within two bounds so that the analysis is never starved:

- while receiving goes on it still runs at least `share` of the time: after a pause of p
  seconds it runs p * share / (1 - share) seconds before it may be paused again;
- one pause lasts at most (1 - share) * PERIOD_SECONDS, and at most a quarter of
  [pipeline] job_lease_seconds; a running job renews its lease every third of it, and the
  pool renews it as it pauses the job's process, so a paused job keeps its lease even when a
  loaded machine gives its process no CPU between pauses.

share = 1 turns pausing off. /metrics shows lungnode_analysis_paused (1 while paused) and
lungnode_analysis_paused_seconds_total.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from scp_node.metrics import METRICS

log = logging.getLogger("lungnode.analysis_yield")

PERIOD_SECONDS = 10.0  # a pause and the run after it, at most, while receiving goes on
POLL_SECONDS = 0.05  # how soon a new association pauses the analysis


class Pausable(Protocol):
    def pause(self) -> int: ...

    def resume(self) -> None: ...


def longest_pause(share: float, lease_seconds: float) -> float:
    """Seconds one pause may last: the share's part of a period, and a quarter of a lease."""
    return min((1.0 - share) * PERIOD_SECONDS, lease_seconds / 4.0)


class AnalysisYield:
    """Pauses `analyses` while `receiving()` (open associations on the node) is above 0,
    within the bounds of the module doc; a thread of its own from `start()` to `stop()`."""

    def __init__(
        self,
        receiving: Callable[[], int],
        analyses: Pausable,
        share: float,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 < share < 1.0:
            raise ValueError(
                f"[pipeline] analysis_share_while_receiving = {share:g}: pausing needs a share "
                "above 0 and below 1"
            )
        self._receiving = receiving
        self._analyses = analyses
        self._share = share
        self._longest = longest_pause(share, lease_seconds)
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="analysis-yield", daemon=True)
        self._paused_at: float | None = None
        self._counted_at = 0.0
        self._run_until = 0.0  # no pause before this (the analysis's share after the last)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread and let the analyses run."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._resume(self._clock())

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.step()
            except Exception:  # the yield must go on: log and look again
                log.exception("analysis yield failed")
                self._resume(self._clock())

    def step(self) -> None:
        """Pause or resume the analyses as the receiving and the bounds say (one poll)."""
        now = self._clock()
        if self._paused_at is not None:
            METRICS.analysis_paused_seconds.inc(now - self._counted_at)
            self._counted_at = now
            if self._receiving() <= 0 or now - self._paused_at >= self._longest:
                self._resume(now)
        elif now >= self._run_until and self._receiving() > 0 and self._analyses.pause():
            self._paused_at = self._counted_at = now
            METRICS.analysis_paused.set(1)

    def _resume(self, now: float) -> None:
        if self._paused_at is None:
            return
        self._analyses.resume()
        paused = now - self._paused_at
        self._run_until = now + paused * self._share / (1.0 - self._share)
        self._paused_at = None
        METRICS.analysis_paused.set(0)
        log.debug("analysis resumed after a pause of %.2f s", paused)
