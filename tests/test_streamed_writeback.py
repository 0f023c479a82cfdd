"""The streamed file starts each fragment's write-out to disk (storage.data_sync.start_writeback)
only when its dataset is synced early (its route's `sync_early()`), and the hint never fails:
scp_node.dicom.pynetdicom_adapter.streaming.StreamedFile."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from scp_node.dicom.pynetdicom_adapter import streaming
from storage.data_sync import DataSync, start_writeback


def _stream(tmp_path: Path, sync_early: bool | None) -> list[int]:
    """Write three fragments through a StreamedFile routed with `sync_early` (None: no route);
    the file descriptors whose write-out was started."""
    started: list[int] = []
    limits = (
        None if sync_early is None else streaming._Incoming(tmp_path, sync_early=lambda: sync_early)
    )
    inner = tempfile.NamedTemporaryFile(dir=tmp_path, delete=False, mode="wb")
    streamed = streaming.StreamedFile(inner, limits)
    original = streaming.start_writeback
    streaming.start_writeback = started.append  # type: ignore[assignment]
    try:
        for fragment in (b"a" * 1000, b"b" * 1000, b"c" * 10):
            streamed.write(fragment)
            streamed.file.flush()
    finally:
        streaming.start_writeback = original
        streamed.close()
    assert Path(streamed.name).read_bytes() == b"a" * 1000 + b"b" * 1000 + b"c" * 10
    return started


def test_write_out_starts_after_each_fragment_of_an_early_synced_dataset(tmp_path: Path) -> None:
    assert len(_stream(tmp_path, sync_early=True)) == 3


@pytest.mark.parametrize("sync_early", [False, None])
def test_no_early_write_out_without_early_sync(tmp_path: Path, sync_early: bool | None) -> None:
    assert _stream(tmp_path, sync_early) == []


def test_start_writeback_is_a_hint_that_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        start_writeback(fd)
    finally:
        os.close(fd)
    start_writeback(fd)  # closed: EBADF, ignored
    sync = DataSync(path)
    sync.wait()
    assert sync.finished
