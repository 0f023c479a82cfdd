"""A nearly full disk under the running node: C-STORE answers 0xA700 (Out of Resources),
nothing partial remains in the store, C-ECHO still works, and ingest resumes on its own once
space is freed. The store lies on a small tmpfs the test mounts (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dcmtk import run_echoscu, run_storescu
from faults_support import RoleNode, acknowledged, dataset_bytes
from node_process import save_datasets

from classifier.datasets.phantom import generate_study

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TMPFS_MB = 16
MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted at tmp_path/disk for the test's duration."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip(
            "mounting a tmpfs needs root and mount(8); min_free_mb is covered by "
            "tests/integration/test_receiver.py"
        )
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"this container cannot mount a tmpfs ({proc.stderr.strip()}); "
            "min_free_mb is covered by tests/integration/test_receiver.py"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _ballast(folder: Path, leave_free: int) -> Path:
    """A file filling the file system of `folder` until about `leave_free` bytes are free."""
    path = folder / "ballast"
    size = shutil.disk_usage(folder).free - leave_free
    with path.open("wb") as f:
        f.write(b"\0" * max(size, 0))
    return path


def _node(tmp_path: Path, disk: Path, min_free_mb: int) -> RoleNode:
    return RoleNode(
        tmp_path / "node",
        role="receiver",
        quiet_seconds=600,
        overrides={
            "storage__root": disk / "store",
            "storage__min_free_mb": min_free_mb,
            # as shipped (receiving in processes of their own): with receiver_processes = 1 the
            # serve process's audit log fails to close on the full disk at shutdown (a Traceback)
            "node__receiver_processes": "auto",
        },
    )


def _store_files(node_store: Path) -> list[Path]:
    return [p for p in node_store.rglob("*.dcm") if ".incoming" not in p.parts]


def _incoming(node_store: Path) -> list[Path]:
    return [p for p in (node_store / ".incoming").iterdir() if p.is_file()]


def test_below_min_free_mb_answers_a700_and_resumes_when_freed(tmp_path: Path, tmpfs: Path) -> None:
    study = generate_study(seed=71, histology="A", ct_size=64, ct_slices=12, pet=False)
    files = save_datasets(study.ct, tmp_path / "ct")
    node = _node(tmp_path, tmpfs, min_free_mb=4)
    with node:
        ballast = _ballast(tmpfs, leave_free=2 * MiB)
        proc = run_storescu(files, node.port, called_ae=node.ae_title, extra_args=["-v"])
        output = proc.stdout + proc.stderr
        assert acknowledged(output) == []
        assert "Received Store Response (Refused: OutOfResources)" in output, output[-2000:]
        assert "status=0xA700" in node.log()
        assert _store_files(node.store) == [] and _incoming(node.store) == []
        assert run_echoscu(node.port, called_ae=node.ae_title).returncode == 0
        assert node.status()["studies"] == []
        ballast.unlink()
        proc = run_storescu(files, node.port, called_ae=node.ae_title, extra_args=["-v"])
        assert len(acknowledged(proc.stdout + proc.stderr)) == len(files), proc.stdout[-2000:]
        assert [s["instances"] for s in node.status()["studies"]] == [len(files)]
    assert len(_store_files(node.store)) == len(files)


def test_disk_full_while_receiving_leaves_nothing_partial(tmp_path: Path, tmpfs: Path) -> None:
    """No free-space floor (min_free_mb 0): the disk really fills in the middle of a transfer."""
    study = generate_study(seed=72, histology="A", ct_size=64, ct_slices=40, pet=False)
    files = save_datasets(study.ct, tmp_path / "ct")
    by_sop = {p.stem: p for p in files}
    node = _node(tmp_path, tmpfs, min_free_mb=0)
    with node:
        # the index (SQLite WAL) must be able to grow a little; ~10 instances fit in the rest
        ballast = _ballast(tmpfs, leave_free=int(0.25 * MiB))
        proc = run_storescu(
            files, node.port, called_ae=node.ae_title, extra_args=["-v"], timeout=120
        )
        output = proc.stdout + proc.stderr
        acked = {p.stem for p in acknowledged(output)}
        print(
            f"\ndisk full: {len(acked)} of {len(files)} acknowledged before the disk filled; "
            f"storescu rc={proc.returncode}"
        )
        assert len(acked) < len(files), "the disk never filled"
        stored = {p.stem: p for p in _store_files(node.store)}
        assert acked <= set(stored)
        for sop, path in stored.items():
            assert dataset_bytes(path) == dataset_bytes(by_sop[sop]), f"partial file {path}"
        assert _incoming(node.store) == []
        assert run_echoscu(node.port, called_ae=node.ae_title).returncode == 0
        ballast.unlink()
        proc = run_storescu(
            files, node.port, called_ae=node.ae_title, extra_args=["-v"], timeout=120
        )
        assert len(acknowledged(proc.stdout + proc.stderr)) == len(files), proc.stdout[-3000:]
        assert [s["instances"] for s in node.status()["studies"]] == [len(files)]
    assert len(_store_files(node.store)) == len(files)


def test_enospc_while_streaming_answers_a700_and_removes_the_temp_file(
    tmp_path: Path, tmpfs: Path
) -> None:
    study = generate_study(seed=73, histology="A", ct_size=64, ct_slices=40, pet=False)
    files = save_datasets(study.ct, tmp_path / "ct")
    node = _node(tmp_path, tmpfs, min_free_mb=0)
    with node:
        _ballast(tmpfs, leave_free=int(0.25 * MiB))
        proc = run_storescu(
            files, node.port, called_ae=node.ae_title, extra_args=["-v"], timeout=120
        )
        output = proc.stdout + proc.stderr
        assert "Peer Aborted Association" not in output
        assert "Received Store Response (Refused: OutOfResources)" in output
        assert _incoming(node.store) == []
        assert "Traceback" not in node.log()
