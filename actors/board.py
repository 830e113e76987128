"""Where callers wait for executions to finish.

Not an actor: waiting must not occupy an actor thread, and a counter actor publishes
right after the finishing write is durable. A waiter registers
*before* it reads the execution's state, so a finish can never slip between the
read and the wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from taskengine.storage import Execution

from .mailbox import Reply


class CompletionBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Reply[Execution]]] = {}
        # execution id -> ids of idempotent repeats whose callers wait for its outcome
        self._followers: dict[str, list[str]] = {}
        self._closed: Callable[[], BaseException] | None = None

    def watch(self, execution_id: str) -> Reply[Execution]:
        fut: Reply[Execution] = Reply()
        with self._lock:
            if self._closed is not None:
                error = self._closed()  # a fresh exception for every waiter
                fut.set_exception((type(error), error, None))
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

    def follow(self, execution_id: str, follower_id: str) -> None:
        """The waiters of ``follower_id`` (an idempotent repeat) get ``execution_id``'s outcome.
        Called by the counter actor in the turn that sees the repeat, so the outcome, which
        that same actor publishes later, cannot slip past."""
        with self._lock:
            if self._closed is None:
                self._followers.setdefault(execution_id, []).append(follower_id)

    def unfollow(self, execution_id: str, follower_id: str) -> None:
        with self._lock:
            followers = self._followers.get(execution_id)
            if followers and follower_id in followers:
                followers.remove(follower_id)
                if not followers:
                    del self._followers[execution_id]

    def _take(self, execution_id: str) -> list[Reply[Execution]]:
        futs = list(self._watchers.pop(execution_id, ()))
        for follower in self._followers.pop(execution_id, ()):
            futs += self._watchers.pop(follower, ())
        return futs

    def publish(self, execution: Execution) -> None:
        with self._lock:
            futs = self._take(execution.id)
        for fut in futs:
            fut.set(execution)

    def fail(self, execution_id: str, error: BaseException) -> None:
        with self._lock:
            futs = self._take(execution_id)
        for fut in futs:
            fut.set_exception((type(error), error, None))

    def close(self, make_error: Callable[[], BaseException]) -> None:
        """Answer every waiter, now and later, with a fresh ``make_error()`` (the first close wins)."""
        with self._lock:
            if self._closed is None:
                self._closed = make_error
            make_error = self._closed
            watchers, self._watchers = self._watchers, {}
            self._followers.clear()
        for futs in watchers.values():
            for fut in futs:
                error = make_error()
                fut.set_exception((type(error), error, None))

    def __len__(self) -> int:
        return len(self._watchers)
