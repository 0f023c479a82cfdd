"""The instance store: UID-only paths, atomic idempotent commit, result writing, clean-up."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from storage.data_sync import DataSync
from storage.instance_store import InstanceStore
from storage.uids import InvalidUIDError

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _temp_with(store: InstanceStore, data: bytes = b"DICM-ish payload") -> Path:
    temp = store.temp_path()
    temp.write_bytes(data)
    return temp


def _all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_init_creates_root_and_incoming(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "a" / "store", min_free_mb=0)
    assert store.root.is_dir() and store.incoming == store.root / ".incoming"
    assert store.incoming.is_dir()


def test_temp_paths_are_unique_and_in_incoming(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    paths = {store.temp_path() for _ in range(100)}
    assert len(paths) == 100
    assert all(p.parent == store.incoming and not p.exists() for p in paths)


def test_commit_moves_into_uid_path_and_is_idempotent(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    first = _temp_with(store, b"first")
    final, stored = store.commit(first, STUDY, SERIES, SOP)
    assert stored is True
    assert final == store.root / STUDY / SERIES / f"{SOP}.dcm"
    assert final.read_bytes() == b"first" and not first.exists()

    again = _temp_with(store, b"second")
    final2, stored2 = store.commit(again, STUDY, SERIES, SOP)
    assert (final2, stored2) == (final, False)
    assert final.read_bytes() == b"first", "a duplicate must not overwrite the stored instance"
    assert not again.exists() and list(store.incoming.iterdir()) == []


def test_commit_strips_uid_padding(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    final, _ = store.commit(_temp_with(store), STUDY + "\x00", SERIES + " ", SOP)
    assert final == store.root / STUDY / SERIES / f"{SOP}.dcm"


@pytest.mark.parametrize(
    "uids",
    [
        ("../../etc", SERIES, SOP),
        (STUDY, "/tmp/x", SOP),
        (STUDY, SERIES, "../" + SOP),
        (STUDY, SERIES, "1." + "2" * 63),
        ("", SERIES, SOP),
        (STUDY, "a.b", SOP),
        (STUDY, SERIES, None),
        ("..", SERIES, SOP),
        (STUDY, SERIES, "1.2/../../../x"),
    ],
)
def test_commit_rejects_non_uids_before_moving_anything(tmp_path: Path, uids: tuple) -> None:
    store = InstanceStore(tmp_path / "store", 0)
    temp = _temp_with(store)
    with pytest.raises(InvalidUIDError):
        store.commit(temp, *uids)
    assert temp.exists(), "the temp file stays for the caller to discard"
    assert _all_files(tmp_path) == {temp}
    assert sorted(p.name for p in store.root.iterdir()) == [".incoming"]


def test_commit_refuses_temp_outside_incoming(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store", 0)
    outside = tmp_path / "elsewhere.part"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError, match="temp_path"):
        store.commit(outside, STUDY, SERIES, SOP)
    assert outside.exists()


def test_path_for_validates(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    assert store.path_for(STUDY, SERIES, SOP).relative_to(store.root) == Path(
        STUDY, SERIES, SOP + ".dcm"
    )
    with pytest.raises(InvalidUIDError, match="Study Instance UID"):
        store.path_for("../x", SERIES, SOP)


def test_concurrent_commits_of_one_sop_store_it_once(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    temps = [_temp_with(store, f"copy {i}".encode()) for i in range(8)]
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(temps))

    def send(temp: Path) -> None:
        barrier.wait()
        _, stored = store.commit(temp, STUDY, SERIES, SOP)
        with lock:
            results.append(stored)

    threads = [threading.Thread(target=send, args=(t,)) for t in temps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert list(store.incoming.iterdir()) == []
    assert _all_files(store.root) == {store.path_for(STUDY, SERIES, SOP)}


@pytest.mark.parametrize("one_fsync", [False, True])
def test_commit_fsyncs_file_and_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_fsync: bool
) -> None:
    store = InstanceStore(tmp_path, 0, folder_fsync="always")
    store.one_fsync = one_fsync  # "auto" on ext4 / XFS
    temp = _temp_with(store)
    synced: list[str] = []
    real_fsync, real_open = os.fsync, os.open
    names: dict[int, str] = {}

    def tracking_open(path: str | Path, flags: int, *args: int, **kwargs: int) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        names[fd] = str(path)
        return fd

    def tracking_fsync(fd: int) -> None:
        synced.append(names.get(fd, "?"))
        real_fsync(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    final, _ = store.commit(temp, STUDY, SERIES, SOP)
    assert str(store.root) in synced and str(store.root / STUDY) in synced  # new folders
    if one_fsync:
        # linked first: the file's fsync commits its data and its directory entry together
        assert synced[-1] == str(final) and str(temp) not in synced
        return
    assert synced[0] == str(temp), "the data is fsynced before it is moved"
    assert synced[-1] == str(final.parent), "the series folder is fsynced after the rename"


def _sr_like() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    return ds


def test_write_dataset_writes_a_part10_file_atomically(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    ds = _sr_like()
    path = store.write_dataset(ds)
    assert path == store.path_for(STUDY, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.Modality == "SR"
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert list(store.incoming.iterdir()) == []


def test_write_dataset_rejects_bad_uids_and_leaves_nothing(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "s", 0)
    ds = _sr_like()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value
        ds.SeriesInstanceUID = "../../escape"
    with pytest.raises(InvalidUIDError):
        store.write_dataset(ds)
    del ds.SeriesInstanceUID
    with pytest.raises(InvalidUIDError, match="Series Instance UID"):
        store.write_dataset(ds)
    assert _all_files(tmp_path) == set()


def test_remove_study_deletes_only_that_study(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    kept, _ = store.commit(_temp_with(store), "1.9", SERIES, SOP)
    store.commit(_temp_with(store), STUDY, SERIES, SOP)
    store.commit(_temp_with(store), STUDY, "1.2.3.5", "1.2.3.5.1")
    store.remove_study(STUDY)
    assert not (store.root / STUDY).exists() and kept.exists()
    store.remove_study(STUDY)  # already gone: fine
    with pytest.raises(InvalidUIDError):
        store.remove_study("..")
    # the study can be received again after removal
    _, stored = store.commit(_temp_with(store), STUDY, SERIES, SOP)
    assert stored


def test_commit_after_another_process_removed_the_study(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    store.commit(_temp_with(store), STUDY, SERIES, SOP)
    shutil.rmtree(store.root / STUDY)  # retention in another node sharing the store
    final, stored = store.commit(_temp_with(store, b"again"), STUDY, SERIES, SOP)
    assert stored and final.read_bytes() == b"again"
    shutil.rmtree(store.root / STUDY)
    path = store.write_dataset(_sr_like())
    assert path.exists()


def test_purge_incoming_removes_only_old_temp_files(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, 0)
    old, fresh = _temp_with(store), _temp_with(store)
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    assert store.purge_incoming(older_than_seconds=600) == 1
    assert not old.exists() and fresh.exists()
    assert store.purge_incoming(older_than_seconds=600) == 0


def test_free_space_threshold(tmp_path: Path) -> None:
    assert InstanceStore(tmp_path, 0).has_free_space()
    assert not InstanceStore(tmp_path, 10**9).has_free_space()  # one petabyte
    with pytest.raises(ValueError, match="min_free_mb"):
        InstanceStore(tmp_path, -1)


def test_filesystem_type_of_the_store_is_read_from_mountinfo(tmp_path: Path) -> None:
    from storage.instance_store import _mount_of

    kind, _device = _mount_of(tmp_path)
    assert kind and " " not in kind  # e.g. ext4, xfs, tmpfs, overlay


def _block_device(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A fake /sys with block device 254:0 named `name`, and an empty fake /proc."""
    sys_root, proc_root = tmp_path / "sys", tmp_path / "proc"
    (sys_root / "devices" / "virtual" / "block" / name).mkdir(parents=True)
    (sys_root / "dev" / "block").mkdir(parents=True)
    (sys_root / "dev" / "block" / "254:0").symlink_to(f"../../devices/virtual/block/{name}")
    proc_root.mkdir()
    return sys_root, proc_root


