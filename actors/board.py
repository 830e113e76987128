"""Where callers wait for executions to finish.

Not an actor: waiting must not occupy an actor thread, and a counter actor publishes
right after the finishing write is durable. A waiter registers
*before* it reads the execution's state, so a finish can never slip between the
read and the wait.
"""

from __future__ import annotations

import threading

from taskengine.storage import Execution

from .mailbox import Reply


class CompletionBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Reply[Execution]]] = {}
        self._closed: BaseException | None = None

    def watch(self, execution_id: str) -> Reply[Execution]:
        fut: Reply[Execution] = Reply()
        with self._lock:
            if self._closed is not None:
                fut.set_exception((type(self._closed), self._closed, None))
                return fut
            self._watchers.setdefault(execution_id, []).append(fut)
        return fut

    def unwatch(self, execution_id: str, fut: Reply[Execution]) -> None:
        with self._lock:
            futs = self._watchers.get(execution_id)
            if futs and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._watchers[execution_id]

    def publish(self, execution: Execution) -> None:
        with self._lock:
            futs = self._watchers.pop(execution.id, ())
        for fut in futs:
            fut.set(execution)

    def fail(self, execution_id: str, error: BaseException) -> None:
        with self._lock:
            futs = self._watchers.pop(execution_id, ())
        for fut in futs:
            fut.set_exception((type(error), error, None))

    def close(self, error: BaseException) -> None:
        with self._lock:
            self._closed = error
            watchers, self._watchers = self._watchers, {}
        for futs in watchers.values():
            for fut in futs:
                fut.set_exception((type(error), error, None))

    def __len__(self) -> int:
        return len(self._watchers)
