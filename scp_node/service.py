"""`lungnode serve`: receiver, scheduler ticks, worker and sender in one process, by role.

Roles: `all` (the embedded default), `receiver` (C-STORE SCP and completion tick; run several
behind a load balancer on a shared store and PostgreSQL), `worker` (analysis and delivery, e.g.
on a GPU machine). SIGTERM and SIGINT stop the process cleanly: the receiver stops accepting and
lets in-flight C-STOREs finish, running ticks complete, nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType

from scp_node.config import Config
from scp_node.dicom_settings import configure_pynetdicom
from scp_node.receiver import Receiver
from scp_node.scheduler import build_scheduler
from scp_node.sender import Sender
from storage.database import Database
from storage.index import Index
from storage.instance_store import InstanceStore
from storage.private_files import prepare_sqlite_file

log = logging.getLogger("lungnode.service")

ROLES = ("all", "receiver", "worker")


def serve(config: Config, role: str = "all") -> int:
    """Run the node until SIGTERM/SIGINT; returns the process exit status."""
    configure_pynetdicom()
    store = InstanceStore(config.storage.root, config.storage.min_free_mb)
    prepare_sqlite_file(config.storage.database_url)  # 0600 before SQLite creates it
    database = Database.connect(config.storage.database_url)
    index = Index(database)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"

    worker = None
    if role in ("all", "worker"):
        from scp_node.worker import AnalysisWorker  # imports TensorFlow: only where it runs

        worker = AnalysisWorker(config, store, index, worker_id)
        _ = worker.classifier  # load the model now: a missing or bad model stops start-up
    sender = Sender(config, index) if role in ("all", "worker") else None
    receiver = Receiver(config, store, index) if role in ("all", "receiver") else None
    scheduler = build_scheduler(config, index, store, worker=worker, sender=sender)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if receiver is not None:
        receiver.start()
    scheduler.start()
    log.info(
        "lungnode started role=%s ae_title=%s address=%s:%d store=%s database=%s",
        role,
        config.node.ae_title,
        config.node.host,
        config.node.port,
        config.storage.root,
        database.dialect,
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if receiver is not None:
            receiver.stop()
        scheduler.shutdown(wait=True)
        database.close()
        log.info("lungnode stopped")
    return 0
