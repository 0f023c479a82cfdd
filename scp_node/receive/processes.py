"""Several receiver processes on one port: [node] receiver_processes (auto: one per core, at
least 2, at most max_associations).

pynetdicom runs each association in Python threads of one process, so one process receives on
one core whatever the number of associations. With N > 1 receiver processes, `lungnode serve`
starts N receiver processes (multiprocessing, spawn: fresh interpreters, no TensorFlow) that
share one listening socket on [node] port, made by the serve process; a new connection is
accepted by the receiver with the fewest open associations (connections.LeastBusyDispatch).
The node's connection limits (max_associations, max_associations_per_ae,
max_pending_per_address) are counted across them in shared memory (scp_node.dicom.node_counts); the
serve process clears the counts of a receiver that died before it starts the next. A receiver
whose serve process dies stops too (it would hold the port).
All write the same store and index: the store's commit is atomic per SOP Instance (a hard
link), the index's insert is idempotent on SOP Instance UID, so an instance sent on two
associations at once is stored and indexed once. On SQLite (WAL; several writer processes of
one host, each waiting up to the busy timeout for the write lock) each receiver keeps its own
durability mark (scp_node.receive.lazy_index); the serve process re-indexes once, before it starts
them. The serve process itself then only schedules, analyses, sends and serves the console; it
restarts a receiver that died.

C-STORE counters of the receivers are kept in prometheus-client's multiprocess files
(PROMETHEUS_MULTIPROC_DIR), in a private folder of this serve process on the local temporary
file system, with the lock of the node's counts (not in the store, which several nodes and
machines may share; removed when the node stops), and the serve process's
/metrics sums them and shows each receiver's open connections and associations from the node's
counts; the figures read from the index (studies, queue, stages) were node-wide already, as is
`lungnode status`.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from scp_node.config import Config
from scp_node.dicom.node_counts import NodeCounts

log = logging.getLogger("lungnode.receivers")

RUNTIME_PREFIX = "lungnode-receivers-"  # the serve process's folder for what its receivers share
OWNER_LOCK = "owner.lock"  # flocked by the serve process for as long as it runs
# counted where C-STOREs are received: in the receiver processes
RECEIVER_METRICS = ("lungnode_cstore_requests", "lungnode_received_bytes")
RESTART_DELAY_SECONDS = 1.0
PARENT_CHECK_SECONDS = 1.0
LISTEN_WAIT_SECONDS = 60.0


class _ReceiverMetrics(Collector):
    """The receivers' counters from prometheus-client's multiprocess files, summed."""

    def __init__(self, folder: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._inner = MultiProcessCollector(None, path=str(folder))

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            if metric.name in RECEIVER_METRICS:
                yield metric


class ReceiverProcesses:
    """Start, watch and stop the receiver processes of one `lungnode serve`."""

    def __init__(self, config: Config, count: int, log_level: str) -> None:
        self.config = config
        self.count = count
        self.log_level = log_level
        # this serve process's own: metrics files and the counts' lock (mode 0700)
        remove_orphaned_runtimes(Path(tempfile.gettempdir()))
        self.runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
        self._owner = hold_owner_lock(self.runtime)
        self.metrics_folder = self.runtime / "metrics"
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, BaseProcess] = {}
        self._stopping = False
        self._listener: socket.socket | None = None
        # connections and associations of each receiver (row slot - 1), shared by all
        self.counts = NodeCounts(
            count, config.node.max_associations, self.runtime / "counts.lock", self._context
        )

    def start(self) -> None:
        """Listen on [node] host:port (OSError when it is taken), make the metrics folder,
        count receiver metrics from it, start every receiver on the shared listening socket."""
        from scp_node.dicom.connections import make_listener

        try:
            self._listener = make_listener(self.config.node.host, self.config.node.port)
        except OSError:
            shutil.rmtree(self.runtime, ignore_errors=True)
            raise
        self.metrics_folder.mkdir(mode=0o700)
        # inherited by the spawned receivers only: this process's counters are made already
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_folder)
        from scp_node.metrics import METRICS

        for counter in (METRICS.cstore_requests, METRICS.received_bytes):
            METRICS.registry.unregister(counter)
        METRICS.registry.register(_ReceiverMetrics(self.metrics_folder))
        for slot in range(1, self.count + 1):
            self._start(slot)
        self._wait_listening()

    def _wait_listening(self) -> None:
        """Return once every receiver listens (so the node is started when it says so), or
        one died, or after LISTEN_WAIT_SECONDS (a slow machine: they listen a little later)."""
        deadline = time.monotonic() + LISTEN_WAIT_SECONDS
        while not all(self.counts.listening):
            if time.monotonic() > deadline or self.alive() < self.count:
                log.warning(
                    "receiver processes listening: %d of %d", sum(self.counts.listening), self.count
                )
                return
            time.sleep(0.05)

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=run_receiver,
            args=(self.config, slot, self.log_level, self._listener, self.counts, os.getpid()),
            name=f"lungnode-receiver-{slot}",
            daemon=False,
        )
        process.start()
        self._processes[slot] = process
        log.info("receiver process started slot=%d pid=%s", slot, process.pid)

    def supervise(self) -> None:
        """Restart receivers that died (call now and then from the serve loop)."""
        if self._stopping:
            return
        for slot, process in list(self._processes.items()):
            if not process.is_alive():
                log.error(
                    "receiver process died slot=%d pid=%s exit=%s; restarting",
                    slot,
                    process.pid,
                    process.exitcode,
                )
                self.counts.clear(slot - 1)  # what it held is gone with it
                time.sleep(RESTART_DELAY_SECONDS)
                self._start(slot)

    def alive(self) -> int:
        return sum(1 for p in self._processes.values() if p.is_alive())

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every receiver (each drains like a single node), then wait; SIGKILL late."""
        self._stopping = True
        if self._listener is not None:  # the receivers' copies close as they stop
            self._listener.close()
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self._processes.values():
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                log.warning("receiver process pid=%s did not stop; killing it", process.pid)
                process.kill()
                process.join(5)
        shutil.rmtree(self.runtime, ignore_errors=True)


