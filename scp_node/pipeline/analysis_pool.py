"""Several analyses at once: `[pipeline] analysis_processes` worker processes on one node.

Each process is started with spawn (TensorFlow does not survive fork), loads the model once and
runs `AnalysisWorker.run_once` in a loop: it claims its own jobs with a lease in the index,
renews the lease while it analyses, completes or fails them, exactly as the in-process worker
does, so the index keeps every rule (one result set per study version, a lost lease discards
the result). The node's process only supervises:

- start-up waits until every process has loaded the model (a missing or bad model stops it);
- each process reports the job it claims and when it is done with it through a pipe; when a
  process dies (killed, out of memory, a crash in native code), the job it was running is
  failed at once with a reason and queued again while attempts remain ([pipeline]
  max_job_attempts) instead of waiting for its lease to run out, and a new process takes its
  place;
- `stop()` (SIGTERM/SIGINT of the node) lets each process finish the analysis it is running and
  exit; a process still busy after `drain_seconds` is killed and its job queued again. A
  process that receives SIGTERM itself (systemd signals the whole control group) also stops
  after its current analysis; SIGINT (Ctrl-C in a terminal) is left to the node. A process
  whose node is gone (killed) stops after its current analysis too;
- each process runs in a session of its own at [pipeline] analysis_nice
  (scp_node.pipeline.priority) from the moment it has loaded the model (at start-up nothing
  receives yet, and a starved model load only delays the node's start; a replacement started
  while the node serves is lowered before it loads), and `pause()` / `resume()` stop and
  continue every process, each between two index transactions (scp_node.pipeline.analysis_yield
  pauses them while the node receives); a process paused when its node dies is continued by
  the kernel.

On CPU, processes scale analyses with the cores (TensorFlow's own threads share them). On a GPU,
one process is the recommended setting: CNN calls of several studies are not batched together,
and every process would hold its own model and GPU memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from scp_node.config import Config
from storage.index import Index
from storage.records import Job

log = logging.getLogger("lungnode.analysis_pool")

START_TIMEOUT_SECONDS = 300.0
RESTART_DELAY_SECONDS = 1.0
PAUSE_GUARD_SECONDS = 1.0  # longest wait for a process to leave an index transaction
PR_SET_PDEATHSIG = 1  # prctl(2)


class AnalysisPoolError(RuntimeError):
    """An analysis process could not start (its model did not load)."""


@dataclass
class _Child:
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    guard: Any  # multiprocessing RLock, see _child_main
    worker_id: str = ""
    job: Job | None = None
    ready: bool = False
    started_at: float = field(default_factory=time.monotonic)


def _child_main(
    config: Config,
    log_level: str,
    stop: Any,
    conn: Connection,
    guard: Any,
    parent_pid: int,
    lower_before_load: bool,
) -> None:  # pragma: no cover - a spawned process (tests/integration/test_analysis_pool)
    """An analysis process: load the model, then claim and process jobs until told to stop.
    `guard` is held around each index transaction and message to the node, which takes it
    before it pauses this process (`AnalysisPool.pause`). It lowers its priority before it
    loads the model when `lower_before_load` (the node already serves), else once loaded."""
    from scp_node.logs import configure_logging
    from scp_node.pipeline.priority import lower_own_session, lower_this_process

    def lower() -> None:
        lower_own_session(config.pipeline.analysis_nice)
        lower_this_process(config.pipeline.analysis_nice)  # every thread, TensorFlow's too

    configure_logging(log_level)
    continue_when_orphaned()
    if lower_before_load:
        lower()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the node stops us through `stop`
    terminated = threading.Event()  # SIGTERM to this process: stop after the current analysis
    signal.signal(signal.SIGTERM, lambda _signum, _frame: terminated.set())

    from scp_node.ops.switches import Switches
    from scp_node.pipeline.worker import AnalysisWorker
    from storage.index import open_index
    from storage.instance_store import InstanceStore

    def tell(kind: str, payload: Any) -> None:
        with guard:
            conn.send((kind, payload))

    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    index = open_index(config.storage.database_url, pool_size=config.storage.database_pool_size)
    index.db.transaction_guard = guard
    store = InstanceStore(config.storage.root, config.storage.min_free_mb)
    worker = AnalysisWorker(config, store, index, worker_id, on_claim=lambda job: tell("job", job))
    try:
        model = worker.classifier
    except Exception as exc:
        tell("failed", f"{type(exc).__name__}: {exc}")
        return
    if not lower_before_load:
        lower()
    tell("ready", (worker_id, model.info))
    switches = Switches(index)
    try:
        # a node killed (SIGKILL) leaves this process in a session of its own: it ends too
        while not stop.is_set() and not terminated.is_set() and os.getppid() == parent_pid:
            busy = not switches.analysis_paused() and worker.run_once()
            if busy:
                tell("idle", None)
            else:
                stop.wait(config.pipeline.tick_seconds)
    finally:
        index.close()


def continue_when_orphaned() -> None:
    """Ask Linux to send this process SIGCONT when the thread that started it ends: a node
    killed (SIGKILL) while it paused this process must not leave it stopped for ever."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGCONT), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


