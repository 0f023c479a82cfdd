"""Lazy instance-row commits for the receiver, and their recovery from the store at start-up.

On SQLite, indexing an instance with a durable (fsynced) commit costs about as much as making
the file itself durable. The receiver therefore commits instance rows lazily
(`Database.lazy_commits`) and makes one commit durable every `DURABLE_EVERY_SECONDS`, which
syncs every lazy row before it. The file in its final store place, fsynced before Success, stays
the source of truth: a power cut can lose recent instance rows, never files, and
`reindex_store` re-indexes at start every store file changed since the durability mark, a time
before which every committed file is known to be durably indexed. The mark is a small text file
beside the SQLite database (`<database>.durable-through`), rewritten (not fsynced: an older mark
only means a longer scan) after each durable commit. PostgreSQL commits are always durable:
nothing here does anything there.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scp_node.dicom.instance_header import HeaderError, read_header
from scp_node.dicom.sop_classes import STORAGE_SOP_CLASSES
from storage.index import Index, StudyConflict
from storage.instance_store import SUFFIX, InstanceStore
from storage.private_files import private_opener
from storage.records import InstanceRecord
from storage.uids import InvalidUIDError

log = logging.getLogger("lungnode.index_recovery")

MARK_SUFFIX = ".durable-through"
DURABLE_EVERY_SECONDS = 2.0
# File ctimes come from the kernel's coarse clock and wall clocks get stepped: scan this much
# earlier than the mark.
CLOCK_MARGIN_SECONDS = 60.0
CALLING_AET_XATTR = "user.lungnode.calling_aet"
_RECEIVABLE = frozenset(STORAGE_SOP_CLASSES.values())


class LazyIndexing:
    """Records instance rows with lazy commits and keeps the store's durability mark."""

    def __init__(self, store: InstanceStore, index: Index, slot: int | None = None) -> None:
        """`slot`: the receiver process's number when several receive ([node]
        receiver_processes); each keeps its own mark, and recovery starts from the oldest."""
        self.store = store
        self.index = index
        self.enabled = index.db.commits_can_be_lazy
        self.mark_path = mark_path(index, slot)
        self._lock = threading.Lock()
        self._in_flight: dict[int, float] = {}
        self._ids = itertools.count()
        self._last_durable = 0.0
        self._mark = read_mark(self.mark_path)

    @contextmanager
    def committing(self) -> Iterator[None]:
        """Wrap store.commit + record(): files linked inside may not be durably indexed yet, so
        no mark written meanwhile may pass the time this block started."""
        key = next(self._ids)
        with self._lock:
            self._in_flight[key] = time.time()
        try:
            yield
        finally:
            with self._lock:
                del self._in_flight[key]

    def record(
        self,
        record: InstanceRecord,
        expected_in_series: int | None,
        *,
        association_id: str | None = None,
        opens_association: bool = False,
    ) -> bool:
        """Index one committed instance (see Index.record_instance); lazily, except one
        durable commit every DURABLE_EVERY_SECONDS, after which the mark moves forward."""
        kwargs: dict[str, Any] = {
            "expected_in_series": expected_in_series,
            "association_id": association_id,
            "opens_association": opens_association,
        }
        if not self.enabled:
            return self.index.record_instance(record, **kwargs)
        started = time.time()
        if started - self._last_durable < DURABLE_EVERY_SECONDS:
            with self.index.db.lazy_commits():
                return self.index.record_instance(record, **kwargs)
        new = self.index.record_instance(record, **kwargs)
        self._last_durable = started
        self._advance_mark(started)
        return new

    def make_durable(self) -> None:
        """Sync every lazy row now and move the mark (at a clean stop)."""
        if not self.enabled:
            return
        started = time.time()
        self.index.db.make_durable()
        self._advance_mark(started)

    def _advance_mark(self, durable_from: float) -> None:
        """Every row committed before `durable_from` is durable: the mark may go there, but not
        past the start of any commit still in flight (its row may be lazy or not yet written;
        the caller's own entry only holds the mark a few milliseconds earlier)."""
        with self._lock:
            mark = min([durable_from, *self._in_flight.values()])
            if self._mark is not None and mark <= self._mark:
                return
            self._mark = mark
        write_mark(self.mark_path, mark)


def mark_path(index: Index, slot: int | None = None) -> Path:
    """Where the durability mark of this index's SQLite database lives (beside it); one per
    receiver process when several receive (`slot`)."""
    database = index.db.sqlite_path or Path("index")
    suffix = MARK_SUFFIX if slot is None else f"{MARK_SUFFIX}.{slot}"
    return database.with_name(database.name + suffix)


