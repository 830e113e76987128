"""A :class:`~taskengine.tools.stress.workload.TaskBook` shared by the node processes of ``stress --nodes``.

Every node's clients delete and re-create the same tasks, and a client on one node must know
that a deletion begun on another one may take its acknowledged execution away (and that a
trigger refused with TaskNotFound is then fine). So the delete-and-recreate counts live in one
small file that every node maps: per task three 64-bit numbers, deletions *started*, cycles
*done* and the *slot* of the node running the deletion under way (0: none). A thread lock and
``flock`` on the file make each change whole across threads and processes. Reads take neither: a
node's clients read the book at every trigger, and a node paused (SIGSTOP) or cut off while holding
the lock would stall every node's clients. A one-byte sequence after the counts, odd while a change
is being written, lets a reader see a whole state without the lock (a seqlock); a reader waits only
for a node stopped in the middle of a change, a window of a few instructions.

A node killed in the middle of a deletion leaves it under way (the task counts as being
deleted, which only loosens the checks). The node that takes its slot finishes it at start-up
(:meth:`SharedTaskBook.finish_slot`), once the driver has made sure nothing of the dead one is
left on the server: the deletion has then happened or never will.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from .workload import TaskBook

_FIELDS = 3  # started, done, slot
_WORD = struct.Struct("<q")
_T = TypeVar("_T")


def create_book(path: str, ids: Iterable[str], base: Mapping[str, int] | None = None) -> None:
    """Write a fresh book for ``ids`` (their deletions so far from ``base``) at ``path``."""
    ids = list(ids)
    base = base or {}
    with open(path, "wb") as f:
        for tid in ids:
            n = int(base.get(tid, 0))
            f.write(_WORD.pack(n) + _WORD.pack(n) + _WORD.pack(0))
        f.write(_WORD.pack(0))  # the sequence (its first byte)


class SharedTaskBook(TaskBook):
    """The task book in a file mapped by every node; ``slot`` is this node's (1-based)."""

    def __init__(self, path: str, ids: Iterable[str], slot: int) -> None:
        self._ids = {tid: i for i, tid in enumerate(ids)}
        self._slot = slot
        self._rlock = threading.RLock()
        self._depth = 0  # how deep this process holds the file's lock
        self._fd = os.open(path, os.O_RDWR)
        self._seq_at = len(self._ids) * _FIELDS * _WORD.size
        size = self._seq_at + _WORD.size
        if os.fstat(self._fd).st_size != size:
            os.close(self._fd)
            raise ValueError(f"task book {path!r} is not a book of {len(self._ids)} tasks")
        self._map = mmap.mmap(self._fd, size)

    def close(self) -> None:
        with self._rlock:
            self._map.close()
            os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._rlock:
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def held(self) -> contextlib.AbstractContextManager[None]:
        """The book locked for a while: no deletion begins or ends on any node meanwhile (a node
        starting up creates the tasks missing so, and never one another node is deleting)."""
        return self._locked()

    def _bump(self) -> None:
        self._map[self._seq_at] = (self._map[self._seq_at] + 1) % 256

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """A change, locked, with the sequence odd while it is written."""
        with self._locked():
            if self._map[self._seq_at] % 2:  # a node killed in the middle of a change left it odd
                self._bump()
            self._bump()
            try:
                yield
            finally:
                self._bump()

    def _read(self, read: Callable[[], _T]) -> _T:
        """``read()`` of a state no change was being written in, without the lock."""
        while True:
            seq = self._map[self._seq_at]
            if seq % 2 == 0:
                value = read()
                if self._map[self._seq_at] == seq:
                    return value
            elif self._dead_writer():
                continue
            time.sleep(0.0005)  # a node is in the middle of a change

    def _dead_writer(self) -> bool:
        """An odd sequence nobody holds the lock for: its writer was killed mid-change; evened
        here (the lock is a process's, so a thread of this one changing is asked first)."""
        if not self._rlock.acquire(blocking=False):
            return False
        try:
            if self._depth:
                return False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                if self._map[self._seq_at] % 2:
                    self._bump()
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            return True
        finally:
            self._rlock.release()

    def _get(self, task: str, field: int) -> int:
        return int(_WORD.unpack_from(self._map, (self._ids[task] * _FIELDS + field) * _WORD.size)[0])

    def _set(self, task: str, field: int, value: int) -> None:
        _WORD.pack_into(self._map, (self._ids[task] * _FIELDS + field) * _WORD.size, value)

    def gen(self, task: str) -> int:
        return self._read(lambda: self._get(task, 1))

    def started(self, task: str) -> int:
        return self._read(lambda: self._get(task, 0))

    def deleted_since(self, task: str, gen: int) -> bool:
        return self._read(lambda: self._get(task, 0) > gen)

    def busy(self, task: str) -> bool:
        return self._read(lambda: self._get(task, 0) > self._get(task, 1))

    def begin_delete(self, task: str) -> int | None:
        with self._changing():
            started = self._get(task, 0)
            if started > self._get(task, 1):
                return None
            self._set(task, 0, started + 1)
            self._set(task, 2, self._slot)
            return started + 1

    def end_delete(self, task: str, n: int) -> None:
        with self._changing():
            self._set(task, 1, n)
            self._set(task, 2, 0)

    def unfinished(self) -> list[tuple[str, int]]:
        """The deletions this slot's earlier node began and never finished: (task, number)."""
        with self._locked():
            return [(t, self._get(t, 0)) for t in self._ids if self._get(t, 2) == self._slot]

    def snapshot(self) -> dict[str, int]:
        """Deletions started, per task."""
        with self._locked():
            return {t: self._get(t, 0) for t in self._ids}


__all__ = ["SharedTaskBook", "create_book"]
