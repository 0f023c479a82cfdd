"""Several receiver processes on one port: [node] receiver_processes > 1.

pynetdicom runs each association in Python threads of one process, so one process receives on
one core whatever the number of associations. With `receiver_processes = N` (N > 1), `lungnode
serve` starts N receiver processes (multiprocessing, spawn: fresh interpreters, no TensorFlow)
that share one listening socket on [node] port, made by the serve process; a new connection is
accepted by the receiver with the fewest open associations (connections.LeastBusyDispatch).
All write the same store and index: the store's commit is atomic per SOP Instance (a hard
link), the index's insert is idempotent on SOP Instance UID, so an instance sent on two
associations at once is stored and indexed once. On SQLite (WAL; several writer processes of
one host, each waiting up to the busy timeout for the write lock) each receiver keeps its own
durability mark (scp_node.index_recovery); the serve process re-indexes once, before it starts
them. The serve process itself then only schedules, analyses, sends and serves the console; it
restarts a receiver that died.

C-STORE counters of the receivers are kept in prometheus-client's multiprocess files
(PROMETHEUS_MULTIPROC_DIR = <store>/.metrics, emptied at each start), and the serve process's
/metrics sums them; the figures read from the index (studies, queue, stages) were node-wide
already, as is `lungnode status`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from scp_node.config import Config

log = logging.getLogger("lungnode.receivers")

METRICS_FOLDER = ".metrics"
# counted where C-STOREs are received: in the receiver processes
RECEIVER_METRICS = ("lungnode_cstore_requests", "lungnode_received_bytes")
RESTART_DELAY_SECONDS = 1.0


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
        self.metrics_folder = config.storage.root / METRICS_FOLDER
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, BaseProcess] = {}
        self._stopping = False
        self._listener: socket.socket | None = None
        # open associations per receiver (slot - 1), read by each receiver's dispatch
        self._counts = self._context.Array("i", count)

    def start(self) -> None:
        """Listen on [node] host:port (OSError when it is taken), empty the metrics folder,
        count receiver metrics from it, start every receiver on the shared listening socket."""
        from scp_node.connections import make_listener

        self._listener = make_listener(self.config.node.host, self.config.node.port)
        shutil.rmtree(self.metrics_folder, ignore_errors=True)
        self.metrics_folder.mkdir(mode=0o700, parents=True)
        # inherited by the spawned receivers only: this process's counters are made already
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_folder)
        from scp_node.metrics import METRICS

        for counter in (METRICS.cstore_requests, METRICS.received_bytes):
            METRICS.registry.unregister(counter)
        METRICS.registry.register(_ReceiverMetrics(self.metrics_folder))
        for slot in range(1, self.count + 1):
            self._start(slot)

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=run_receiver,
            args=(self.config, slot, self.log_level, self._listener, self._counts),
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


def run_receiver(
    config: Config, slot: int, log_level: str, listener: socket.socket, counts: Any
) -> None:
    """A receiver process: the SCP on the shared listening socket, until SIGTERM/SIGINT.
    `counts`: every receiver's open associations (multiprocessing.Array, index slot - 1)."""
    from scp_node import connections
    from scp_node.dicom_settings import configure_pynetdicom
    from scp_node.logs import configure_logging
    from scp_node.metrics import METRICS
    from scp_node.receiver import Receiver
    from scp_node.scheduler import mark_ready
    from scp_node.service import Switches
    from storage.index import open_index
    from storage.instance_store import InstanceStore

    configure_logging(log_level)
    configure_pynetdicom()
    counts[slot - 1] = 0  # a restarted receiver's predecessor may have left its count
    connections.share_listener(listener, connections.LeastBusyDispatch(counts, slot - 1))
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
    try:
        while not stop.wait(0.2):
            pass
    finally:
        receiver.stop()
        index.close()
