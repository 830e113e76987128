"""One watchdog thread that calls back at deadlines (the executor pool's job timeouts)."""

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
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="taskengine-deadlines", daemon=True)
        self._thread.start()

    def schedule(self, delay: float, callback: Callable[[], None]) -> int:
        handle = next(self._ids)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, handle, callback))
            self._cond.notify()
        return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._cancelled.add(handle)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    while self._heap and self._heap[0][1] in self._cancelled:
                        self._cancelled.discard(heapq.heappop(self._heap)[1])
                    if self._heap and self._heap[0][0] <= now:
                        _, _, callback = heapq.heappop(self._heap)
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                else:
                    return
            try:
                callback()
            except Exception:
                log.exception("deadline callback failed")
