"""`lungnode serve`: receiver, scheduler ticks, worker, sender and the web console in one
process, by role.

Roles: `all` (the embedded default), `receiver` (C-STORE SCP and completion tick; run several
behind a load balancer on a shared store and PostgreSQL), `worker` (analysis and delivery, e.g.
on a GPU machine). The web console, /metrics, /livez and /readyz run in every role when [web]
token is set (scp_node.web).

SIGTERM and SIGINT drain the process: /readyz answers 503 at once (a load balancer stops
sending), the receiver stops accepting, closes at once the connections that never sent an
A-ASSOCIATE (so an idle node stops within about a second), and lets in-flight C-STOREs finish;
running ticks complete, nothing acknowledged is lost; the web server stops last. The analyses
run in [pipeline] analysis_processes processes beside this one (scp_node.pipeline.analysis_pool),
each finishing the analysis it runs before the node exits; where this process receives too
(role all), they pause while associations or STOW-RS requests are open
(scp_node.pipeline.analysis_yield).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from scp_node.config import Config
from scp_node.dicom import pynetdicom_adapter
from scp_node.metrics import METRICS, IndexCollector, ReceiverCollector
from scp_node.ops.health import NodeState
from scp_node.ops.heap import settle_startup_heap
from scp_node.ops.switches import Switches
from scp_node.pipeline.analysis_yield import AnalysisYield
from scp_node.pipeline.scheduler import build_scheduler, check_completion_after
from scp_node.pipeline.sender import Sender
from scp_node.receive.lazy_index import reindex_store
from scp_node.receive.processes import ReceiverProcesses
from scp_node.receive.receiver import Receiver
from storage.index import Index, open_index
from storage.instance_store import InstanceStore

log = logging.getLogger("lungnode.service")

ROLES = ("all", "receiver", "worker")


def _gpus() -> list[str]:
    """GPUs TensorFlow sees, where TensorFlow is already loaded (worker roles)."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return []
    try:
        return [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:
        return []


class WebServer:
    """uvicorn in a thread, serving scp_node.web over HTTP or HTTPS on [web] host:port."""

    def __init__(self, config: Config, node: NodeState) -> None:
        import uvicorn

        from scp_node.app.check_config import web_warnings
        from scp_node.ops.audit import AuditLog
        from scp_node.web.app import build_app

        audit_path = config.security.audit_log or config.storage.root / "audit.log"
        self._audit = AuditLog(audit_path, config.node.ae_title)
        web = config.web
        for _level, key, why in web_warnings(config):
            log.warning("%s: %s", key, why)
        tls = (
            {
                "ssl_certfile": str(config.security.tls_certificate),
                "ssl_keyfile": str(config.security.tls_private_key),
            }
            if web.tls
            else {}
        )
        uv_config = uvicorn.Config(
            build_app(node, self._audit),
            host=web.host,
            port=web.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            **tls,  # type: ignore[arg-type]
        )
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self.scheme = "https" if web.tls else "http"
        self.address = f"{self.scheme}://{web.host}:{web.port}"

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise OSError(f"the web console could not listen on {self.address} (port taken?)")
        log.info("web console listening on %s", self.address)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._audit.close()


def serve(config: Config, role: str = "all") -> int:
    """Run the node until SIGTERM/SIGINT; returns the process exit status."""
    pynetdicom_adapter.install()
    node = _build(config, role)
    stop = _stop_on_signal(node.state)
    _start(node)
    try:
        _supervise(node, stop)
    finally:
        _shut_down(node)
    return 0


@dataclasses.dataclass
class _Node:
    """The parts `serve` runs in this process, by role; None where the role has none."""

    config: Config
    role: str
    index: Index
    scheduler: BackgroundScheduler
    state: NodeState
    pool: Any = None  # scp_node.pipeline.analysis_pool.AnalysisPool
    receiver: Receiver | None = None
    receivers: ReceiverProcesses | None = None
    analysis_yield: AnalysisYield | None = None
    web: WebServer | None = None


def _build(config: Config, role: str) -> _Node:
    """Open the store and the index and build this role's parts; none started yet."""
    store = InstanceStore(
        config.storage.root,
        config.storage.min_free_mb,
        folder_fsync=config.storage.folder_fsync,
    )
    index = open_index(config.storage.database_url, pool_size=config.storage.database_pool_size)
    switches = Switches(index)
    METRICS.configure(
        {
            *config.security.allowed_calling_aets,
            *(d.ae_title or d.name for d in config.destinations.values()),  # DICOMweb: name
        }
    )
    analyses = role in ("all", "worker")
    pool = _analysis(config, index) if analyses else None
    scheduler = build_scheduler(
        config,
        index,
        store,
        sender=Sender(config, index) if analyses else None,
        retention=analyses,
    )
    node = _Node(
        config,
        role,
        index,
        scheduler,
        NodeState(config=config, index=index, role=role, started_at=time.time(), gpus=_gpus()),
        pool=pool,
    )
    if role in ("all", "receiver"):
        _add_receiving(node, store, switches)
    share = config.pipeline.analysis_share_while_receiving
    if pool is not None and node.state.associations is not None and share < 1:
        state = node.state
        node.analysis_yield = AnalysisYield(
            lambda: state.associations() + state.stow_requests(),
            pool,
            share,
            config.pipeline.job_lease_seconds,
        )
    _watch(node)
    node.web = WebServer(config, node.state) if config.web.enabled else None
    if node.web is None:
        log.info("web console off: set [web] token (LUNGNODE__WEB__TOKEN) to serve it")
    return node


def _analysis(config: Config, index: Index) -> Any:
    """The analysis processes, each with the model loaded: a missing or bad model stops
    start-up. Processes, never this one's threads: only a process can be paused at once for
    receiving (scp_node.pipeline.analysis_yield), and its interpreter lock and its session's
    CPU share are not this process's."""
    from scp_node.pipeline.analysis_pool import AnalysisPool

    pool = AnalysisPool(config, index, config.pipeline.analysis_processes)
    pool.start()
    if pool.model_info is not None:
        info = pool.model_info
        METRICS.model_loaded(info.name, info.version, info.sha256)
    return pool


def _add_receiving(node: _Node, store: InstanceStore, switches: Switches) -> None:
    """The C-STORE SCP, in this process or in [node] receiver_processes processes, and the
    STOW-RS intake beside it; both ask for a completion check after a release."""
    config, state = node.config, node.state

    def on_released(seconds: float) -> None:
        check_completion_after(node.scheduler, seconds)

    processes = config.node.receiver_process_count()
    if processes > 1:
        reindex_store(store, node.index)  # once, before any receiver process starts
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        receivers = node.receivers = ReceiverProcesses(config, processes, str(level))
        state.intake = _own_intake(config, store, node.index, switches)
        state.associations = receivers.counts.total_associations
        state.scp_port = lambda: config.node.port if receivers.alive() else None
        METRICS.registry.register(ReceiverCollector(receivers.counts.rows))
    else:
        receiver = node.receiver = Receiver(
            config,
            store,
            node.index,
            intake_paused=switches.intake_paused,
            on_released=on_released,
        )
        state.intake = receiver.intake
        state.associations = lambda: receiver.active_associations
        state.scp_port = lambda: receiver.port if receiver.listening else None
        METRICS.registry.register(
            ReceiverCollector(
                lambda: [(1, receiver.open_connections, receiver.active_associations)]
            )
        )
    state.on_released = on_released


def _watch(node: _Node) -> None:
    """The model the console shows, and the gauges of /metrics (store, associations, index)."""
    if node.pool is not None:
        pool = node.pool
        node.state.model = lambda: pool.model_info
    config = node.config
    METRICS.watch(
        store_root=config.storage.root,
        min_free_mb=config.storage.min_free_mb,
        associations=node.state.associations if node.role in ("all", "receiver") else None,
    )
    METRICS.registry.register(IndexCollector(node.index))


def _stop_on_signal(state: NodeState) -> threading.Event:
    """An event set by SIGTERM or SIGINT, which also turn /readyz to 503 at once."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        state.draining.set()  # /readyz answers 503 from now on
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _start(node: _Node) -> None:
    """Start the web console, the receiving and the ticks, and say so."""
    config = node.config
    if node.web is not None:
        node.web.start()
    if node.receiver is not None:
        node.receiver.start()
    if node.receivers is not None:
        node.receivers.start()
    node.scheduler.start()
    if node.analysis_yield is not None:
        node.analysis_yield.start()
    settle_startup_heap()
    log.info(
        "lungnode started role=%s ae_title=%s address=%s:%d store=%s database=%s",
        node.role,
        config.node.ae_title,
        config.node.host,
        config.node.port,
        config.storage.root,
        node.index.db.dialect,
    )


def _supervise(node: _Node, stop: threading.Event) -> None:
    """Wait for the stop signal, restarting receiver processes that died meanwhile."""
    while not stop.wait(0.2):
        if node.receivers is not None:
            node.receivers.supervise()


def _shut_down(node: _Node) -> None:
    """Drain in order: receiving, ticks, analysis processes, web console, index."""
    started = time.monotonic()
    if node.receiver is not None:
        node.receiver.stop()
    if node.receivers is not None:
        node.receivers.stop()
    node.scheduler.shutdown(wait=True)
    if node.analysis_yield is not None:
        node.analysis_yield.stop()  # the analyses run again, to finish what they run
    if node.pool is not None:
        node.pool.stop()  # each process finishes the analysis it runs
    if node.web is not None:
        node.web.stop()
    if node.receivers is not None and node.state.intake is not None:
        node.state.intake.indexing.make_durable()  # STOW-RS rows of this process
    node.index.close()
    log.info("lungnode stopped in %.1f s", time.monotonic() - started)


def _own_intake(config: Config, store: InstanceStore, index: Index, switches: Switches) -> Any:
    """The STOW-RS intake's own InstanceIntake where receiver processes do the C-STOREs: its
    lazy index commits keep their own durability mark (the slot after theirs)."""
    from scp_node.receive.intake import InstanceIntake
    from scp_node.receive.lazy_index import LazyIndexing

    indexing = LazyIndexing(store, index, slot=config.node.receiver_processes)
    return InstanceIntake(config, store, index, indexing, intake_paused=switches.intake_paused)