class AnalysisPool:
    """`processes` analysis processes, supervised from the node's process (see module doc)."""

    def __init__(self, config: Config, index: Index, processes: int) -> None:
        self._config = config
        self._index = index
        self._processes = processes
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self.model_info: Any = None
        self.restarts = 0
        self._paused: set[int] = set()  # pids stopped by pause()
        self._pause_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start the processes and wait until each has loaded the model; AnalysisPoolError
        (after stopping those that started) when one could not."""
        for _ in range(self._processes):
            self._children.append(self._spawn(lower_before_load=False))
        deadline = time.monotonic() + timeout
        try:
            while not all(c.ready for c in self._children):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AnalysisPoolError(
                        f"analysis processes did not load the model within {timeout:.0f} s"
                    )
                self._poll(min(left, 0.5), starting=True)
        except BaseException:
            self.stop(drain_seconds=0)
            raise
        log.info(
            "analysis processes started count=%d workers=%s",
            len(self._children),
            ",".join(c.worker_id for c in self._children),
        )
        self._supervisor = threading.Thread(
            target=self._supervise, name="analysis-pool", daemon=True
        )
        self._supervisor.start()

    def stop(self, drain_seconds: float = 60.0) -> None:
        """Let each process finish its analysis and exit; kill those still busy after
        `drain_seconds` and queue their jobs again."""
        self._stopping.set()
        self.resume()
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join()
        deadline = time.monotonic() + drain_seconds
        while any(c.process.is_alive() for c in self._children) and time.monotonic() < deadline:
            self._poll(0.2)
        for child in self._children:
            if child.process.is_alive():
                log.warning(
                    "analysis process %s still busy after %.0f s: killed",
                    child.worker_id or child.process.pid,
                    drain_seconds,
                )
                child.process.kill()
            child.process.join()
        self._poll(0)
        for child in self._children:
            self._reap(child, restart=False)
        self._children.clear()

    @property
    def worker_ids(self) -> list[str]:
        with self._lock:
            return [c.worker_id for c in self._children]

    def running_jobs(self) -> dict[str, Job]:
        """worker id -> the job its process reported claiming and has not finished."""
        with self._lock:
            return {c.worker_id: c.job for c in self._children if c.job is not None}

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {c.worker_id: c.process.pid for c in self._children if c.process.pid}

    # -- pausing (scp_node.pipeline.analysis_yield) -------------------------------------------

    def pause(self) -> int:
        """Stop (SIGSTOP) every running analysis process, each between two index transactions
        (its guard held meanwhile), so it holds no database lock a receiver waits for; returns
        how many were stopped. A process busy in one for PAUSE_GUARD_SECONDS is left running.

        The lease of the job a process runs is renewed here, just before it stops: the process
        renews it itself only while it runs, and on a loaded machine the short runs between
        pauses may not give its renewer the CPU to do so."""
        with self._lock:
            children = [c for c in self._children if c.ready and c.process.pid is not None]
        lease = self._config.pipeline.job_lease_seconds
        stopped = 0
        with self._pause_lock:
            for child in children:
                pid = child.process.pid
                if self._stopping.is_set() or pid in self._paused:
                    continue
                if not child.guard.acquire(timeout=PAUSE_GUARD_SECONDS):
                    continue
                try:
                    if child.process.is_alive():
                        if child.job is not None:
                            self._index.renew_lease(child.job, lease, time.time())
                        os.kill(pid, signal.SIGSTOP)
                        self._paused.add(pid)
                        stopped += 1
                except ProcessLookupError:
                    pass
                finally:
                    child.guard.release()
        return stopped

    def resume(self) -> None:
        """Continue (SIGCONT) every process pause() stopped."""
        with self._pause_lock:
            while self._paused:
                try:
                    os.kill(self._paused.pop(), signal.SIGCONT)
                except ProcessLookupError:
                    pass

    @property
    def paused(self) -> bool:
        return bool(self._paused)

    # -- supervision -------------------------------------------------------------------------

    def _spawn(self, *, lower_before_load: bool) -> _Child:
        receiver, sender = self._context.Pipe(duplex=False)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        guard = self._context.RLock()
        process = self._context.Process(
            target=_child_main,
            args=(
                self._config,
                level if isinstance(level, str) else "INFO",
                self._stop,
                sender,
                guard,
                os.getpid(),
                lower_before_load,
            ),
            name="lungnode-analysis",
            daemon=True,
        )
        process.start()
        sender.close()  # the child holds the writing end; EOF here when it exits
        return _Child(process=process, conn=receiver, guard=guard)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll(0.5)
                with self._lock:
                    dead = [c for c in self._children if not c.process.is_alive()]
                for child in dead:
                    child.process.join()
                    self._poll(0)
                    self._reap(child, restart=not self._stopping.is_set())
            except Exception:  # supervision must go on: log and look again
                log.exception("analysis pool supervision failed")
                time.sleep(RESTART_DELAY_SECONDS)

    def _poll(self, timeout: float, starting: bool = False) -> None:
        """Read what the processes reported (claims, idle, ready)."""
        with self._lock:
            by_conn = {c.conn: c for c in self._children if not c.conn.closed}
        if not by_conn:
            if timeout:
                time.sleep(timeout)
            return
        for conn in wait(list(by_conn), timeout):
            child = by_conn[conn]  # type: ignore[index]
            while True:
                try:
                    if not child.conn.poll():
                        break
                    kind, payload = child.conn.recv()
                except (EOFError, OSError):
                    child.conn.close()
                    if starting and not child.ready:
                        raise AnalysisPoolError(
                            "an analysis process exited while loading the model "
                            f"(exit code {child.process.exitcode})"
                        ) from None
                    break
                self._on_message(child, kind, payload, starting)

    def _on_message(self, child: _Child, kind: str, payload: Any, starting: bool) -> None:
        if kind == "ready":
            child.worker_id, self.model_info = payload
            child.ready = True
            if not starting:
                log.info("analysis process started worker=%s", child.worker_id)
        elif kind == "failed":
            if starting:
                raise AnalysisPoolError(f"analysis process could not load the model: {payload}")
            log.error("analysis process could not load the model: %s", payload)
        elif kind == "job":
            child.job = payload
        elif kind == "idle":
            child.job = None

    def _reap(self, child: _Child, *, restart: bool) -> None:
        """A process that exited: fail its job (queued again while attempts remain) and, while
        the pool runs, put a new process in its place."""
        code = child.process.exitcode
        with self._pause_lock:
            self._paused.discard(child.process.pid)
        job = child.job
        if job is not None:
            retry = job.attempts < self._config.pipeline.max_job_attempts
            reason = (
                f"analysis process {child.worker_id} died during the analysis (exit code {code})"
            )
            log.error(
                "analysis process died study=%s version=%d attempt=%d retry=%s exit_code=%s",
                job.study_uid,
                job.version,
                job.attempts,
                retry,
                code,
            )
            try:
                self._index.fail_job(job, reason, retry=retry, now=time.time())
            except Exception as exc:  # the lease runs out and the job is claimed again
                log.warning("job of a dead analysis process not released: %s", exc)
            child.job = None
        if not child.conn.closed:
            child.conn.close()
        if not restart:
            return
        if code not in (0, None):
            log.warning(
                "analysis process %s exited with code %s; starting another", child.worker_id, code
            )
        time.sleep(RESTART_DELAY_SECONDS)
        replacement = self._spawn(lower_before_load=True)
        with self._lock:
            self._children[self._children.index(child)] = replacement
            self.restarts += 1
        # The replacement reports "ready" through the supervisor's next polls.
