"""Applying changes: many atomic changes, one LevelDB write.

A change is a list of operations that must be applied all-or-nothing (see
``changes.py``). ``Committer.write`` applies several changes in one write batch,
so they share one fsync: that is the group commit. Each counter actor gathers the
changes of every message waiting in its inbox and writes them with one call;
LevelDB itself merges synced writes that different threads make at the same time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from . import capi, keys
from .errors import StorageError

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


class WriteFailed(StorageError):
    """LevelDB refused a write; the caller must not hand out anything the write held."""


class Committer:
    """Writes groups of changes to one database. Thread-safe: counter actors share one."""

    def __init__(self, raw_db: Any, *, sync: bool = True) -> None:
        self._db = raw_db
        self.sync = sync
        self._capi = capi.open_writer(raw_db, sync=sync)  # None: plyvel's batches for everything
        self._lock = threading.Lock()  # guards the figures only; LevelDB serialises writes itself
        self.writes = 0
        self.changes = 0

    def write(self, changes: Sequence[Sequence[Op]]) -> None:
        """Apply ``changes`` (each atomic, all in order) durably if ``sync``; raises WriteFailed."""
        try:
            batch = self._plain_batch(changes)
            if batch is None:  # a prefix deletion: it must also see the keys put before it
                batch = self._tracked_batch(changes)
            batch.write()
        except Exception as e:  # plyvel raises its own IOError / RuntimeError (closed)
            log.critical("database write failed: %s", e)
            raise WriteFailed(f"database write failed: {e}") from e
        with self._lock:
            self.writes += 1
            self.changes += len(changes)

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
