"""Applying changes: many atomic changes, one LevelDB write.

A change is a list of operations that must be applied all-or-nothing (see
``changes.py``). ``Committer.write`` applies several changes in one write batch,
so they share one fsync: that is the group commit. Each counter actor gathers the
changes of every message waiting in its inbox and writes them with one call;
writes of different counter actors are made one at a time (see ``Committer``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from . import capi, durable, keys
from .db import Database, plyvel_message
from .errors import WriteFailed
from .interface import Node, StoredTask

log = logging.getLogger(__name__)

Put = tuple[bytes, bytes]  # (key, value)
Delete = tuple[bytes, None]  # (key, None)


class DeletePrefix:
    """Delete every key under ``prefix``: those on disk and those put by earlier changes of the
    same write. The whole write stays one atomic LevelDB batch."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix


Op = Put | Delete | DeletePrefix


class Committer:
    """Writes groups of changes to one database. Thread-safe: counter actors share one.

    LevelDB 1.22 moves its log position even when a write to the log fails, so a later
    write that succeeds lands misaligned, and recovery drops it. So after the first failed
    write nothing more is written through this database by anyone: the committer is
    *failed* and refuses every write until the database is reopened. Writes are made one at
    a time under the database's write lock, so no write can slip in between a failure and
    the refusal, and ``Database.close`` never frees the handle under a write.
    """

    #: the database's one writer: every change applies, ``write`` never reports a miss
    may_miss = False

    def __init__(self, db: Database, *, sync: bool = True) -> None:
        self._database = db
        self._db = db.raw
        self.sync = sync
        self._capi = capi.open_writer(db.raw, sync=sync)  # None: plyvel's batches for everything
        self._lock = db.write_lock
        # with sync, a write is acknowledged only once the directory entries it needs are durable too
        self.directory = durable.DirectoryWatch(db.path) if sync else None
        if self.directory is not None:
            db.closing.append(self.directory.close)
        self.failure: str | None = None  # why the first failed write failed
        self.writes = 0
        self.changes = 0
        #: told (changes, seconds) after each write when set: the engine's hooks, if one wants it
        self.on_write: Callable[[int, float], None] | None = None
        self.on_failure: Callable[[], None] | None = None  # never called: it fails only in a write
        self.node: Node | None = None

    def begin(self, task_ids: Callable[[], Collection[str]]) -> list[StoredTask] | None:
        """Nothing to lock: this is the database's one writer, and the counter actors' memory is
        authoritative."""
        return None

    def begin_stamped(self, tasks: Mapping[str, str | None]) -> bool:
        """No: the counter actors' counters are the database's (see ``begin``)."""
        return False

    def write_stamped(self, changes: Sequence[Sequence[Op]]) -> dict[str, int]:
        """Never asked for (``begin_stamped`` says no); were it, nothing moves a counter but its
        counter actor: no shift."""
        self.write(changes)
        return {}

    def lane(self, number: int) -> Committer:
        """Itself: LevelDB's writes are serial (one write lock), so every counter actor shares it."""
        return self

    def write(self, changes: Sequence[Sequence[Op]]) -> Collection[int]:
        """Apply ``changes`` (each atomic, all in order) durably if ``sync``; raises WriteFailed:
        with ``outcome_unknown`` if this write failed, without if it was refused unwritten.

        Durably means the data and the directory entries it lives in (a new log file):
        LevelDB 1.22 fsyncs the one but not always the other."""
        observe = self.on_write
        with self._lock:
            refused = self.refusal()
            if refused is not None:
                raise refused
            if self._db.closed:
                raise WriteFailed(f"the database at {self._database.path} is closed", outcome_unknown=False)
            try:
                batch = self._plain_batch(changes)
                if batch is None:  # a prefix deletion: it must also see the keys put before it
                    batch = self._tracked_batch(changes)
                if observe is None:
                    batch.write()
                else:
                    began = time.perf_counter()
                    batch.write()
                    took = time.perf_counter() - began
                if self.directory is not None:
                    self.directory.make_durable()
            except Exception as e:  # plyvel raises its own IOError / RuntimeError
                self.failure = plyvel_message(e)
                log.critical("database write failed at %s: %s; no more writes until it is reopened",
                             self._database.path, self.failure)
                raise WriteFailed(
                    f"database write failed ({self.failure}): the outcome is unknown, the change may be "
                    "on disk and appear after a restart; nothing more is written until the engine is "
                    "reopened, and a retry with the same idempotency key is then safe",
                    outcome_unknown=True,
                ) from None
            self.writes += 1
            self.changes += len(changes)
        if observe is not None:
            observe(len(changes), took)
        return ()  # one writer: every change applies

    def refusal(self) -> WriteFailed | None:
        """After a failed write, the error that refuses a call: a fresh one each time, so no
        traceback is carried from one refused call to the next."""
        if self.failure is None:
            return None
        return WriteFailed(
            f"refused: an earlier write to the database at {self._database.path} failed "
            f"({self.failure}); nothing is written until the engine is reopened, and this call "
            "changed nothing",
            outcome_unknown=False,
        )

    def _plain_batch(self, changes: Sequence[Sequence[Op]]) -> Any:
        """The batch of puts and deletes (the hot path, through the C API where it can be), or
        None at the first DeletePrefix."""
        batch = self._capi.batch() if self._capi is not None else self._db.write_batch(sync=self.sync)
        put, delete = batch.put, batch.delete
        built = False
        try:
            for ops in changes:
                for op in ops:
                    if type(op) is not tuple:
                        return None
                    if op[1] is None:
                        delete(op[0])
                    else:
                        put(op[0], op[1])
            built = True
            return batch
        finally:
            if not built and self._capi is not None:
                batch.close()  # C memory; plyvel's batch is simply dropped

    def _tracked_batch(self, changes: Sequence[Sequence[Op]]) -> Any:
        batch = self._db.write_batch(sync=self.sync)
        put: set[bytes] = set()  # keys this write has put so far
        for ops in changes:
            for op in ops:
                if isinstance(op, DeletePrefix):
                    self._delete_prefix(batch, op.prefix, put)
                elif op[1] is None:
                    batch.delete(op[0])
                else:
                    batch.put(op[0], op[1])
                    put.add(op[0])
        return batch

    def _delete_prefix(self, batch: Any, prefix: bytes, put: set[bytes]) -> None:
        """Deletes in the same batch: on disk under ``prefix``, and what this batch put there."""
        with self._db.iterator(start=prefix, stop=keys.prefix_end(prefix), include_value=False) as it:
            for key in it:
                batch.delete(key)
        for key in [k for k in put if k.startswith(prefix)]:
            batch.delete(key)
            put.discard(key)
