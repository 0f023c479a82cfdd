"""The durable instance store: <root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm on disk.

Files only, no database. A C-STORE is streamed into a temp file under <root>/.incoming (same
file system, so the final rename is atomic), then `commit` fsyncs it, links it into place and
fsyncs the folder: once `commit` returns, the instance survives a power cut. Every path
component is a validated UID, so nothing outside `root` can ever be written.

Everything here is the node's alone (see storage.private_files): the root and every folder in it
0700, every instance, result and temp file 0600, whatever the process umask.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydicom import Dataset, dcmwrite

from storage.data_sync import DataSync
from storage.private_files import make_private, make_private_dir, private_opener
from storage.uids import require_uid

T = TypeVar("T")

log = logging.getLogger("lungnode.store")

INCOMING = ".incoming"
SUFFIX = ".dcm"


# File systems whose fsync of a file commits the journal transaction holding that file's newest
# link (its directory entry), so one fsync after the link makes data and name durable. ext4 only
# with its journal: without one (mkfs -O ^has_journal, common on VM images) an fsync writes the
# file's own blocks and not the folder that gained its link (`has_journal`).
JOURNAL_COMMITS_LINK = frozenset({"ext4", "xfs"})
FOLDER_FSYNC_MODES = ("auto", "always")


def _mount_of(path: Path) -> tuple[str, str]:
    """(file system type, device "major:minor") of the mount `path` lies on, from mountinfo;
    ("", "") if unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "", ""
    target = str(Path(path).resolve())
    best, found = "", ("", "")
    for line in lines:
        fields = line.split(" ")
        try:
            device, mount_point = fields[2], fields[4].replace("\\040", " ")
            fstype = fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, found = mount_point, (fstype, device)
    return found


def has_journal(
    device: str, proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")
) -> bool:
    """True when the ext4 file system on block device `device` ("major:minor") has a journal:
    its jbd2 thread in /sys/fs/ext4/<name>/journal_task, or a /proc/fs/jbd2/<name>-* entry on
    kernels without that file. False when it cannot be told (two fsyncs are always safe)."""
    try:
        name = (sys_root / "dev" / "block" / device).resolve(strict=True).name
    except OSError:
        return False
    task = sys_root / "fs" / "ext4" / name / "journal_task"
    try:
        return task.read_text(encoding="ascii").strip() not in ("", "<none>")
    except OSError:
        pass
    try:
        return any(
            entry.name.startswith(f"{name}-") for entry in (proc_root / "fs" / "jbd2").iterdir()
        )
    except OSError:
        return False


def fsync_commits_link(fstype: str, device: str) -> bool:
    """True when one fsync of a file on a `fstype` file system on `device` (as `_mount_of`
    gives them) also makes its newest link durable: XFS, and ext4 with a journal (see
    JOURNAL_COMMITS_LINK)."""
    if fstype == "ext4":
        return has_journal(device)
    return fstype in JOURNAL_COMMITS_LINK


PENDING_XATTR = "user.lungnode.pending"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


_PENDING_VALUE = f"{_boot_id()}:{os.getpid()}".encode("ascii")
# Commits of this process between marking a final path pending and unmarking it, per path: two
# associations may send the same SOP Instance at once, and the one whose link fails must not
# unmark the file the other linked and is still fsyncing.
_in_flight: dict[Path, int] = {}
_in_flight_lock = threading.Lock()


def _set_pending(path: Path, pending: bool) -> None:
    """Mark (or unmark) a file linked into place but not yet fsynced, with this boot's id and
    this process's pid; a no-op where the file system has no extended attributes (a duplicate
    is then always kept). The mark goes when the last commit in flight on `path` unmarks it."""
    with _in_flight_lock:
        count = _in_flight.get(path, 0) + (1 if pending else -1)
        if count > 0:
            _in_flight[path] = count
        else:
            _in_flight.pop(path, None)
        if not pending and count > 0:
            return
        try:
            if pending:
                os.setxattr(path, PENDING_XATTR, _PENDING_VALUE)
            else:
                os.removexattr(path, PENDING_XATTR)
        except (OSError, AttributeError):
            pass


