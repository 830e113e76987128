"""Directory entries made durable: what LevelDB 1.22 leaves to the file system.

LevelDB fsyncs the data of its files, but a new file's directory entry (a new log,
the ``CURRENT`` rename) is durable only once the directory itself is fsynced, which
1.22 does for a new MANIFEST only. On a file system that keeps only what was fsynced
(the strict POSIX model), a power loss can then drop a log whose records were
acknowledged, or leave ``CURRENT`` pointing at nothing. So before a write is
acknowledged, :class:`DirectoryWatch` fsyncs the database directory if its entries
changed since it last did; and a new database is built in a hidden sibling and
renamed into place (:func:`create_atomically`), so a first open that is interrupted
leaves either nothing or a whole database.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: False drops the directory fsyncs: only the power-loss tests' negative control sets it
SYNC_DIRECTORIES = True


def fsync_path(path: str) -> None:
    """fsync a file or directory by name (a directory must be opened read-only)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str) -> None:
    if SYNC_DIRECTORIES:
        fsync_path(path)


class DirectorySyncFailed(Exception):
    """The directory could not be read or fsynced: whether the entries are durable is unknown."""


class DirectoryWatch:
    """Fsyncs one directory whenever its entries changed since the last fsync.

    The check is a ``scandir`` of names and inode numbers (no ``stat`` per file): a
    created, removed or renamed-over file changes it. Thread-safe; the lock is held
    across the fsync so that no writer acknowledges while another's fsync is in flight.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._synced: frozenset[tuple[str, int]] | None = None
        self.checks = 0
        self.syncs = 0

    def make_durable(self) -> None:
        """Return once every entry the directory has now is durable; raises DirectorySyncFailed."""
        with self._lock:
            self.checks += 1
            try:
                with os.scandir(self.path) as it:
                    entries = frozenset((e.name, e.inode()) for e in it)
                if entries == self._synced:
                    return
                fsync_directory(self.path)  # covers every change made before the scan, and maybe more
            except OSError as e:
                raise DirectorySyncFailed(f"cannot make the entries of {self.path} durable: {e.strerror}") from None
            self._synced = entries
            self.syncs += 1


def create_atomically(path: str, build: Callable[[str], None]) -> bool:
    """Create the directory ``path`` whole or not at all: ``build`` fills a hidden sibling,
    every file there is fsynced, and it is renamed into place and the parent fsynced.

    ``path`` may be missing or an empty directory (which the rename replaces). Returns
    False if another process created ``path`` first (nothing of ours is left then).
    A directory that cannot be replaced (a mount point) is built in place instead:
    not atomic, and logged.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    prefix = f".{os.path.basename(path)}.creating-"
    _remove_abandoned(parent, prefix)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    # held until we return: a sibling whose lock can be taken was left by a creator that died
    held = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        build(tmp)
        for name in os.listdir(tmp):
            fsync_path(os.path.join(tmp, name))
        fsync_directory(tmp)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            log.warning("cannot rename a new database onto %s (%s): creating it in place, not atomically", path, e)
            build(path)
            for name in os.listdir(path):
                fsync_path(os.path.join(path, name))
            fsync_directory(path)
        fsync_directory(parent)
        return True
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(held)


def _remove_abandoned(parent: str, prefix: str) -> None:
    """Remove the hidden siblings that creators killed mid-creation left behind (their lock is
    free); a creation in progress holds its lock and is left alone."""
    for leftover in glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*")):
        try:
            fd = os.open(leftover, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone already, or not a directory of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its creator is alive
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, left by a creation that did not finish", leftover)
        finally:
            os.close(fd)