@pytest.mark.parametrize(
    ("journal_task", "jbd2", "expected"),
    [
        ("412\n", None, True),  # jbd2 thread of a journaled ext4
        ("<none>\n", None, False),  # made without a journal (mkfs.ext4 -O ^has_journal)
        (None, "vda-8", True),  # kernels without journal_task: the jbd2 entry says it
        (None, "vdb-8", False),  # another device's journal
        (None, None, False),  # cannot tell: two fsyncs
    ],
)
def test_has_journal_reads_the_ext4_journal_of_the_stores_device(
    tmp_path: Path, journal_task: str | None, jbd2: str | None, expected: bool
) -> None:
    from storage.instance_store import has_journal

    sys_root, proc_root = _block_device(tmp_path, "vda")
    if journal_task is not None:
        (sys_root / "fs" / "ext4" / "vda").mkdir(parents=True)
        (sys_root / "fs" / "ext4" / "vda" / "journal_task").write_text(journal_task)
    if jbd2 is not None:
        (proc_root / "fs" / "jbd2" / jbd2).mkdir(parents=True)
    assert has_journal("254:0", proc_root, sys_root) is expected
    assert has_journal("254:7", proc_root, sys_root) is False  # no such device


def test_auto_store_commits_with_two_fsyncs_unless_the_link_is_journaled(tmp_path: Path) -> None:
    """On this machine's own file system: "auto" takes one fsync only where fsync_commits_link
    says the journal covers the link (the development VM's ext4 has no journal: two)."""
    from storage.instance_store import _mount_of, fsync_commits_link, has_journal

    fstype, device = _mount_of(tmp_path)
    journaled = fstype == "xfs" or (fstype == "ext4" and has_journal(device))
    assert fsync_commits_link(fstype, device) is journaled
    assert InstanceStore(tmp_path / "a", 0).one_fsync is journaled
    assert InstanceStore(tmp_path / "b", 0, folder_fsync="always").one_fsync is False


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_commit_flushes_once_on_journaling_file_systems_twice_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    import storage.instance_store as instance_store

    synced: list[Path] = []
    monkeypatch.setattr(instance_store, "_fsync_path", synced.append)
    store = InstanceStore(tmp_path / "store", 0, folder_fsync=mode)
    store.one_fsync = mode == "auto"  # as on ext4 / XFS, whatever the test machine has
    store._durable_dirs.add(store.root / "1.2")  # folders made durable already
    store._durable_dirs.add(store.root / "1.2" / "1.2.3")
    (store.root / "1.2" / "1.2.3").mkdir(parents=True)
    temp = store.temp_path()
    temp.write_bytes(b"x" * 100)
    final, new = store.commit(temp, "1.2", "1.2.3", "1.2.3.4")
    assert new and final.read_bytes() == b"x" * 100 and not temp.exists()
    if mode == "auto":
        assert synced == [final]  # the file after its link: data and name in one commit
    else:
        assert synced == [temp, final.parent]


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_after_an_early_data_sync_commit_flushes_only_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The receiver starts a DataSync of the streamed file before it reads the header; the
    commit waits for it before linking, then makes only the new name durable: by the file's
    fsync on XFS and journaled ext4, by the folder's elsewhere (no second flush of the file)."""
    import storage.data_sync as data_sync
    import storage.instance_store as instance_store

    events: list[str] = []
    real_fdatasync, real_link = os.fdatasync, os.link

    def tracking_fdatasync(fd: int) -> None:
        real_fdatasync(fd)
        events.append("data synced")

    def tracking_link(src: Path, dst: Path) -> None:
        events.append("linked")
        real_link(src, dst)

    monkeypatch.setattr(data_sync.os, "fdatasync", tracking_fdatasync)
    monkeypatch.setattr(instance_store, "_fsync_path", lambda path: events.append(f"fsync {path}"))
    store = InstanceStore(tmp_path / "store", 0, folder_fsync=mode)
    store.one_fsync = mode == "auto"
    store._durable_dirs.update({store.root / "1.2", store.root / "1.2" / "1.2.3"})
    (store.root / "1.2" / "1.2.3").mkdir(parents=True)
    temp = store.temp_path()
    temp.write_bytes(b"x" * 100)
    sync = DataSync(temp)
    monkeypatch.setattr(instance_store.os, "link", tracking_link)
    final, new = store.commit(temp, "1.2", "1.2.3", "1.2.3.4", data_sync=sync)
    assert new and final.read_bytes() == b"x" * 100 and not temp.exists()
    if mode == "always":  # the link is not journaled: the folder's fsync writes the entry
        assert events == ["data synced", "linked", f"fsync {final.parent}"]
        return
    assert events == ["data synced", "linked", f"fsync {final}"]
    with pytest.raises(OSError):
        os.getxattr(final, "user.lungnode.pending")  # complete before it had a name


