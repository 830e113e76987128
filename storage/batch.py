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

from . import keys
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
        self._lock = threading.Lock()  # guards the figures only; LevelDB serialises writes itself
        self.writes = 0
        self.changes = 0

    def write(self, changes: Sequence[Sequence[Op]]) -> None:
        """Apply ``changes`` (each atomic, all in order) durably if ``sync``; raises WriteFailed."""
        try:
            batch = self._db.write_batch(sync=self.sync)
            put: set[bytes] | None = None  # keys this write puts, tracked only if it deletes a prefix
            if any(isinstance(op, DeletePrefix) for ops in changes for op in ops):
                put = set()
            for ops in changes:
                for op in ops:
                    if isinstance(op, DeletePrefix):
                        assert put is not None
                        self._delete_prefix(batch, op.prefix, put)
                    elif op[1] is None:
                        batch.delete(op[0])
                    else:
                        batch.put(op[0], op[1])
                        if put is not None:
                            put.add(op[0])
            batch.write()
        except Exception as e:  # plyvel raises its own IOError / RuntimeError (closed)
            log.critical("database write failed: %s", e)
            raise WriteFailed(f"database write failed: {e}") from e
        with self._lock:
            self.writes += 1
            self.changes += len(changes)

    def _delete_prefix(self, batch: Any, prefix: bytes, put: set[bytes]) -> None:
        """Deletes in the same batch: on disk under ``prefix``, and what this batch put there."""
        with self._db.iterator(start=prefix, stop=keys.prefix_end(prefix), include_value=False) as it:
            for key in it:
                batch.delete(key)
        for key in [k for k in put if k.startswith(prefix)]:
            batch.delete(key)
            put.discard(key)
