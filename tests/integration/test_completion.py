"""Completion on release (issue 13): a study is READY [pipeline] release_quiet_seconds after the
association that brought its latest instance was released normally, and after
study_quiet_seconds otherwise (aborted, still open, another association still sending to it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from configs import make_config
from dcmtk import run_storescu
from in_process import CT_IMAGE_STORAGE, RECEIVER_CONFIG, make_ct
from ports import free_port
from pydicom import dcmread
from pynetdicom import AE

from scp_node.receive.receiver import Receiver
from storage.database import Database
from storage.index import Index, InstanceRecord

STUDY = "1.2.826.0.1.3680043.8.498.77"
NOW = 1_700_000_000.0
QUIET, RELEASE = 10.0, 2.0


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    db = Database.connect(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield Index(db)
    db.close()


def _record(index: Index, n: int, at: float, association: str | None, opens: bool) -> bool:
    rec = InstanceRecord(
        sop_uid=f"{STUDY}.1.{n}",
        study_uid=STUDY,
        series_uid=f"{STUDY}.1",
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        path=Path(f"/x/{n}.dcm"),
        calling_aet="STORESCU",
        received_at=at,
    )
    return index.record_instance(rec, association_id=association, opens_association=opens)


def _ready(index: Index, at: float) -> list[str]:
    return index.mark_ready(at, QUIET, RELEASE)


def test_released_study_is_ready_after_release_quiet_seconds(index: Index) -> None:
    for n in range(3):
        _record(index, n, NOW + n * 0.1, "a", n == 0)
    assert _ready(index, NOW + 1.0) == []  # still open
    index.association_ended("a", [STUDY], released=True, now=NOW + 1.0)
    assert _ready(index, NOW + 1.0 + RELEASE - 0.1) == []
    assert _ready(index, NOW + 1.0 + RELEASE) == [STUDY]


def test_aborted_or_open_association_waits_for_study_quiet_seconds(index: Index) -> None:
    _record(index, 0, NOW, "a", True)
    assert _ready(index, NOW + RELEASE + 1) == []  # open: the quiet window applies
    index.association_ended("a", [STUDY], released=False, now=NOW + 0.5)
    assert _ready(index, NOW + RELEASE + 1) == []  # aborted: the same
    assert _ready(index, NOW + QUIET) == [STUDY]


def test_another_open_association_holds_the_study(index: Index) -> None:
    _record(index, 0, NOW, "b", True)  # b sends first and stays open
    _record(index, 1, NOW + 0.1, "a", True)  # a brings the latest instance and releases
    index.association_ended("a", [STUDY], released=True, now=NOW + 0.2)
    assert _ready(index, NOW + 0.2 + RELEASE) == []
    index.association_ended("b", [STUDY], released=True, now=NOW + 0.3)  # b ends too
    assert _ready(index, NOW + 0.3 + RELEASE) == [STUDY]


def test_release_of_an_association_that_did_not_bring_the_latest_instance(index: Index) -> None:
    _record(index, 0, NOW, "a", True)
    _record(index, 1, NOW + 0.1, "b", True)  # b brought the latest; a releases first
    index.association_ended("a", [STUDY], released=True, now=NOW + 0.2)
    index.association_ended("b", [STUDY], released=False, now=NOW + 0.3)  # b aborted
    assert _ready(index, NOW + 0.3 + RELEASE) == []
    assert _ready(index, NOW + 0.1 + QUIET) == [STUDY]


def test_late_instance_after_release_makes_a_new_version(index: Index) -> None:
    _record(index, 0, NOW, "a", True)
    index.association_ended("a", [STUDY], released=True, now=NOW + 0.1)
    assert _ready(index, NOW + 0.1 + RELEASE) == [STUDY]
    later = NOW + 60
    assert _record(index, 1, later, "c", True)  # a late instance: RECEIVING version 2
    assert _ready(index, later + RELEASE) == []  # c still open
    index.association_ended("c", [STUDY], released=True, now=later + 0.5)
    assert _ready(index, later + 0.5 + RELEASE) == [STUDY]
    versions = index.db.run(
        lambda cur: cur.execute("SELECT version FROM jobs ORDER BY version").fetchall()
    )
    assert [v[0] for v in versions] == [1, 2]


def test_instance_after_release_before_ready_cancels_the_release(index: Index) -> None:
    _record(index, 0, NOW, "a", True)
    index.association_ended("a", [STUDY], released=True, now=NOW + 0.1)
    _record(index, 1, NOW + 1.0, "d", True)  # another association starts sending
    assert _ready(index, NOW + 0.1 + RELEASE) == []
    assert _ready(index, NOW + 1.0 + QUIET) == [STUDY]


class _Node:
    """An in-process Receiver whose release callback is recorded."""

    def __init__(self, tmp: Path) -> None:
        self.config = make_config(
            tmp / "store",
            **{
                **RECEIVER_CONFIG,
                "node__port": free_port(),
                "pipeline__study_quiet_seconds": 30,
                "pipeline__release_quiet_seconds": 1,
            },
        )
        from storage.instance_store import InstanceStore

        self.store = InstanceStore(self.config.storage.root, 0)
        self.db = Database.connect(f"sqlite:///{tmp / 'index.sqlite'}")
        self.index = Index(self.db)
        self.released: list[float] = []
        self.receiver = Receiver(
            self.config, self.store, self.index, on_released=self.released.append
        )
        self.receiver.start()

    def open_rows(self) -> int:
        return int(
            self.db.run(
                lambda cur: cur.execute("SELECT COUNT(*) FROM open_associations").scalar(),
                write=False,
            )
        )

    def close(self) -> None:
        self.receiver.stop(grace_seconds=2)
        self.db.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    running = _Node(tmp_path)
    yield running
    running.close()


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_storescu_release_completes_the_study(node: _Node, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.78"
    files = [make_ct(tmp_path / f"ct{i}.dcm", study_uid=study) for i in range(3)]
    result = run_storescu(files, node.receiver.port, called_ae=node.config.node.ae_title)
    assert result.returncode == 0, result.stderr
    _wait(lambda: node.released == [1.0])  # the completion check is asked for 1 s later
    assert node.open_rows() == 0
    now = time.time()
    assert node.index.mark_ready(now + 1.0, 30, 1) == [study]


def test_aborted_association_waits_for_the_quiet_window(node: _Node, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.79"
    ds = dcmread(make_ct(tmp_path / "ct.dcm", study_uid=study))
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=node.config.node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0
    assert node.open_rows() == 1  # the association holds its study open
    assoc.abort()
    _wait(lambda: node.open_rows() == 0)
    assert node.released == []
    now = time.time()
    assert node.index.mark_ready(now + 2.0, 30, 1) == []
    assert node.index.mark_ready(now + 31, 30, 1) == [study]


def test_dropped_connection_ends_the_hold_like_an_abort(node: _Node, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.80"
    ds = dcmread(make_ct(tmp_path / "ct.dcm", study_uid=study))
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.receiver.port, ae_title=node.config.node.ae_title)
    assert assoc.send_c_store(ds).Status == 0
    assoc.dul.socket.socket.close()  # type: ignore[union-attr]  # no A-ABORT, no A-RELEASE
    _wait(lambda: node.open_rows() == 0, timeout=20)
    assoc.kill()
    assert node.released == []
