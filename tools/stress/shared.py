"""A :class:`~taskengine.tools.stress.workload.TaskBook` shared by the node processes of ``stress --nodes``.

Every node's clients delete and re-create the same tasks, and a client on one node must know
that a deletion begun on another one may take its acknowledged execution away (and that a
trigger refused with TaskNotFound is then fine). So the delete-and-recreate counts live in one
small file that every node maps: per task three 64-bit numbers, deletions *started*, cycles
*done* and the *slot* of the node running the deletion under way (0: none). A thread lock and
``flock`` on the file make each change whole across threads and processes.

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
from collections.abc import Iterable, Iterator, Mapping

from .workload import TaskBook

_FIELDS = 3  # started, done, slot
_WORD = struct.Struct("<q")


def create_book(path: str, ids: Iterable[str], base: Mapping[str, int] | None = None) -> None:
    """Write a fresh book for ``ids`` (their deletions so far from ``base``) at ``path``."""
    ids = list(ids)
    base = base or {}
    with open(path, "wb") as f:
        for tid in ids:
            n = int(base.get(tid, 0))
            f.write(_WORD.pack(n) + _WORD.pack(n) + _WORD.pack(0))


class SharedTaskBook(TaskBook):
    """The task book in a file mapped by every node; ``slot`` is this node's (1-based)."""

    def __init__(self, path: str, ids: Iterable[str], slot: int) -> None:
        self._ids = {tid: i for i, tid in enumerate(ids)}
        self._slot = slot
        self._rlock = threading.RLock()
        self._depth = 0  # how deep this process holds the file's lock
        self._fd = os.open(path, os.O_RDWR)
        size = len(self._ids) * _FIELDS * _WORD.size
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

    def _get(self, task: str, field: int) -> int:
        return int(_WORD.unpack_from(self._map, (self._ids[task] * _FIELDS + field) * _WORD.size)[0])

    def _set(self, task: str, field: int, value: int) -> None:
        _WORD.pack_into(self._map, (self._ids[task] * _FIELDS + field) * _WORD.size, value)

    def gen(self, task: str) -> int:
        with self._locked():
            return self._get(task, 1)

    def started(self, task: str) -> int:
        with self._locked():
            return self._get(task, 0)

    def deleted_since(self, task: str, gen: int) -> bool:
        with self._locked():
            return self._get(task, 0) > gen

    def busy(self, task: str) -> bool:
        with self._locked():
            return self._get(task, 0) > self._get(task, 1)

    def begin_delete(self, task: str) -> int | None:
        with self._locked():
            started = self._get(task, 0)
            if started > self._get(task, 1):
                return None
            self._set(task, 0, started + 1)
            self._set(task, 2, self._slot)
            return started + 1

    def end_delete(self, task: str, n: int) -> None:
        with self._locked():
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