def test_an_early_data_sync_that_fails_fails_the_commit_and_links_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import storage.data_sync as data_sync

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_sync.os, "fdatasync", full)
    store = InstanceStore(tmp_path / "store", 0)
    store.one_fsync = True  # only the one-fsync commit (XFS, journaled ext4) waits for it
    temp = store.temp_path()
    temp.write_bytes(b"x" * 100)
    with pytest.raises(OSError) as raised:
        store.commit(temp, "1.2", "1.2.3", "1.2.3.4", data_sync=DataSync(temp))
    assert raised.value.errno == errno.ENOSPC
    assert not store.path_for("1.2", "1.2.3", "1.2.3.4").exists()


def test_a_copy_linked_but_never_fsynced_is_replaced_by_the_retry(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store", 0)
    final = store.path_for("1.2", "1.2.3", "1.2.3.4")
    final.parent.mkdir(parents=True)
    final.write_bytes(b"x" * 10)  # linked, never fsynced, never acknowledged (a power cut)
    try:
        os.setxattr(final, "user.lungnode.pending", b"another-boot:1")
    except OSError:
        pytest.skip("no extended attributes here")
    temp = store.temp_path()
    temp.write_bytes(b"y" * 100)
    assert store.commit(temp, "1.2", "1.2.3", "1.2.3.4") == (final, True)
    assert final.read_bytes() == b"y" * 100
    again = store.temp_path()
    again.write_bytes(b"z" * 200)  # a duplicate of a durable copy: the first copy stays
    assert store.commit(again, "1.2", "1.2.3", "1.2.3.4") == (final, False)
    assert final.read_bytes() == b"y" * 100 and not again.exists()


def test_folder_fsync_mode_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder_fsync"):
        InstanceStore(tmp_path / "store", 0, folder_fsync="never")


@pytest.mark.parametrize("one_fsync", [True, False], ids=["one-fsync", "folder-fsync"])
@pytest.mark.parametrize("early_sync", [False, True], ids=["plain", "early-data-sync"])
def test_a_duplicate_is_answered_only_once_the_stored_copy_is_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_fsync: bool, early_sync: bool
) -> None:
    """Issue 17, item 2: a second copy arriving while the first copy's commit is between its
    link and its (slowed) flush is not "already stored" before the stored copy is durable."""
    import storage.instance_store as instance_store

    store = InstanceStore(tmp_path / "store", 0, folder_fsync="always")
    store.one_fsync = one_fsync  # "auto" on ext4 / XFS
    final = store.path_for(STUDY, SERIES, SOP)
    events: list[tuple[str, Path]] = []
    linked, release = threading.Event(), threading.Event()
    real_fsync, real_link = instance_store._fsync_path, InstanceStore._link_into_place

    def slow_fsync(path: Path) -> None:
        if threading.current_thread().name == "first" and linked.is_set():
            assert release.wait(10), "the first commit's flush was never released"
        real_fsync(path)
        events.append(("fsync", Path(path)))

    def link(temp: Path, to: Path) -> bool:
        done = real_link(temp, to)
        events.append(("link", to))
        if threading.current_thread().name == "first":
            linked.set()
        return done

    monkeypatch.setattr(instance_store, "_fsync_path", slow_fsync)
    monkeypatch.setattr(InstanceStore, "_link_into_place", staticmethod(link))
    first_temp, second_temp = _temp_with(store, b"copy"), _temp_with(store, b"copy")
    sync = DataSync(first_temp) if early_sync else None
    results: list[tuple[Path, bool]] = []
    first = threading.Thread(
        target=lambda: results.append(store.commit(first_temp, STUDY, SERIES, SOP, data_sync=sync)),
        name="first",
    )
    first.start()
    try:
        assert linked.wait(10), "the first copy was never linked"
        assert store.commit(second_temp, STUDY, SERIES, SOP) == (final, False)
        answered = list(events)
    finally:
        release.set()
        first.join(10)
    after_link = answered[answered.index(("link", final)) + 1 :]
    assert ("fsync", final) in after_link, "the stored copy's data was not flushed"
    assert ("fsync", final.parent) in after_link, "the stored copy's name was not flushed"
    assert results == [(final, True)] and final.read_bytes() == b"copy"
    assert not second_temp.exists()
