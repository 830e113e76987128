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

Whether the entries changed is asked of the kernel (Linux inotify) where it can be: one
non-blocking read that keeps the interpreter lock. The check runs before every
acknowledgement, and a scan of the directory gives the lock up for every entry it reads,
so each check would hand the lock to waiting threads a dozen times. Elsewhere, or once
the kernel cannot tell any more (the directory was moved or removed), the scan it is.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import glob
import logging
import os
import shutil
import struct
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any

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

    A change is a created, removed or renamed entry. The kernel reports each one (see
    :class:`EntryEvents`) before the call that made it returns, so what a write made is seen
    by the check that follows it. Without that, a ``scandir`` of names and inode numbers
    (no ``stat`` per file) is compared with the last one. Thread-safe; the lock is held
    across the fsync so that no writer acknowledges while another's fsync is in flight.
    ``events=False`` scans from the start.
    """

    def __init__(self, path: str, *, events: bool = True) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._synced: frozenset[tuple[str, int]] | None = None
        # watched before the first check, which fsyncs: every change after it is reported
        self._events = EntryEvents.open(path) if events else None
        self._dirty = True  # a change (or the time before the watch) not fsynced yet
        self.checks = 0
        self.syncs = 0

    @property
    def watching(self) -> bool:
        """True while the kernel reports the changes (no scans)."""
        return self._events is not None

    def make_durable(self) -> None:
        """Return once every entry the directory has now is durable; raises DirectorySyncFailed."""
        with self._lock:
            self.checks += 1
            events = self._events
            if events is not None:
                changed = events.changed()
                if changed is not None:
                    if changed:
                        self._dirty = True
                    if self._dirty:
                        self._fsync()  # covers every change reported so far, and maybe more
                        self._dirty = False
                    return
                self._stop_events("the directory was moved or removed")
            try:
                with os.scandir(self.path) as it:
                    entries = frozenset((e.name, e.inode()) for e in it)
            except OSError as e:
                raise DirectorySyncFailed(f"cannot make the entries of {self.path} durable: {e.strerror}") from None
            if entries == self._synced:
                return
            self._fsync()  # covers every change made before the scan, and maybe more
            self._synced = entries

    def _fsync(self) -> None:
        try:
            fsync_directory(self.path)
        except OSError as e:
            raise DirectorySyncFailed(f"cannot make the entries of {self.path} durable: {e.strerror}") from None
        self.syncs += 1

    def _stop_events(self, why: str) -> None:
        events, self._events = self._events, None
        if events is not None:
            events.close()
            log.info("%s: %s; its entries are compared by scanning from now on", self.path, why)

    def close(self) -> None:
        """Release the kernel's watch (idempotent); a later check scans."""
        with self._lock:
            events, self._events = self._events, None
        if events is not None:
            events.close()


# <sys/inotify.h>
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF, _IN_IGNORED = 0x400, 0x800, 0x8000
_IN_ONLYDIR, _IN_NONBLOCK, _IN_CLOEXEC = 0x1000000, os.O_NONBLOCK, os.O_CLOEXEC
_ENTRY_CHANGES = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF
#: the watch no longer tells what happens at the path: it went, or it names another directory now
_WATCH_LOST = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


@functools.cache
def _inotify() -> tuple[Any, Any] | None:
    """libc's inotify calls (releasing the interpreter lock: they run once) and its read
    (keeping it: a non-blocking read of what is queued), or None where there are none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        drop, keep = ctypes.CDLL(None, use_errno=True), ctypes.PyDLL(None, use_errno=True)
        drop.inotify_init1.argtypes, drop.inotify_init1.restype = [ctypes.c_int], ctypes.c_int
        drop.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        drop.inotify_add_watch.restype = ctypes.c_int
        keep.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        keep.read.restype = ctypes.c_ssize_t
    except (OSError, AttributeError):
        return None
    return drop, keep.read


class EntryEvents:
    """The kernel's reports of entries created, removed or renamed in one directory (inotify)."""

    def __init__(self, fd: int, read: Any) -> None:
        self._fd = fd
        self._read = read
        self._buffer = ctypes.create_string_buffer(4096)
        self._release = weakref.finalize(self, os.close, fd)  # closed with the watch, or when dropped

    @classmethod
    def open(cls, path: str) -> EntryEvents | None:
        """A watch on ``path``, or None where the kernel will not give one (not Linux, the
        per-user limit of inotify instances or watches reached): the caller scans then."""
        libc = _inotify()
        if libc is None:
            return None
        calls, read = libc
        fd = calls.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.info("%s: no inotify instance (%s); its entries are compared by scanning", path,
                     os.strerror(ctypes.get_errno()))
            return None
        if calls.inotify_add_watch(fd, os.fsencode(path), _ENTRY_CHANGES | _IN_ONLYDIR) < 0:
            log.info("%s: no inotify watch (%s); its entries are compared by scanning", path,
                     os.strerror(ctypes.get_errno()))
            os.close(fd)
            return None
        return cls(fd, read)

    def changed(self) -> bool | None:
        """Whether an entry changed since the last call; None if the watch can no longer tell
        (the directory went or was moved, or the queue cannot be read)."""
        changed = False
        buffer = self._buffer
        while True:
            n = self._read(self._fd, buffer, len(buffer))
            if n < 0:
                error = ctypes.get_errno()
                if error == errno.EINTR:
                    continue
                return changed if error == errno.EAGAIN else None
            if n == 0:
                return None
            changed = True  # every event is a change, an overflowed queue (events dropped) too
            raw, at = buffer.raw, 0
            while at < n:
                _, mask, _, size = _EVENT.unpack_from(raw, at)
                if mask & _WATCH_LOST:
                    return None
                at += _EVENT.size + size

    def close(self) -> None:
        self._release()


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
