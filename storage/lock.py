"""The database's own lock: one holder per database, whatever else the process does.

LevelDB's ``LOCK`` is a POSIX ``fcntl`` lock. Those belong to the process and vanish
when *any* descriptor of the file is closed: a failed second open in the same
process, a tool opening the same path in-process, ``shutil.copytree`` of the
directory or a plain ``open(path + "/LOCK").close()`` would each let another
process in while the first still writes. So before LevelDB is touched the
database takes two guards of its own:

- an in-process registry keyed by the directory's device and inode, so a second
  opener in this process is refused without opening any file of the database;
- a BSD ``flock`` on ``taskengine.lock`` in the directory. ``flock`` belongs to the
  open file description, so closing other descriptors of the file (or of ``LOCK``)
  never drops it, and it is released only when this holder closes it or dies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading

from .errors import ReadOnlyDatabase, StorageError, StorageLocked

#: the lock file's name inside a database directory (LevelDB ignores files it does not know)
LOCK_FILE = "taskengine.lock"

_registry_lock = threading.Lock()
_held: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) of a directory -> path it was opened as

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def read_only_error(path: str, e: OSError) -> ReadOnlyDatabase:
    return ReadOnlyDatabase(
        f"database directory {path!r} is not writable ({e.strerror}); LevelDB writes its lock and log "
        "files even to read, so give this process write access, or copy the directory somewhere "
        "writable and open the copy"
    )


class DirectoryLock:
    """Held from :meth:`acquire` to :meth:`release` (idempotent)."""

    def __init__(self, path: str, key: tuple[int, int], fd: int) -> None:
        self.path = path
        self._key = key
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str) -> DirectoryLock:
        """StorageLocked if this process or another holds ``path``; ReadOnlyDatabase if the
        directory cannot be written."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise StorageError(f"cannot open {path!r}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino)
        with _registry_lock:
            if key in _held:
                raise StorageLocked(path, f"it is already open in this process (as {_held[key]!r})")
            try:
                fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno in _READ_ONLY:
                    raise read_only_error(path, e) from None
                raise StorageError(f"cannot open {path!r}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise StorageLocked(path, "another process holds it") from None
                raise StorageError(f"cannot lock {path!r}: {e.strerror}") from None
            _held[key] = path
        return cls(path, key, fd)

    def release(self) -> None:
        with _registry_lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            _held.pop(self._key, None)
            os.close(fd)