def _slot_marks(index: Index) -> list[Path]:
    main = mark_path(index)
    return sorted(main.parent.glob(main.name + ".*[0-9]"))


def recovery_mark(index: Index) -> float | None:
    """Where recovery starts: the oldest mark of the receiver processes of the last run when
    several received (the serve process's own mark was set at its start), else the mark."""
    slots = _slot_marks(index)
    if slots:
        marks = [read_mark(path) for path in slots]
        return None if None in marks else min(m for m in marks if m is not None)
    return read_mark(mark_path(index))


def read_mark(path: Path) -> float | None:
    """The durability mark in `path`, or None when absent or unreadable (scan everything)."""
    try:
        return float(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def write_mark(path: Path, mark: float) -> None:
    """Replace the mark atomically (rename); no fsync, since losing it is safe."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", encoding="ascii", opener=private_opener) as handle:  # 0600
        handle.write(f"{mark:.6f}\n")
    os.replace(temp, path)


def remember_calling_aet(path: Path, calling_aet: str) -> None:
    """Keep the sender's AE title with the file (an extended attribute, where the file system
    has them) so re-indexing can route results back to it."""
    try:
        os.setxattr(path, CALLING_AET_XATTR, calling_aet.encode("ascii", "replace"))
    except (OSError, AttributeError):
        pass


def _calling_aet_of(path: Path) -> str:
    try:
        return os.getxattr(path, CALLING_AET_XATTR).decode("ascii", "replace")
    except (OSError, AttributeError):
        return ""


def reindex_store(store: InstanceStore, index: Index) -> int:
    """Index every store file changed since the durability mark that the index lacks; returns
    how many rows were added. Run before the receiver accepts associations."""
    if not index.db.commits_can_be_lazy:
        return 0
    mark_file = mark_path(index)
    mark = recovery_mark(index)
    since = None if mark is None else mark - CLOCK_MARGIN_SECONDS
    started = time.time()
    added = scanned = 0
    for instance_path, ctime in _store_files(store.root):
        if since is not None and ctime < since:
            continue
        scanned += 1
        record, expected = _record_for(store, instance_path, ctime)
        try:
            added_now = record is not None and index.record_instance(
                record, expected_in_series=expected
            )
        except StudyConflict as conflict:  # a refusal interrupted between commit and unlink
            log.warning("index recovery skipped %s: %s", instance_path, conflict)
            continue
        if record is not None and added_now:
            added += 1
            log.warning(
                "re-indexed instance missing from the index after a restart sop_instance_uid=%s "
                "study_uid=%s",
                record.sop_uid,
                record.study_uid,
            )
    index.db.make_durable()
    write_mark(mark_file, started)
    for slot_mark in _slot_marks(index):  # covered now; receivers started after write anew
        slot_mark.unlink(missing_ok=True)
    log.info("index recovery scanned=%d reindexed=%d since=%s", scanned, added, since)
    return added


def _store_files(root: Path) -> Iterator[tuple[Path, float]]:
    """(path, ctime) of every <study>/<series>/<sop>.dcm under root."""
    for study in _subfolders(root):
        for series in _subfolders(study):
            try:
                entries = list(os.scandir(series))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    try:
                        yield Path(entry.path), entry.stat(follow_symlinks=False).st_ctime
                    except FileNotFoundError:
                        continue


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [
            Path(e.path)
            for e in os.scandir(folder)
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
        ]
    except FileNotFoundError:
        return []


def _record_for(
    store: InstanceStore, path: Path, ctime: float
) -> tuple[InstanceRecord | None, int | None]:
    """The index row the receiver would have written for this file, or None for a file that is
    not a received instance (the node's own SR/SEG, or a file at the wrong path)."""
    try:
        header = read_header(path)
        record = header.record(path, _calling_aet_of(path), ctime)
    except (HeaderError, InvalidUIDError) as exc:
        log.warning("index recovery skipped %s: %s", path, exc)
        return None, None
    if record.sop_class_uid not in _RECEIVABLE:
        return None, None  # the node's own result objects are never received instances
    if store.path_for(record.study_uid, record.series_uid, record.sop_uid) != path:
        log.warning("index recovery skipped %s: its UIDs name another store path", path)
        return None, None
    return record, header.expected_in_series()
