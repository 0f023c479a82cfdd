"""Files only for the node: under umask 022, everything the node creates in its store root
(folders, instances, SR/SEG results, temp files, audit log, SQLite database and its -wal/-shm,
the durability mark) is 0700/0600; nothing is readable, writable or searchable by group or
other. In-process (explicit modes) and against the running node (umask set by the CLI too)."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from dcmtk import StorescpServer, run_storescu
from node_process import NodeProcess, save_datasets

from classifier.datasets.phantom import generate_study
from scp_node.ops.audit import AuditLog
from scp_node.receive.lazy_index import write_mark
from storage.database import Database
from storage.instance_store import InstanceStore
from storage.private_files import make_private_dir, prepare_sqlite_file, restrict_umask


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _exposed(root: Path) -> list[str]:
    """Every path under `root` (and root) with any group/other permission bit, with its mode."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if mode & 0o077:
            found.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(root.parent)}")
    return found


def _modes(root: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {"dirs": set(), "files": set()}
    for path in [root, *root.rglob("*")]:
        out["dirs" if path.is_dir() else "files"].add(stat.S_IMODE(path.lstat().st_mode))
    return out


def test_store_audit_database_and_mark_are_private_under_umask_022(
    tmp_path: Path, umask_022: None
) -> None:
    root = tmp_path / "store"
    store = InstanceStore(root, min_free_mb=0)
    study = generate_study(seed=4, histology="A", ct_size=32, ct_slices=4, pet=False)
    ds = study.ct[0]
    # a received instance copied into .incoming with the umask's 0644, as the receiver may
    temp = store.temp_path()
    source = tmp_path / "source.dcm"
    ds.save_as(source, enforce_file_format=True)
    shutil.copyfile(source, temp)
    assert stat.S_IMODE(temp.stat().st_mode) == 0o644
    store.commit(temp, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    store.write_dataset(study.ct[1])  # a result object's way in
    audit = AuditLog(root / "audit.log", "LUNGNODE")
    audit.write({"Event": "test"})
    audit.close()
    url = f"sqlite:///{root / 'index.sqlite'}"
    assert prepare_sqlite_file(url) == root / "index.sqlite"
    db = Database.connect(url)
    with db.transaction() as cur:
        cur.execute("CREATE TABLE t (x INTEGER)")
        cur.execute("INSERT INTO t VALUES (1)")
    assert (root / "index.sqlite-wal").exists() and (root / "index.sqlite-shm").exists()
    write_mark(root / "index.sqlite.mark", time.time())
    try:
        assert _exposed(root) == []
        assert _modes(root) == {"dirs": {0o700}, "files": {0o600}}
    finally:
        db.close()


def test_existing_world_readable_store_is_tightened(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "store"
    (root / ".incoming").mkdir(parents=True, mode=0o755)
    (root / "audit.log").write_text("")
    (root / "index.sqlite").write_bytes(b"")
    (root / "index.sqlite-wal").write_bytes(b"")
    InstanceStore(root, min_free_mb=0)
    AuditLog(root / "audit.log", "LUNGNODE").close()
    prepare_sqlite_file(f"sqlite:///{root / 'index.sqlite'}")
    assert _exposed(root) == []


def test_private_helpers(tmp_path: Path, umask_022: None) -> None:
    assert make_private_dir(tmp_path / "a" / "b", parents=True)
    assert not make_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert prepare_sqlite_file("postgresql://u@h/db") is None
    assert prepare_sqlite_file("sqlite:///:memory:") is None
    previous = restrict_umask()
    try:
        assert previous == 0o022
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(previous)


@pytest.mark.e2e
@pytest.mark.slow
def test_running_node_under_umask_022_keeps_the_store_private(
    tmp_path: Path, umask_022: None
) -> None:
    study = generate_study(seed=12, histology="A", ct_size=64, ct_slices=16, pet=False)
    files = save_datasets(study.ct, tmp_path / "ct")
    with StorescpServer(tmp_path / "archive") as archive:
        node = NodeProcess(tmp_path / "node", archive_port=archive.port, quiet_seconds=1.0)
        root = node.workdir / "store"
        with node:
            proc = run_storescu(files, node.port, called_ae=node.ae_title, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            node.wait_for(
                lambda s: [x["state"] for x in s["studies"]] == ["DELIVERED"], 300, "DELIVERED"
            )
            # while it runs: the SQLite -wal and -shm files exist now
            names = {p.name for p in root.iterdir()}
            assert {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "audit.log"} <= names
            results = [
                p for p in root.rglob("*.dcm") if pydicom.dcmread(p).Modality in ("SR", "SEG")
            ]
            assert results, "no SR/SEG in the store"
            assert _exposed(root) == []
        assert _exposed(root) == []
        assert _modes(root) == {"dirs": {0o700}, "files": {0o600}}
