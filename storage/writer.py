"""The single writer of a database: group commit.

Every change is submitted as a list of operations that is applied atomically (one
LevelDB write batch). Submissions queued while a write is in progress are merged
into the next write, so many concurrent changes share one fsync. A submission's
callback runs only after its write is durable (``sync=True``), or applied
(``sync=False``); callbacks run in submission order on the writer thread and
must be quick.

Ordering is total: a later submission is never durable before an earlier one.
That is what lets a counter hand out index ``i+1`` before ``i`` is on disk.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import keys
from .errors import StorageError

log = logging.getLogger(__name__)

Put = tuple[bytes, bytes]  # (key, value)
Delete = tuple[bytes, None]  # (key, None)


class DeletePrefix:
    """Delete every key under ``prefix`` as it stands when this submission is applied,
    including keys written by earlier submissions of the same group."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix


Op = Put | Delete | DeletePrefix
Done = Callable[[BaseException | None], None]


class WriterFailed(StorageError):
    """A write failed; nothing more is written so no index can be issued over a hole."""


class GroupCommitWriter:
    def __init__(self, raw_db: Any, *, sync: bool = True, max_group: int = 4096, window: float = 0.0) -> None:
        """``window``: seconds to wait for more submissions before a write (0: write as soon
        as the previous write ends). A window adds latency; it never weakens durability."""
        self._db = raw_db
        self._sync = sync
        self._max_group = max_group
        self._window = window
        self._queue: collections.deque[tuple[int, Sequence[Op], Done | None]] = collections.deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._durable = 0
        self._closing = False
        self._failed: BaseException | None = None
        self.writes = 0
        self.submissions = 0
        self._thread = threading.Thread(target=self._run, name="taskengine-writer", daemon=True)
        self._thread.start()

    @property
    def durable_seq(self) -> int:
        return self._durable

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    def submit(self, ops: Sequence[Op], done: Done | None = None) -> int:
        """Queue one atomic change; returns its sequence number. An empty ``ops`` is a barrier:
        its callback runs once everything submitted before it is durable."""
        with self._cond:
            if self._failed is not None or self._closing:
                err: BaseException = self._failed or WriterFailed("the writer is closed")
                if done is not None:
                    done(WriterFailed(f"an earlier write failed: {err}") if self._failed else err)
                return self._submitted
            self._submitted += 1
            seq = self._submitted
            self._queue.append((seq, ops, done))
            if len(self._queue) == 1:
                self._cond.notify()
            return seq

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block until submission ``seq`` (and all before it) is durable."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._durable < seq and self._failed is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._durable >= seq

    def close(self) -> None:
        """Write everything queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
            if self._window > 0:
                time.sleep(self._window)  # a batching window, documented as such, never a sync stand-in
            with self._cond:
                n = min(len(self._queue), self._max_group)
                group = [self._queue.popleft() for _ in range(n)]
            self._write_group(group)

    def _write_group(self, group: list[tuple[int, Sequence[Op], Done | None]]) -> None:
        error: BaseException | None = None
        try:
            batch = self._db.write_batch(sync=self._sync)
            for _, ops, _ in group:
                for op in ops:
                    if isinstance(op, DeletePrefix):
                        # earlier submissions of this group must be visible to the scan
                        batch.write()
                        batch = self._db.write_batch(sync=self._sync)
                        with self._db.iterator(
                            start=op.prefix, stop=keys.prefix_end(op.prefix), include_value=False
                        ) as it:
                            for key in it:
                                batch.delete(key)
                    elif op[1] is None:
                        batch.delete(op[0])
                    else:
                        batch.put(op[0], op[1])
            batch.write()
        except BaseException as e:  # a disk error: stop writing rather than issue over a hole
            log.critical("database write failed; the engine stops writing: %s", e)
            error = WriterFailed(f"database write failed: {e}")
        with self._cond:
            if error is not None:
                self._failed = error
                failed_later = list(self._queue)
                self._queue.clear()
            else:
                failed_later = []
                self._durable = group[-1][0]
                self.writes += 1
                self.submissions += len(group)
            self._cond.notify_all()
        for _, _, done in group:
            if done is not None:
                _call(done, error)
        for _, _, done in failed_later:
            if done is not None:
                _call(done, error)


def _call(done: Done, error: BaseException | None) -> None:
    try:
        done(error)
    except Exception:  # a callback's bug must not stop the writer
        log.exception("write callback failed")