def hold_owner_lock(runtime: Path) -> int:
    """Open and flock `runtime`/owner.lock for the life of this process (the kernel drops the lock
    when the process dies, however it dies); returns the descriptor, kept open on purpose."""
    fd = os.open(runtime / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def remove_orphaned_runtimes(temp: Path) -> list[Path]:
    """Remove the runtime folders of serve processes that died without cleaning up (SIGKILL,
    power loss): this user's `lungnode-receivers-*` whose owner lock nobody holds. A folder
    without an owner lock is another version's or half made, and left alone."""
    removed = []
    for folder in temp.glob(f"{RUNTIME_PREFIX}*"):
        try:
            if not folder.is_dir() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / OWNER_LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its serve process still runs
            continue
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        log.info("removed the runtime folder of a serve process that is gone: %s", folder)
    return removed


def leave_the_analysis_session() -> None:
    """Run in a session of its own. Linux's autogroup scheduling (sched_autogroup_enabled,
    on in most kernels) shares the CPU fairly between sessions first: a receiver in the serve
    process's session would share that session's weight with the serve process's console,
    scheduler and supervision (the analysis has a session of its own, lowered:
    scp_node.pipeline.priority.lower_own_session). The serve process still stops it (SIGTERM),
    and it stops when the serve process is gone."""
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass


def run_receiver(
    config: Config,
    slot: int,
    log_level: str,
    listener: socket.socket,
    counts: NodeCounts,
    parent_pid: int,
) -> None:
    """A receiver process: the SCP on the shared listening socket, until SIGTERM/SIGINT or
    until its serve process (`parent_pid`) is gone. `counts`: the node's counts (row slot - 1)."""
    from scp_node.dicom import connections, pynetdicom_adapter
    from scp_node.logs import configure_logging
    from scp_node.metrics import METRICS
    from scp_node.ops.heap import settle_startup_heap
    from scp_node.ops.switches import Switches
    from scp_node.receive.completion import mark_ready
    from scp_node.receive.receiver import Receiver
    from storage.index import open_index
    from storage.instance_store import InstanceStore

    configure_logging(log_level)
    leave_the_analysis_session()
    pynetdicom_adapter.install()
    counts.clear(slot - 1)  # a restarted receiver's predecessor may have left its counts
    connections.share_listener(listener, counts, slot - 1)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store = InstanceStore(
        config.storage.root,
        config.storage.min_free_mb,
        folder_fsync=config.storage.folder_fsync,
    )
    index = open_index(config.storage.database_url, pool_size=config.storage.database_pool_size)
    METRICS.configure(
        {*config.security.allowed_calling_aets, *(d.ae_title for d in config.destinations.values())}
    )

    def completion_after(seconds: float) -> None:
        def check() -> None:
            try:
                mark_ready(index, config)
            except Exception:
                log.exception("completion check after release failed")

        timer = threading.Timer(seconds + 0.05, check)
        timer.daemon = True
        timer.start()

    switches = Switches(index)
    receiver = Receiver(
        config,
        store,
        index,
        intake_paused=switches.intake_paused,
        on_released=completion_after,
        slot=slot,
    )
    receiver.start()
    settle_startup_heap()
    counts.listening[slot - 1] = 1
    checked = time.monotonic()
    orphaned = False
    try:
        while not stop.wait(0.2):
            if time.monotonic() - checked >= PARENT_CHECK_SECONDS:
                checked = time.monotonic()
                if os.getppid() != parent_pid:  # the serve process died (SIGKILL)
                    log.error("serve process pid=%d is gone; receiver %d stops", parent_pid, slot)
                    orphaned = True
                    break
    finally:
        # orphaned: the port is freed at once for the node's next start (nothing in flight
        # was acknowledged, so nothing acknowledged is lost)
        receiver.stop(grace_seconds=0.0 if orphaned else 10.0)
        index.close()
    # drained, durable and closed: end now rather than after the interpreter's teardown (about
    # 2 s on a loaded machine, which a stopping node would wait for)
    logging.shutdown()
    os._exit(0)
