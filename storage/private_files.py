"""Files only for the node: what it creates in the store holds patient data (instances, SR/SEG
results with Patient Name, ID and Birth Date, the index), so folders are 0700 and files 0600.

Two layers, both on purpose:

- `restrict_umask()` sets the process umask to 0o077 when a node command starts (`lungnode
  serve`, `status`, `resend`): files that libraries create for us (SQLite's database, -wal and
  -shm files; pynetdicom's and TensorFlow's temp files) are private too, whatever umask the
  service manager or shell gave the process;
- explicit modes where the node creates things itself (`make_private_dir`, `open_private`,
  `make_private`, `prepare_sqlite_file`): the store stays private when its classes run in
  another process (tests, an embedding application) with a permissive umask, and files and
  folders left world-readable by an earlier version are tightened at start-up.

A umask can only remove permission bits, so the explicit modes never grant more than 0700/0600.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077
SQLITE_PREFIX = "sqlite:///"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def restrict_umask() -> int:
    """Set the process umask to 0o077 (nothing for group or other); returns the previous one."""
    return os.umask(PRIVATE_UMASK)


def make_private(path: Path | str, *, folder: bool = False) -> None:
    """chmod `path` to 0700 (folder) or 0600 (file)."""
    os.chmod(path, PRIVATE_DIR_MODE if folder else PRIVATE_FILE_MODE)


def make_private_dir(folder: Path, *, parents: bool = False) -> bool:
    """Create `folder` with mode 0700 whatever the umask (its missing parents too, when
    `parents`); an existing folder is left as it is. True when this call created it."""
    try:
        folder.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return False
    except FileNotFoundError:
        if not parents:
            raise
        make_private_dir(folder.parent, parents=True)
        return make_private_dir(folder, parents=False)
    os.chmod(folder, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask
    return True


def private_opener(path: str, flags: int) -> int:
    """`opener=` for open(): creates the file 0600 and makes an existing one 0600."""
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare_sqlite_file(database_url: str) -> Path | None:
    """For a `sqlite:///PATH` URL: create PATH's missing folders 0700 and PATH itself as an
    empty file 0600 (an empty file is a valid SQLite database), and make an existing database
    and its -wal/-shm/-journal files 0600. SQLite creates -wal and -shm with the database file's
    mode, so they stay private. Returns the path; None for another URL, ':memory:', or a path
    this process cannot create or change (opening the database then says why)."""
    if not database_url.startswith(SQLITE_PREFIX):
        return None
    location = database_url[len(SQLITE_PREFIX) :]
    if not location or location == ":memory:":
        return None
    path = Path(location)
    try:
        make_private_dir(path.parent, parents=True)
        os.close(private_opener(str(path), os.O_RDWR | os.O_CREAT))
        for suffix in SQLITE_COMPANIONS:
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                make_private(companion)
    except OSError:
        return None  # Database.connect reports what is wrong with the path, naming the URL
    return path
