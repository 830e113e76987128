"""What other nodes sharing the database did, turned into this node's work: finished executions
waited for here are published (``Engine.wait``, blocking idempotent repeats return), and PENDING
executions another node made (or left behind when it died) are queued here to be run.

One thread per engine whose store has a changes feed (PostgreSQL). It wakes on a notification
(another node's write that finished executions or made PENDING ones) and every ``poll``
seconds, since a notification can be lost (the listening connection was down); so a remote
finish reaches its waiter at once, and at the latest about ``poll`` seconds after the database
is reachable again. Reads only: a queued execution is run by whichever node's Start claims
it first, so a node that finds one another node runs already is refused, which is normal.

It listens only while it has use for notifications: a caller here waits for an execution
another node may finish, or this node has jobs registered and room in its executors for work
made elsewhere. Otherwise (a node whose executors are all busy, one that only triggers) every
write of every node would wake it for nothing. It listens again, and reads what it may have
missed, as soon as it has use again: the first wait wakes it (``CompletionBoard.on_remote``),
and room is looked for every ``DISCOVERY_GAP`` seconds while there is none.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from taskengine.storage import Execution, ExecutionStatus, records
from taskengine.storage.interface import ALL_CHANGES, FINISHED, PENDING_CREATED, ChangesFeed, Store

from . import messages as m
from .board import CompletionBoard
from .counter import TASK_DELETED
from .errors import EngineClosed, ExecutionNotFound
from .jobs import JobRegistry
from .refs import ActorRefs, ask, tell_if_alive

log = logging.getLogger(__name__)

#: the default of Engine.open's ``poll_interval``: the bound on a remote finish's delay while
#: notifications are lost
POLL_SECONDS = 1.0
#: how many more rows than it has room for a look asks for at most, in place of those it holds
DISCOVERY_SLACK = 1000
#: the least time between two looks for PENDING executions made elsewhere: the notifications of
#: busy nodes come far more often, and each look is a query
DISCOVERY_GAP = 0.1

Reading = Callable[[], contextlib.AbstractContextManager[None]]


class RemoteChanges:
    """The thread that follows ``feed`` for an engine (see the module's docstring)."""

    def __init__(
        self, feed: ChangesFeed, db: Store, board: CompletionBoard, refs: ActorRefs, jobs: JobRegistry,
        reading: Reading, *, poll: float, salt: str,
    ) -> None:
        self._feed = feed
        self._db = db
        self._board = board
        self._refs = refs
        self._jobs = jobs
        self._reading = reading  # the engine's gate: close() waits for a read in progress
        self._poll = poll
        self._salt = salt
        self._after = ""  # where the next look for PENDING executions starts: looks go round the tasks
        # work made elsewhere could be queued here now (jobs registered, room in the executors), as
        # the last look found; with no remote waits, the feed listens only while it could
        self._room = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskengine-remote", daemon=True)
        #: figures the tests read (not in stats()): rounds of each kind, executions found
        self.rounds = {"waits": 0, "discoveries": 0, "published": 0, "discovered": 0}

    def start(self) -> None:
        self._board.on_remote = self._feed.wake
        self._thread.start()

    def job_registered(self) -> None:
        """Work for a job registered just now may wait in the database: look for it."""
        self._feed.wake()

    def stop(self) -> None:
        """Ends the thread (a wait on the feed ends at once) and frees the feed."""
        self._stop.set()
        self._feed.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self._feed.release()

    def _run(self) -> None:
        next_poll = time.monotonic() + self._poll
        discover_due, last_discovery = True, 0.0
        missed = False  # it listens again: what was notified meanwhile is read at once
        while not self._stop.is_set():
            now = time.monotonic()
            wake = next_poll
            if discover_due:
                wake = min(wake, last_discovery + DISCOVERY_GAP)
            kinds = set(ALL_CHANGES) if missed else self._feed.wait(max(0.0, wake - now))
            missed = False  # a read of what was missed that fails is tried again at the next poll, as any
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self._poll
                kinds = set(ALL_CHANGES)
            try:
                try:
                    if FINISHED in kinds:
                        self._waits()
                    discover_due = discover_due or PENDING_CREATED in kinds
                    if discover_due and now - last_discovery >= DISCOVERY_GAP:
                        last_discovery = now
                        more = self._discover()
                        discover_due = discover_due if more is None else more
                finally:  # a read that failed must not keep a wait that began from being heard
                    missed = self._feed.listen(self._room or self._board.has_remote())
            except EngineClosed:
                return
            except Exception as e:  # a read that failed (the server restarts): the next round tries again
                log.warning("reading what other nodes changed failed (%s); trying again in at most %s s",
                            e, self._poll)

    # -- waits -----------------------------------------------------------------------------

    def _waits(self) -> None:
        """Read again every execution waited for here that another node may finish; publish
        the finished ones through their tasks' counter actors."""
        watched = self._board.remote()
        if not watched:
            return
        self.rounds["waits"] += 1
        with self._reading():
            found = self._db.read_executions([(task_id, execution_id) for task_id, execution_id, _ in watched])
        outcomes: dict[str, m.RemoteOutcomes] = {}
        for task_id, execution_id, seen in watched:
            ex = found.get((task_id, execution_id))
            if ex is not None and not ex.status.is_finished:
                self._board.seen(ex)
                continue
            if ex is None:
                if seen is None:
                    continue  # not written yet (a blocking execution queued here)
                gone = self._gone(seen)
                if isinstance(gone, Exception):
                    outcomes.setdefault(task_id, m.RemoteOutcomes([], [])).failed.append((execution_id, gone))
                    continue
                ex = gone
            outcomes.setdefault(task_id, m.RemoteOutcomes([], [])).finished.append(ex)
        for task_id, message in outcomes.items():
            self.rounds["published"] += len(message.finished) + len(message.failed)
            tell_if_alive(self._refs.counter_for(task_id), message)

    def _gone(self, seen: Execution) -> Execution | Exception:
        """A waited-for execution no longer stored: deleted with its task (then CANCELLED, as a
        deletion here answers it), or finished and pruned since it was last read (its outcome
        is lost: ExecutionNotFound)."""
        with self._reading():
            task = self._db.get_task(seen.task_id)
        if task is not None and seen.index is not None and task.prune_mark > seen.index:
            return ExecutionNotFound(seen.task_id, seen.id)
        return records.finished(seen, ExecutionStatus.CANCELLED, time.time(), error=TASK_DELETED)

    # -- discovery -------------------------------------------------------------------------

    def _discover(self) -> bool | None:
        """Queue PENDING executions made elsewhere, as many as this node's executors have room
        for; True if there may be more, None if there was no room to look (it looks again once
        there is: this node's own finishes are not notified to it)."""
        stats = cast(dict[str, int], ask(self._refs.pool, m.PoolStats()))
        room = stats["executors"] - stats["running"] - stats["queued"]
        jobs = self._jobs.names()
        self._room = bool(jobs) and room > 0
        if not jobs:
            return False
        if room <= 0:
            return None
        self.rounds["discoveries"] += 1
        # rows this node holds already (queued here, or being started) come back too and are
        # left out below: ask for enough more that they cannot crowd out the room
        known = cast(int, ask(self._refs.pending, m.PendingCount()))
        with self._reading():
            found, self._after = self._db.pending_elsewhere(jobs, room + min(known, DISCOVERY_SLACK), self._salt,
                                                            self._after)
        if not found:
            return False
        entries = [(ex.task_id, ex.id, cast(int, ex.index)) for ex, _ in found]
        added = {execution_id for _, execution_id, _ in cast(list[Any], ask(self._refs.pending,
                                                                              m.AddUnknown(entries, room)))}
        items = [m.WorkItem(ex, task.job, task.incarnation) for ex, task in found if ex.id in added]
        if items:
            self.rounds["discovered"] += len(items)
            log.info("queued %d PENDING executions made by other nodes", len(items))
            tell_if_alive(self._refs.pool, m.Submit(items))
        return len(found) >= room