def _left_pending(path: Path) -> bool:
    """True for a file still marked pending by a commit that will never finish: made before
    this boot (a power cut), by a process that is gone, or by this one but not in flight."""
    try:
        value = os.getxattr(path, PENDING_XATTR).decode("ascii")
    except (OSError, AttributeError, UnicodeDecodeError):
        return False
    boot, _, pid_text = value.rpartition(":")
    if boot != _boot_id() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        with _in_flight_lock:
            if path in _in_flight:
                return False
            # the commit that marked it may have finished since the mark was read above
            try:
                os.getxattr(path, PENDING_XATTR)
            except OSError:
                return False
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a folder's fsync makes its new entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Files of received instances and of the node's own result objects, keyed by UIDs."""

    def __init__(self, root: Path, min_free_mb: int, *, folder_fsync: str = "auto") -> None:
        """Create `root` and `root/.incoming` if missing, both 0700 (also made 0700 when they
        exist); `min_free_mb` is the free-space floor below which the receiver answers 0xA700.

        `folder_fsync` ([storage] folder_fsync): "always" commits an instance with two fsyncs,
        the file's, then (after linking it into place) its folder's, as POSIX asks; "auto" does
        so too except on XFS and on ext4 with a journal, where the instance is linked into place
        first and one fsync of the file commits the journal transaction that holds both its data
        and its new directory entry (half the disk flushes per instance, the same durability
        there)."""
        if min_free_mb < 0:
            raise ValueError(f"min_free_mb {min_free_mb!r} is negative; use 0 or more MiB")
        if folder_fsync not in FOLDER_FSYNC_MODES:
            raise ValueError(f"folder_fsync {folder_fsync!r}: use one of {FOLDER_FSYNC_MODES}")
        self.root: Path = Path(root).resolve()
        self.incoming: Path = self.root / INCOMING
        self.min_free_mb = min_free_mb
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)  # outside the store: as is
            make_private_dir(self.root)
            make_private_dir(self.incoming)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot create the instance store folder {self.incoming}: {exc.strerror}; "
                "fix [storage] root or the folder's permissions",
            ) from exc
        for folder in (self.root, self.incoming):  # made by an earlier version, or by hand
            try:
                make_private(folder, folder=True)
            except PermissionError:  # another user's folder (a mount point): say so, go on
                log.warning(
                    "store folder %s is not this user's and stays mode %o; make it 0700",
                    folder,
                    folder.stat().st_mode & 0o777,
                )
        self._durable_dirs: set[Path] = {self.root, self.incoming}
        self._dirs_lock = threading.Lock()
        self.filesystem, device = _mount_of(self.root)
        journaled = fsync_commits_link(self.filesystem, device)
        self.one_fsync = folder_fsync == "auto" and journaled
        if folder_fsync == "auto" and self.filesystem == "ext4" and not journaled:
            log.info("store %s is on ext4 without a journal: two fsyncs per instance", self.root)

    def has_free_space(self) -> bool:
        """True while the file system of `root` has at least `min_free_mb` MiB free."""
        return shutil.disk_usage(self.root).free >= self.min_free_mb * 1024 * 1024

    def temp_path(self) -> Path:
        """A new unique path in root/.incoming to stream one C-STORE into (not created)."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def path_for(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        """Where an instance lives; raises InvalidUIDError for anything that is not a UID."""
        study = require_uid("Study Instance UID", study_uid)
        series = require_uid("Series Instance UID", series_uid)
        sop = require_uid("SOP Instance UID", sop_uid)
        return self.root / study / series / f"{sop}{SUFFIX}"

    def commit(
        self,
        temp: Path,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        *,
        data_sync: DataSync | None = None,
    ) -> tuple[Path, bool]:
        """Make the temp file durable at its final path; (final, False) if that SOP Instance was
        already stored (the temp file is then removed), returned only once that stored copy is
        durable too (`_flush_stored`). Raises InvalidUIDError before moving.

        `data_sync`: an fdatasync of `temp` the caller started once the file was written
        (DataSync(temp)); it is waited for before the link, so only the name is left to make
        durable: by one fsync of the file where the journal commits the link (`one_fsync`), by
        the folder's fsync elsewhere (the two flushes POSIX asks for, the first begun early).
        """
        final, stored = self._commit(temp, study_uid, series_uid, sop_uid, data_sync)
        if not stored:
            self._flush_stored(final)
        return final, stored

    @staticmethod
    def _flush_stored(final: Path) -> None:
        """Make the copy already stored at `final` durable before its duplicate is answered:
        the commit that linked it (in this process or another) may still be between its link
        and its flush, and a power cut there would lose an instance whose second sender heard
        "already stored". fsync of the file (data, and on ext4/XFS its link) and of its folder
        (the name, elsewhere); a copy removed meanwhile raises FileNotFoundError (no Success)."""
        _fsync_path(final)
        _fsync_path(final.parent)

    def _commit(
        self,
        temp: Path,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        data_sync: DataSync | None,
    ) -> tuple[Path, bool]:
        """commit without the duplicate's flush; see commit."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        temp = Path(temp)
        # resolve() only for another spelling: it lstat()s every component of the path
        if temp.parent != self.incoming and temp.parent.resolve() != self.incoming:
            raise ValueError(
                f"temp file {temp} is not in {self.incoming}; use InstanceStore.temp_path() so "
                "the final rename stays on one file system"
            )
        if final.exists():
            return self._already_stored(temp, final)
        make_private(temp)  # pynetdicom's temp file is 0600 already; a copied one may not be
        if data_sync is not None:
            # The data is durable before its name exists: a power cut leaves no name or a
            # complete file (kept when the peer sends it again); no pending mark is needed.
            data_sync.wait()
            stored = self._into_folder(final, lambda: self._link_into_place(temp, final))
            if stored:
                # one_fsync: the file's fsync commits the journal transaction holding its new
                # link; elsewhere the folder's fsync writes the entry itself
                _fsync_path(final if self.one_fsync else final.parent)
            return final, stored
        if self.one_fsync:
            # linked first, then one fsync commits data and directory entry together (ext4,
            # XFS). A power cut before it can leave an unacknowledged file at `final`, empty or
            # shorter than sent; it is marked pending until its fsync returned, so the sender's
            # retry replaces it (_already_stored).
            _set_pending(final, True)  # in flight under the final name
            _set_pending(temp, True)
            try:
                stored = self._into_folder(final, lambda: self._link_into_place(temp, final))
                if not stored:
                    return final, False
                _fsync_path(final)
            finally:
                _set_pending(final, False)
            return final, True
        _fsync_path(temp)
        stored = self._into_folder(final, lambda: self._link_into_place(temp, final))
        if stored:
            _fsync_path(final.parent)
        return final, stored

    def _already_stored(self, temp: Path, final: Path) -> tuple[Path, bool]:
        """The SOP Instance is stored already: the first copy is kept (the temp file goes),
        unless it is still marked pending, which only a power cut between linking and fsyncing
        an unacknowledged instance leaves (see commit): then this copy replaces it."""
        if not _left_pending(final):
            temp.unlink(missing_ok=True)
            return final, False
        log.warning("replacing %s, linked but never made durable (a power cut?)", final)
        make_private(temp)
        _fsync_path(temp)
        os.replace(temp, final)
        _fsync_path(final.parent)
        return final, True

    def write_dataset(self, ds: Dataset) -> Path:
        """Atomically write a result object (SR, SEG) at its study/series/SOP path, replacing
        any earlier file of the same SOP Instance UID."""
        final = self.path_for(
            getattr(ds, "StudyInstanceUID", None),
            getattr(ds, "SeriesInstanceUID", None),
            getattr(ds, "SOPInstanceUID", None),
        )
        temp = self.temp_path()
        try:
            with open(temp, "xb", opener=private_opener) as f:
                dcmwrite(f, ds, enforce_file_format=True)
                f.flush()
                os.fsync(f.fileno())
            self._into_folder(final, lambda: os.replace(temp, final))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_path(final.parent)
        return final

    def remove_instance(self, path: Path) -> None:
        """Delete one instance file this store committed (an instance refused after its commit,
        e.g. a patient conflict found in the index); a missing file is fine."""
        path = Path(path)
        if self.root not in path.resolve().parents:
            raise ValueError(f"{path} is not in the instance store {self.root}")
        path.unlink(missing_ok=True)
        _fsync_path(path.parent)

    def remove_study(self, study_uid: str) -> None:
        """Delete every file of a study (instances and results); a missing study is fine."""
        folder = self.root / require_uid("Study Instance UID", study_uid)
        self._forget_dirs(folder)
        if folder.exists():
            shutil.rmtree(folder)
        _fsync_path(self.root)

    def purge_incoming(self, older_than_seconds: float) -> int:
        """Remove temp files left in .incoming by interrupted transfers or crashes, when last
        modified more than `older_than_seconds` ago; returns how many were removed."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in os.scandir(self.incoming):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # committed or purged by someone else meanwhile
        return removed

    def _into_folder(self, final: Path, move: Callable[[], T]) -> T:
        """Run `move` once the folder of `final` exists; when another process removed a folder
        this one remembered (retention on a shared store), create it again and retry once."""
        for last_try in (False, True):
            try:
                self._ensure_dir(final.parent)
                return move()
            except FileNotFoundError:
                if last_try or final.parent.is_dir():
                    raise  # the temp file itself is gone
                self._forget_dirs(final.parent.parent)
        raise AssertionError("unreachable")

    def _forget_dirs(self, folder: Path) -> None:
        """Drop `folder` and everything under it from the folders known to exist durably."""
        with self._dirs_lock:
            self._durable_dirs = {
                d for d in self._durable_dirs if d != folder and folder not in d.parents
            }

    def _ensure_dir(self, folder: Path) -> None:
        """Create `folder` (and its parents up to root), fsyncing each parent once per process
        so the new entries are durable before any file in them is reported stored."""
        if folder in self._durable_dirs:
            return
        for parent in reversed([folder, *folder.parents]):
            if parent == self.root or self.root not in parent.parents:
                continue
            if parent in self._durable_dirs:
                continue
            make_private_dir(parent)
            _fsync_path(parent.parent)
            with self._dirs_lock:
                self._durable_dirs.add(parent)

    @staticmethod
    def _link_into_place(temp: Path, final: Path) -> bool:
        """Move temp to final unless final exists; False when another writer got there first.

        A hard link fails atomically when the target exists, which makes a SOP Instance sent
        twice at once land exactly once; file systems without hard links fall back to rename.
        """
        try:
            os.link(temp, final)
        except FileExistsError:
            temp.unlink(missing_ok=True)
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.replace(temp, final)
            return True
        temp.unlink()
        return True
