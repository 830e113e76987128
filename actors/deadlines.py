"""One watchdog thread that calls back at deadlines (the executor pool's job timeouts).

A cancelled deadline is forgotten at once, and the heap is rebuilt when cancelled entries
make up most of it, so memory follows the deadlines pending, not the executions finished.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._callbacks: dict[int, Callable[[], None]] = {}  # handle -> callback, while pending
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="taskengine-deadlines", daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], None]) -> int:
        handle = next(self._ids)
        with self._cond:
            self._callbacks[handle] = callback
            heapq.heappush(self._heap, (time.monotonic() + delay, handle))
            self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            if self._callbacks.pop(handle, None) is not None and len(self._heap) > 2 * len(self._callbacks) + 64:
                self._heap = [entry for entry in self._heap if entry[1] in self._callbacks]
                heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._callbacks)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                callback = None
                while not self._stopped and callback is None:
                    while self._heap and self._heap[0][1] not in self._callbacks:
                        heapq.heappop(self._heap)  # cancelled
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        callback = self._callbacks.pop(heapq.heappop(self._heap)[1])
                    else:
                        self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if callback is None:
                    return
            try:
                callback()
            except Exception:
                log.exception("deadline callback failed")
