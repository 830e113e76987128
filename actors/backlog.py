"""Backpressure: the executions an engine has accepted and not started, against ``max_queued``.

Counter actors reserve a place when they accept a trigger, in the same handling that would
assign its index, so a refused trigger uses no index; several counter actors share one
backlog, so the bound is the engine's, not a task's. A place is released when the execution
starts, or leaves the queue without starting (cancelled, its task deleted, its executor given
up on). Places are held by execution id, so a release that comes twice releases once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Backlog:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        #: the most places ever held at once
        self.peak = 0

    def reserve(self, execution_id: str) -> bool:
        """Take a place for a new execution; False (nothing taken) when the backlog is full."""
        with self._lock:
            if len(self._ids) >= self.limit:
                return False
            self._ids.add(execution_id)
            self.peak = max(self.peak, len(self._ids))
            return True

    def add(self, execution_ids: Iterable[str]) -> None:
        """Executions accepted before this engine opened (recovered PENDING ones): counted, even
        beyond the limit, so new triggers wait until they have started."""
        with self._lock:
            self._ids.update(execution_ids)
            self.peak = max(self.peak, len(self._ids))

    def release(self, execution_id: str) -> bool:
        """Give a place back; whether one was held."""
        with self._lock:
            if execution_id not in self._ids:
                return False
            self._ids.remove(execution_id)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)
