"""Where callers wait for executions to finish.

Not an actor: waiting must not occupy an actor thread, and a counter actor publishes
right after the finishing write is durable. A waiter registers
*before* it reads the execution's state, so a finish can never slip between the
read and the wait.

A watch that names its task may be of an execution another node runs (the database is shared,
PostgreSQL): :meth:`CompletionBoard.remote` lists those for remote.py to read again, with the
record last seen of each, so an execution deleted with its task elsewhere is answered as a
deletion here would answer it. remote.py listens for other nodes' changes only while it has use
for them: the first such watch after none calls ``on_remote`` (it wakes remote.py to listen).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from taskengine.storage import Execution

from .mailbox import Reply


class CompletionBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, list[Reply[Execution]]] = {}
        # execution id -> ids of idempotent repeats whose callers wait for its outcome
        self._followers: dict[str, list[str]] = {}
        self._closed: Callable[[], BaseException] | None = None
        # execution id -> [its task id, its record as last seen unfinished]: watches that may be
        # of an execution run elsewhere; an entry outlives its watchers until remote() drops it
        self._tasks: dict[str, list[Any]] = {}
        #: called (outside the lock) when a watch of an execution run elsewhere comes after none
        self.on_remote: Callable[[], None] | None = None

    def watch(self, execution_id: str, task_id: str | None = None) -> Reply[Execution]:
        """``task_id``: the execution may be run by another node (a wait), not by this one for
        sure (a blocking trigger's own execution)."""
        fut: Reply[Execution] = Reply()
        with self._lock:
            if self._closed is not None:
                error = self._closed()  # a fresh exception for every waiter
                fut.set_exception((type(error), error, None))
                return fut
            self._watchers.setdefault(execution_id, []).append(fut)
            first = task_id is not None and self._remote_entry(execution_id, task_id)
        if first:
            self._first_remote()
        return fut

    def _remote_entry(self, execution_id: str, task_id: str) -> bool:
        """Under the lock: ``execution_id`` may finish elsewhere. True if it is the first such."""
        first = not self._tasks
        self._tasks.setdefault(execution_id, [task_id, None])
        return first

    def _first_remote(self) -> None:
        hook = self.on_remote
        if hook is not None:
            hook()

    def has_remote(self) -> bool:
        """Some execution waited for here may finish elsewhere (a watch that ended may still
        count, until the next :meth:`remote`)."""
        with self._lock:
            return bool(self._tasks)

    def seen(self, execution: Execution) -> None:
        """A waiter read ``execution`` unfinished."""
        with self._lock:
            entry = self._tasks.get(execution.id)
            if entry is not None:
                entry[1] = execution

    def remote(self) -> list[tuple[str, str, Execution | None]]:
        """(task id, execution id, record last seen) of each execution waited for that another
        node may finish."""
        with self._lock:
            for gone in [e for e in self._tasks if e not in self._watchers and e not in self._followers]:
                del self._tasks[gone]
            return [(task_id, execution_id, seen) for execution_id, (task_id, seen) in self._tasks.items()]

    def unwatch(self, execution_id: str, fut: Reply[Execution]) -> None:
        with self._lock:
            futs = self._watchers.get(execution_id)
            if futs and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._watchers[execution_id]

    def follow(self, execution_id: str, follower_id: str, task_id: str) -> None:
        """The waiters of ``follower_id`` (an idempotent repeat) get ``execution_id``'s outcome.
        Called by the counter actor in the turn that sees the repeat, so the outcome, which
        that same actor publishes later (or, run by another node, remote.py), cannot slip past."""
        with self._lock:
            if self._closed is not None:
                return
            self._followers.setdefault(execution_id, []).append(follower_id)
            first = self._remote_entry(execution_id, task_id)
        if first:
            self._first_remote()

    def unfollow(self, execution_id: str, follower_id: str) -> None:
        with self._lock:
            followers = self._followers.get(execution_id)
            if followers and follower_id in followers:
                followers.remove(follower_id)
                if not followers:
                    del self._followers[execution_id]

    def _take(self, execution_id: str) -> list[Reply[Execution]]:
        """The waiters of ``execution_id`` and of its followers, and of theirs: a repeat may follow
        a queued blocking execution that itself comes to follow another node's (counter.py)."""
        futs: list[Reply[Execution]] = []
        todo = [execution_id]
        while todo:
            eid = todo.pop()
            futs += self._watchers.pop(eid, ())
            todo += self._followers.pop(eid, ())
        return futs

    def publish(self, execution: Execution) -> None:
        if not self._watchers and not self._followers:
            # nobody waits (the common case: one publish per execution). A waiter that registers
            # after this look reads the record afterwards, and the record is durable already
            return
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
            self._tasks.clear()
        for futs in watchers.values():
            for fut in futs:
                error = make_error()
                fut.set_exception((type(error), error, None))

    def __len__(self) -> int:
        return len(self._watchers)
