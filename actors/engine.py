"""The engine: the façade an embedding program calls.

It owns the one store (a LevelDB directory or a PostgreSQL database) and this engine's actors
(counter actors, the pending store, the executor pool), starts them at ``open``,
recovers unfinished work, and stops exactly these actors at ``close``: two engines
in one process never touch each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import pykka

from taskengine.storage import CorruptRecord as StorageCorrupt
from taskengine.storage import Execution, Task
from taskengine.storage.interface import DEFAULT_LEASE, Store, Writer, is_url, open_store

from . import aio, lifecycle, recovery, retention, validate
from . import messages as m
from .backlog import Backlog
from .board import CompletionBoard
from .counter import CounterActor
from .errors import (
    EngineClosed,
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidArgument,
    TaskNotFound,
    UnknownJob,
    no_thread_left,
    storage_errors,
)
from .hooks import Hooks, HookSet, hooks_of
from .ids import new_id
from .jobloop import JobLoop
from .jobs import Job, JobRegistry
from .mailbox import Reply
from .pending import PendingStore
from .pool import ExecutorPool
from .refs import ActorRefs, ask, await_reply, in_job, tell_if_alive
from .remote import POLL_SECONDS, RemoteChanges
from .stats import EngineStats
from .turn import writes_stopped

if TYPE_CHECKING:
    from taskengine.status import StatusServer
    from taskengine.status.server import MetricsSource

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000
#: executors (jobs running at once) unless ``workers`` says otherwise. On LevelDB enough that one
#: usually waits for work when a trigger is handled, so the trigger's write starts the execution
#: (README, "128 workers by default on LevelDB"); on PostgreSQL a turn waits for the server, and
#: executors turn idle meanwhile: 64 are enough there
DEFAULT_WORKERS = 128
DEFAULT_WORKERS_POSTGRES = 64
#: counter actors on PostgreSQL unless told otherwise: each writes through a connection of its own
#: (a writer lane), so their turns are in flight at once (README, "Two counter actors by default on
#: PostgreSQL"); on LevelDB one, whose writes are serial anyway
DEFAULT_COUNTER_ACTORS_POSTGRES = 2


def default_workers(path: str | os.PathLike[str]) -> int:
    """The executors an engine opened on ``path`` (a directory or a URL) runs unless told otherwise.
    Each executor has at most one start waiting for a counter actor's turn, so the workers bound a
    turn's starts; and an execution is started by its trigger's own write only if an executor
    waits for work as the trigger is handled, which on LevelDB's short turns takes about two
    turns' worth of executors."""
    return DEFAULT_WORKERS_POSTGRES if is_url(os.fspath(path)) else DEFAULT_WORKERS


def default_counter_actors(path: str | os.PathLike[str]) -> int:
    """The counter actors an engine opened on ``path`` (a directory or a URL) runs unless told otherwise."""
    return DEFAULT_COUNTER_ACTORS_POSTGRES if is_url(os.fspath(path)) else 1


class Engine:
    """Use :meth:`open`. Every method is thread-safe and may be called from pykka actors."""

    def __init__(
        self, db: Store, committer: Writer, jobs: JobRegistry, refs: ActorRefs, backlog: Backlog | None = None
    ) -> None:
        self._db = db
        self._backlog = backlog
        self._sweep: retention.RetentionSweep | None = None
        self._remote: RemoteChanges | None = None
        self._committer = committer
        self._jobs = jobs
        self._refs = refs
        self._board = CompletionBoard()
        self._hooks = HookSet(committer)
        # orders every send and read before close: close stops the actors after the sends it let
        # through, and closes the database after the reads it let through
        # a plain Lock, taken directly on the trigger path (a Condition's `with` is a Python-level
        # call); not re-entrant, so nothing that holds the gate may send or read through it
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._readers = 0
        self._closed = False
        self._closed_why = "the engine is closed"
        self._close_finished = threading.Event()
        self._status_servers: list[StatusServer] = []
        #: set by a signal handler (lifecycle.py): any close() from then on waits no longer
        self._stop_deadline: float | None = None
        self.path = db.path
        self.node_id: str | None = None  # set by open
        # an actor stopped by anyone but close() (pykka.ActorRegistry.stop_all()) closes the engine
        refs.on_stop = self._actors_stopped

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        jobs: Mapping[str, Job] | None = None,
        *,
        workers: int | None = None,
        sync: bool = True,
        counter_actors: int | None = None,
        job_timeout: float | None = None,
        max_cached_tasks: int = 100_000,
        loop: asyncio.AbstractEventLoop | None = None,
        max_queued: int | None = None,
        keep_last: int | None = None,
        hooks: Iterable[Hooks] = (),
        node_id: str | None = None,
        node_lease: float = DEFAULT_LEASE,
        poll_interval: float = POLL_SECONDS,
    ) -> Engine:
        """Open (or create) the database at ``path`` and start the engine.

        ``workers``: jobs run at once (default 128 on LevelDB, 64 on PostgreSQL, see
        :func:`default_workers`); ``counter_actors``:
        see :func:`default_counter_actors`.
        ``sync=False`` acknowledges an index once LevelDB has applied its write but before the
        write reaches the disk: a crash of the machine (not of the process) can then lose
        acknowledged indexes. ``counter_actors`` bounds the threads that serve tasks, whatever
        their number; ``max_cached_tasks`` bounds the task states they keep in memory.
        ``async def`` jobs run on ``loop`` if given (a running loop the caller keeps running), else on
        a loop the engine starts on its own thread when the first async job runs.
        ``max_queued`` bounds the executions triggered and not yet started (a trigger over it
        raises QueueFull and uses no index). ``keep_last`` is a retention policy: the engine
        prunes each task's finished history down to about its last ``keep_last`` executions, in
        the background (see :meth:`prune`). ``hooks`` are told of every execution's state changes
        from recovery on (see :class:`Hooks`).

        ``node_id`` and ``node_lease`` matter with PostgreSQL, where several engines (nodes) share
        one database: the node's id (default: host name and process id; a node restarted under
        the same id takes over from its previous life, which can write nothing more) and its lease
        in seconds (renewed every quarter of it; a node that fails to renew it is lost, and another
        node finishes its running executions as FAILED). LevelDB has one engine per database: the
        id only names it in the log, and the lease has no effect.

        ``poll_interval`` (PostgreSQL, several nodes): how often, at the longest, the engine reads
        again what other nodes may have changed when no notification comes: the bound on the delay
        of a wait for an execution another node finishes while notifications are lost, and on
        finding PENDING executions a dead node left.
        """
        path = validate.path(path)
        sync = validate.flag(sync, "sync")
        workers = validate.count(default_workers(path) if workers is None else workers, "workers")
        counter_actors = validate.count(default_counter_actors(path) if counter_actors is None else counter_actors,
                                        "counter_actors")
        max_cached_tasks = validate.count(max_cached_tasks, "max_cached_tasks")
        max_queued = validate.positive_int(max_queued, "max_queued")
        keep_last = validate.positive_int(keep_last, "keep_last", minimum=0)
        node_id = validate.node_id(node_id)
        node_lease = validate.node_lease(node_lease)
        job_timeout = validate.timeout(job_timeout, "job_timeout")
        poll_interval = validate.interval(poll_interval, "poll_interval")
        if job_timeout == 0:
            raise InvalidArgument("job_timeout must be > 0")
        jobs = validate.jobs(jobs)
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise InvalidArgument("loop must be an asyncio event loop")
        hooks = hooks_of(hooks)
        registry = JobRegistry(JobLoop(loop, job_timeout))
        for name, fn in jobs.items():
            registry.add(name, fn)
        with storage_errors():
            db = open_store(path, create=True, node_id=node_id, node_lease=node_lease)
            try:
                committer = db.writer(sync=sync)
            except BaseException:
                db.close()
                raise
        refs = ActorRefs()
        backlog = None if max_queued is None else Backlog(max_queued)
        engine = cls(db, committer, registry, refs, backlog)
        engine.node_id = node_id
        committer.on_failure = engine._writes_stopped
        engine._hooks.add(hooks)
        try:
            refs.pending = PendingStore.start(refs)
            per_actor = max(1, max_cached_tasks // counter_actors)
            for n in range(counter_actors):  # one by one: a failed open stops those that started
                with storage_errors():  # a lane's connection (PostgreSQL) may be refused
                    lane = committer.lane(n)
                refs.counters.append(CounterActor.start(db, lane, engine._board, refs, registry, per_actor,
                                                        engine._hooks, backlog, keep_last))
            refs.pool = ExecutorPool.start(workers, registry, refs, engine._board, job_timeout)
            ask(refs.pool, m.PoolStats())  # answered once every executor has started (the pool's on_start)
            recovery.recover(db, committer, refs, backlog)
            engine._follow_others(poll_interval)
            if keep_last is not None:
                engine._start_sweep(keep_last)
        except BaseException as e:
            engine._shutdown(timeout=0, failed_open=True)
            refused = no_thread_left(e, f"the engine's threads ({workers} workers, {counter_actors} counter actors)")
            if refused is not None:
                raise refused from None
            raise
        lifecycle.opened(engine)
        node = committer.node
        log.info("engine open at %s as node %r%s (%d workers, %d counter actors, sync=%s)", db.path, node_id,
                 "" if node is None else f" (epoch {node.epoch})", workers, counter_actors, sync)
        return engine

    def _follow_others(self, poll: float) -> None:
        """On a database other nodes share: a thread that follows their changes (remote.py)."""
        with storage_errors():
            feed = self._db.changes_feed()
        if feed is None:
            return
        self._remote = RemoteChanges(feed, self._db, self._board, self._refs, self._jobs, self._reading,
                                     poll=poll, salt=new_id())
        self._remote.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop: wait for running jobs (up to ``timeout``), leave queued non-blocking executions
        PENDING on disk for the next open, stop this engine's actors, close the database last.
        Idempotent."""
        timeout = lifecycle.bounded(validate.timeout(timeout), self._stop_deadline)
        if getattr(in_job, "refs", None) is self._refs:
            raise InvalidArgument("close() called from one of this engine's jobs would wait for that job forever")
        if self._jobs.loop is not None and self._jobs.loop.runs_here():
            raise InvalidArgument("close() on the event loop that runs this engine's async jobs would wait for them "
                                  "forever (they need this loop): close it off the loop, e.g. "
                                  "await asyncio.to_thread(engine.close)")
        self._not_in_hook("close()")
        with self._gate:
            if self._closed:
                closing = True
            else:
                closing, self._closed = False, True
        if closing:  # another thread is closing it: return when that close has finished
            self._close_finished.wait()
            return
        self._close_now(timeout)

    def _close_now(self, timeout: float | None) -> None:
        try:
            for server in self._status_servers:  # stops listening; kept-alive connections are refused
                server.close()
            self._shutdown(timeout)
        finally:
            lifecycle.closed(self)
            self._close_finished.set()

    def _writes_stopped(self) -> None:
        """The writer failed between writes (a node that lost its lease): waiters are answered."""
        writes_stopped(self.path, self._committer, self._board, self._refs)

    def _actors_stopped(self) -> None:
        """One of our actors stopped and we did not stop it (``pykka.ActorRegistry.stop_all()``):
        the engine cannot serve any call any more, so it is closed, and the rest of the close
        (waking waiters, stopping what is left, closing the database) runs on its own thread,
        since this runs on the stopping actor's."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            self._closed_why = ("the engine is closed: its actors were stopped from outside "
                                "(pykka.ActorRegistry.stop_all()?)")
        log.warning("engine at %s: its actors were stopped by something else than close(); closing it", self.path)
        threading.Thread(target=self._close_now, args=(None,), name="taskengine-close", daemon=True).start()

    def close_on_signals(
        self, timeout: float = 5.0, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Opt in to a graceful stop: on any of ``signals`` the engine closes, waiting up to
        ``timeout`` seconds for running jobs, and the process exits with status 128 + the
        signal's number (143 for SIGTERM, 130 for SIGINT). ``SystemExit`` is raised in the main
        thread, so ``with`` blocks and ``finally`` clauses run, while a thread of ours closes the
        engine. Works when the process is PID 1 of a container, where an unhandled SIGTERM is
        ignored. Call it from the main thread; every engine that called it is closed on the signal."""
        seconds = validate.timeout(timeout)
        if seconds is None:
            raise InvalidArgument("timeout must be a number of seconds: a stop must end")
        self._check_open()
        lifecycle.close_on_signals(self, seconds, signals)

    def _start_sweep(self, keep_last: int) -> None:
        def tasks(after: str | None) -> list[Task]:
            with self._reading():
                return self._db.list_tasks(after, limit=1000, on_corrupt=_log_corrupt)

        def prune(task_id: str) -> int:
            try:
                return self.prune(task_id, keep_last=keep_last)
            except TaskNotFound:  # deleted since it was listed
                return 0

        self._sweep = retention.RetentionSweep(keep_last, tasks, prune)
        self._sweep.start()

    def _shutdown(self, timeout: float | None, *, failed_open: bool = False) -> None:
        self._closed = True
        if self._remote is not None:  # first: it queues work and reads
            self._remote.stop()
        if self._sweep is not None:
            self._sweep.stop()
        refs = self._refs
        if refs.pool is not None:
            drained: Reply[Any] = Reply()
            if tell_if_alive(refs.pool, m.Drain(drained)):
                try:
                    await_reply(drained, refs.pool, timeout=timeout)
                except EngineClosed:
                    pass  # the pool was stopped from outside: nothing left to wait for
                except pykka.Timeout:
                    if not failed_open:  # a failed open ran no job of its own
                        log.warning("close: jobs still running after %s s are left; they are finished as "
                                    "interrupted (PostgreSQL: as the node leaves; LevelDB: at the next open)",
                                    timeout)
        executors: tuple[list[pykka.ActorRef[Any]], list[pykka.ActorRef[Any]]] = ([], [])
        if refs.pool is not None:
            try:
                executors = cast(Any, ask(refs.pool, m.ListExecutors()))
            except EngineClosed:  # the pool is already gone (a failed open)
                pass
        for ref in refs.counters:  # each handles what is already in its inbox first
            _stop(ref)
        _stop(refs.pool)
        idle, still_running = executors
        for ref in idle:
            _stop(ref)
        for ref in still_running:  # a job that outlived close(timeout): its thread ends when the job does
            try:
                ref.stop(block=False)
            except pykka.ActorDeadError:
                pass
        _stop(refs.pending)
        if self._sweep is not None:  # its chunk in hand was answered EngineClosed by now
            self._sweep.join()
        if self._jobs.loop is not None:
            self._jobs.loop.close()
        self._board.close(EngineClosed)
        with self._gate:
            while self._readers:
                self._gate.wait()
        self._db.close()
        log.info("engine at %s closed", self.path)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, task_id: str, make: Callable[[Reply[Any]], Any]) -> Reply[Any]:
        """Send to the task's counter actor a message that carries its own reply future."""
        return self._send_to(self._refs.counter_for(task_id), make)

    def _send_to(self, ref: pykka.ActorRef[Any], make: Callable[[Reply[Any]], Any]) -> Reply[Any]:
        reply: Reply[Any] = Reply()
        self._tell_ref(ref, make(reply))
        return reply

    def _tell(self, task_id: str, message: Any) -> None:
        self._tell_ref(self._refs.counter_for(task_id), message)

    def _tell_ref(self, ref: pykka.ActorRef[Any], message: Any) -> None:
        with self._gate_lock:
            if self._closed:
                raise EngineClosed(self._closed_why)
            try:
                ref.tell(message)
            except pykka.ActorDeadError:  # stopped from outside, just before it told us
                raise EngineClosed(self._closed_why) from None

    def _ask(self, task_id: str, make: Callable[[Reply[Any]], Any]) -> Any:
        self._not_in_hook("this call")
        return self._send(task_id, make).get()

    def _not_in_hook(self, what: str) -> None:
        """Hooks run on the counter actors' threads: a call from one that waits for an actor
        would wait for itself (or for an actor that waits for it) forever."""
        if self._hooks.running_here():
            raise InvalidArgument(
                f"{what} from a hook would wait for the engine thread that runs the hook; "
                "a hook may only send (trigger_future, not waited on) or read the database"
            )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Direct reads of the database; close waits for them before it closes the handle."""
        with self._gate:
            if self._closed:
                raise EngineClosed(self._closed_why)
            self._readers += 1
        try:
            with storage_errors():
                yield
        finally:
            with self._gate:
                self._readers -= 1
                if not self._readers:
                    self._gate.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed(self._closed_why)

    def add_hooks(self, *hooks: Hooks) -> None:
        """Tell these hooks of every state change from now on (see :class:`Hooks`)."""
        self._check_open()
        self._hooks.add(hooks_of(hooks))

    def remove_hooks(self, *hooks: Hooks) -> None:
        self._check_open()
        for hook in hooks:
            self._hooks.remove(hook)

    # -- jobs and tasks --------------------------------------------------------------------

    def register_job(self, name: str, fn: Job) -> None:
        """Add a job; executions waiting for it (recovered at open) start running."""
        self._check_open()
        self._jobs.add(name, fn)
        tell_if_alive(self._refs.pool, m.JobRegistered(name))
        if self._remote is not None:
            self._remote.job_registered()

    def create_task(
        self,
        task_id: str | None = None,
        *,
        job: str,
        config: Any = None,
        max_executions: int | None = None,
        exist_ok: bool = False,
    ) -> Task:
        """A new task (``task_id`` None: a new ULID). ``exist_ok=True`` makes it get-or-create, for
        a node that creates its tasks at every start: an existing task with the same job, config
        and max_executions is returned as it stands; one that differs raises TaskAlreadyExists,
        which names the difference."""
        task_id = new_id() if task_id is None else validate.task_id(task_id)
        exist_ok = validate.flag(exist_ok, "exist_ok")
        job = validate.job_name(job)
        config = validate.json_value(config, "config")
        max_executions = validate.positive_int(max_executions, "max_executions")
        if job not in self._jobs:
            raise UnknownJob(job)
        task = Task(
            id=task_id,
            job=job,
            config=config,
            max_executions=max_executions,
            created_at=time.time(),
            incarnation=new_id(),
        )
        result: Task = self._ask(task_id, lambda r: m.CreateTask(task, r, exist_ok))
        return result

    def list_tasks(self, after: str | None = None, limit: int = 50) -> list[Task]:
        """Tasks in id order (code point order), ``limit`` of them after the id ``after`` (the
        last one of the previous page). Read from the database (each task with its stored counter
        and prune mark), so paging through many tasks loads none into the actors. A task whose
        record does not decode is left out (logged as an ERROR naming its key; ``get_task`` on it
        raises CorruptRecord)."""
        limit = validate.list_limit(limit, MAX_LIST_LIMIT)
        if after is not None:
            after = validate.task_id(after)
        with self._reading():
            return self._db.list_tasks(after, limit, on_corrupt=_log_corrupt)

    def get_task(self, task_id: str) -> Task:
        task_id = validate.task_id(task_id)
        task: Task = self._ask(task_id, lambda r: m.GetTask(task_id, r))
        return task

    def next_index(self, task_id: str) -> int:
        """The index the next execution of the task will get; assigns nothing."""
        return self.get_task(task_id).execution_count

    def delete_task(self, task_id: str) -> None:
        """Cancel the task's unfinished executions and remove all its keys in one atomic write."""
        task_id = validate.task_id(task_id)
        self._ask(task_id, lambda r: m.DeleteTask(task_id, r))

    # -- triggers --------------------------------------------------------------------------

    def _trigger_message(
        self, task_id: str, data: Any, blocking: bool, key: str | None, reply: Reply[Any]
    ) -> m.Trigger:
        task_id = validate.task_id(task_id)
        data = validate.json_value(data, "data")
        key = validate.text(key, "idempotency_key")
        blocking = validate.flag(blocking, "blocking")
        return m.Trigger(new_id(), task_id, data, blocking, time.time(), key, reply)

    def trigger_future(
        self, task_id: str, data: Any = None, *, blocking: bool = False, idempotency_key: str | None = None
    ) -> pykka.Future[Execution]:
        """Like :meth:`trigger`, for callers that are actors: a non-blocking future resolves when the
        index is durable, a blocking one when the execution has finished. Awaiting it in a coroutine
        does not block the event loop."""
        reply: Reply[Any] = Reply()
        message = self._trigger_message(task_id, data, blocking, idempotency_key, reply)
        if not blocking:
            self._tell(task_id, message)
            return reply
        watcher = self._send_blocking(message)
        eid = message.execution_id
        out: Reply[Execution] = Reply()
        out.set_get_hook(lambda timeout: self._await_blocking(task_id, eid, reply, watcher, timeout))
        # the watcher stays if the await is cancelled: awaiting the same future again waits on it
        out.set_await_hook(lambda: self._await_blocking_async(task_id, eid, reply, watcher, None, keep=True))
        return out

    def _send_blocking(self, message: m.Trigger) -> Reply[Execution]:
        """Send a blocking trigger; the watcher its finish will be published to."""
        # watch before sending: a failure at start (TaskNotRunnable) must not slip past us
        watcher = self._board.watch(message.execution_id)
        try:
            self._tell(message.task_id, message)
        except BaseException:
            self._board.unwatch(message.execution_id, watcher)
            raise
        return watcher

    def _await_blocking(
        self, task_id: str, execution_id: str, reply: Reply[Any], watcher: Reply[Execution],
        timeout: float | None,
    ) -> Execution:
        self._not_in_hook("waiting on a blocking trigger's future")
        deadline = None if timeout is None else time.monotonic() + timeout
        awaited = execution_id  # an idempotent repeat's answer names the first execution: that one runs
        try:
            ex: Execution = reply.get(timeout=timeout)
            awaited = ex.id
            if ex.status.is_finished:
                self._board.unwatch(execution_id, watcher)
                return ex
            # an idempotent repeat's watcher is given the first execution's outcome (counter.py)
            finished: Execution = watcher.get(timeout=_remaining(deadline))
            return finished
        except pykka.Timeout:
            # the watcher stays: a later get() of the same future waits on it again
            raise ExecutionTimeout(awaited, self._index_of(task_id, awaited), timeout) from None
        except BaseException:
            self._board.unwatch(execution_id, watcher)
            raise

    async def _await_blocking_async(
        self, task_id: str, execution_id: str, reply: Reply[Any], watcher: Reply[Execution],
        timeout: float | None, *, keep: bool,
    ) -> Execution:
        """:meth:`_await_blocking` for a coroutine: the same steps, awaited instead of waited for."""
        limit = asyncio.timeout(timeout)
        awaited = execution_id  # as in _await_blocking
        try:
            async with limit:
                ex: Execution = await aio.wrap(reply)
                awaited = ex.id
                if ex.status.is_finished:
                    self._board.unwatch(execution_id, watcher)
                    return ex
                finished: Execution = await aio.wrap(watcher)
                return finished
        except TimeoutError:
            if not limit.expired():
                raise
            if not keep:
                self._board.unwatch(execution_id, watcher)
            raise ExecutionTimeout(awaited, self._stored_index(task_id, awaited), timeout) from None
        except asyncio.CancelledError:
            if not keep:
                self._board.unwatch(execution_id, watcher)
            raise
        except BaseException:
            self._board.unwatch(execution_id, watcher)
            raise

    def trigger(
        self,
        task_id: str,
        data: Any = None,
        *,
        blocking: bool = False,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Run the task's job once. Non-blocking: returns the PENDING execution as soon as its index
        is durable. Blocking: returns the finished execution; ``timeout`` raises ExecutionTimeout
        and the execution goes on. A repeat with the same ``idempotency_key`` returns the first
        execution (finished, if this call is blocking)."""
        timeout = validate.timeout(timeout)
        self._not_in_hook("trigger()")
        fut = self.trigger_future(task_id, data, blocking=blocking, idempotency_key=idempotency_key)
        return fut.get(timeout=timeout if blocking else None)

    async def atrigger(
        self,
        task_id: str,
        data: Any = None,
        *,
        blocking: bool = False,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Execution:
        """:meth:`trigger` for asyncio: the same answers and errors, and the event loop runs on
        while it waits (the engine's threads wake it when the answer is there; no thread waits
        for the caller). Cancelling the awaiting coroutine stops the waiting, never the execution:
        one already sent is acknowledged and runs as if the caller had gone away. To find it again
        after a cancellation, trigger with an ``idempotency_key`` and repeat the call."""
        timeout = validate.timeout(timeout)
        reply: Reply[Any] = Reply()
        message = self._trigger_message(task_id, data, blocking, idempotency_key, reply)
        if not blocking:
            self._tell(task_id, message)
            ex: Execution = await aio.wrap(reply)
            return ex
        watcher = self._send_blocking(message)
        return await self._await_blocking_async(task_id, message.execution_id, reply, watcher, timeout, keep=False)

    # -- reads -----------------------------------------------------------------------------

    def get_execution(self, task_id: str, execution_id: str) -> Execution:
        """The execution as it stands. A read: it never assigns an index or changes anything."""
        ex = self._stored(task_id, execution_id)
        if ex is not None:
            return ex
        # not on disk: a queued blocking execution, or one whose first write was in the
        # counter actor's turn; the answer comes after that turn's write
        return self._looked_up(task_id, execution_id, self._ask(task_id, self._lookup(task_id, execution_id)))

    async def _aget_execution(self, task_id: str, execution_id: str) -> Execution:
        ex = self._stored(task_id, execution_id)
        if ex is not None:
            return ex
        queued = await aio.wrap(self._send(task_id, self._lookup(task_id, execution_id)))
        return self._looked_up(task_id, execution_id, queued)

    def _stored(self, task_id: str, execution_id: str) -> Execution | None:
        task_id = validate.task_id(task_id)
        execution_id = validate.execution_id(execution_id)
        with self._reading():
            return self._db.get_execution(task_id, execution_id)

    @staticmethod
    def _lookup(task_id: str, execution_id: str) -> Callable[[Reply[Any]], m.Lookup]:
        return lambda r: m.Lookup(task_id, execution_id, r)

    def _looked_up(self, task_id: str, execution_id: str, queued: Execution | None) -> Execution:
        """The answer of a Lookup (a queued blocking execution), or what is on disk once the turn
        it waited for is written."""
        if queued is not None:
            return queued
        ex = self._stored(task_id, execution_id)
        if ex is None:
            raise ExecutionNotFound(task_id, execution_id)
        return ex

    def _stored_index(self, task_id: str, execution_id: str) -> int | None:
        """The index on disk, without asking an actor (for a timeout's answer in a coroutine)."""
        try:
            ex = self._stored(task_id, execution_id)
        except Exception:  # the answer to a timeout must not fail for a lookup's sake
            return None
        return None if ex is None else ex.index

    def _index_of(self, task_id: str, execution_id: str) -> int | None:
        try:
            return self.get_execution(task_id, execution_id).index
        except Exception:  # the answer to a timeout must not fail for a lookup's sake
            return None

    def wait(self, task_id: str, execution_id: str, timeout: float | None = None) -> Execution:
        """Block until the execution has finished; ExecutionTimeout after ``timeout`` seconds."""
        timeout = validate.timeout(timeout)
        task_id = validate.task_id(task_id)
        execution_id = validate.execution_id(execution_id)
        self._not_in_hook("wait()")
        watcher = self._board.watch(execution_id, task_id)
        try:
            try:
                ex = self.get_execution(task_id, execution_id)
            except ExecutionNotFound:
                published = _published(watcher)
                if published is None:
                    raise
                return published
            if ex.status.is_finished:
                return ex
            self._board.seen(ex)
            finished: Execution = watcher.get(timeout=timeout)
            return finished
        except pykka.Timeout:
            raise ExecutionTimeout(execution_id, self._index_of(task_id, execution_id), timeout) from None
        finally:
            self._board.unwatch(execution_id, watcher)

    async def await_execution(self, task_id: str, execution_id: str, timeout: float | None = None) -> Execution:
        """:meth:`wait` for asyncio: the finished execution, without blocking the event loop;
        ExecutionTimeout after ``timeout`` seconds. Cancelling it stops the waiting only."""
        timeout = validate.timeout(timeout)
        task_id = validate.task_id(task_id)
        execution_id = validate.execution_id(execution_id)
        watcher = self._board.watch(execution_id, task_id)
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                try:
                    ex = await self._aget_execution(task_id, execution_id)
                except ExecutionNotFound:
                    published = _published(watcher)
                    if published is None:
                        raise
                    return published
                if ex.status.is_finished:
                    return ex
                self._board.seen(ex)
                finished: Execution = await aio.wrap(watcher)
                return finished
        except TimeoutError:
            if not limit.expired():
                raise
            raise ExecutionTimeout(execution_id, self._stored_index(task_id, execution_id), timeout) from None
        finally:
            self._board.unwatch(execution_id, watcher)

    def list_executions(
        self, task_id: str, after: int | None = None, limit: int = 50, newest_first: bool = False
    ) -> list[Execution]:
        """Executions ordered by index (newest first if asked); ``after`` is the last index seen."""
        task_id = validate.task_id(task_id)
        limit = validate.list_limit(limit, MAX_LIST_LIMIT)
        after = validate.positive_int(after, "after", minimum=0)
        newest_first = validate.flag(newest_first, "newest_first")
        with self._reading():
            if self._db.get_task(task_id) is None:
                raise TaskNotFound(task_id)
            return list(self._db.iter_executions(task_id, after=after, limit=limit, newest_first=newest_first))

    def cancel(self, task_id: str, execution_id: str) -> Execution:
        """Cancel an execution that has not started: it keeps its index and record, as CANCELLED.
        A running or finished execution is returned unchanged (a job cannot be interrupted)."""
        task_id = validate.task_id(task_id)
        execution_id = validate.execution_id(execution_id)
        result: Execution = self._ask(task_id, lambda r: m.Cancel(task_id, execution_id, r))
        return result

    def prune(self, task_id: str, *, keep_last: int | None = None, before_index: int | None = None) -> int:
        """Remove the task's oldest finished executions: those below ``before_index``, or all but
        the last ``keep_last`` indexes (both: whichever removes fewer). Returns how many were
        removed; ``get_task(...).prune_mark`` is the lowest index still stored.

        The prune mark only moves past finished executions, from the oldest up: it stops at the
        first PENDING or RUNNING one, whatever the asked-for bound. Pruned indexes are never
        issued again; a pruned execution reads as ExecutionNotFound, and its idempotency key is
        forgotten with it. Done in steps of at most a thousand executions, each one atomic write,
        with the task's other messages served in between; if the task is deleted between two
        steps, the prune ends there (a task created again with the same id is left alone) and
        returns what it removed."""
        task_id = validate.task_id(task_id)
        keep_last = validate.positive_int(keep_last, "keep_last", minimum=0)
        before_index = validate.positive_int(before_index, "before_index", minimum=0)
        if keep_last is None and before_index is None:
            raise InvalidArgument("prune needs keep_last or before_index")
        done = self._prune_step(task_id, keep_last, before_index, None)
        removed = done.removed
        while done.removed and not done.blocked and done.mark < done.target:
            # the same target and task for every step, so triggers that come meanwhile do not
            # prolong it, and a task deleted and created again meanwhile is not touched
            done = self._prune_step(task_id, None, done.target, done.incarnation)
            removed += done.removed
        return removed

    def _prune_step(
        self, task_id: str, keep_last: int | None, before_index: int | None, incarnation: str | None
    ) -> m.Pruned:
        done: m.Pruned = self._ask(task_id, lambda r: m.Prune(task_id, keep_last, before_index, r, incarnation))
        return done

    # -- operations ------------------------------------------------------------------------

    def backup(self, dest_path: str | os.PathLike[str]) -> int:
        """Copy a consistent snapshot of the database (taken while running) to a new directory;
        returns the number of keys copied."""
        dest = validate.path(dest_path, "dest_path")
        with self._reading():
            return self._db.backup(dest)

    def serve_status(
        self, port: int = 0, *, host: str = "127.0.0.1", token: str | None = None, metrics: MetricsSource | None = None
    ) -> StatusServer:
        """Start a read-only HTTP status server (JSON and a page for a person) for this engine;
        it stops at :meth:`close`. ``port=0`` picks a free port (see ``.url``). Any host that is
        not loopback needs a ``token``; with one, every request must carry it. ``metrics`` (a
        ``taskengine.prometheus.PrometheusMetrics``) is served at ``/metrics``. See
        :mod:`taskengine.status`."""
        from taskengine.status import StatusServer

        self._check_open()
        server = StatusServer.start(self, host=host, port=port, token=token, metrics=metrics)
        with self._gate:
            if not self._closed:
                self._status_servers.append(server)
                return server
        server.close()  # close() won the race
        raise EngineClosed()

    def stats(self) -> EngineStats:
        """Live figures (see :class:`EngineStats`); EngineClosed once closed (also when close()
        wins a race with it)."""
        self._check_open()
        self._not_in_hook("stats()")
        refs = self._refs
        pool = cast(dict[str, int], ask(refs.pool, m.PoolStats()))
        counters = [cast(dict[str, int], self._send_to(ref, m.CounterStats).get()) for ref in refs.counters]
        backlog = self._backlog
        summed = {key: sum(c[key] for c in counters) for key in counters[0]}
        return EngineStats(
            counter_actors=len(refs.counters),
            executors=pool["executors"],
            live_actors=len(refs.counters) + 2 + pool["executors"] + pool["abandoned_executors"],
            queued=pool["queued"],
            running=pool["running"],
            waiting_for_job=pool["waiting_for_job"],
            queued_blocking=summed["queued_blocking"],
            pending=ask(refs.pending, m.PendingCount()),
            waiters=len(self._board),
            cached_tasks=summed["cached_tasks"],
            replaced_executors=pool["replaced_executors"],
            triggered=summed["triggered"],
            finished=summed["succeeded"] + summed["failed"] + summed["cancelled"],
            succeeded=summed["succeeded"],
            failed=summed["failed"],
            cancelled=summed["cancelled"],
            pruned=summed["pruned"],
            writes=self._committer.writes,
            changes_written=self._committer.changes,
            write_failure=self._committer.failure,
            node_id=self.node_id,
            node_epoch=None if self._committer.node is None else self._committer.node.epoch,
            max_queued=None if backlog is None else backlog.limit,
            backlog=None if backlog is None else len(backlog),
            backlog_peak=None if backlog is None else backlog.peak,
        )


def _log_corrupt(e: StorageCorrupt) -> None:
    log.error("list_tasks leaves out a task that does not decode: %s", e)


def _published(watcher: Reply[Execution]) -> Execution | None:
    """For a waiter that found no execution: if it finished after the waiter began watching and
    was pruned before the waiter read it (the keep_last policy), the watcher holds its outcome;
    None if it holds nothing (the execution is unknown, or was pruned before the watch began)."""
    try:
        finished: Execution = watcher.get(timeout=0)
    except pykka.Timeout:
        return None
    return finished


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _stop(ref: pykka.ActorRef[Any] | None) -> None:
    """Stop an actor and wait for it; also when something else stops it at the same time (its
    stop message can then land after its last look at its inbox, and nobody would answer it)."""
    if ref is None:
        return
    try:
        await_reply(ref.stop(block=False), ref)
    except (pykka.ActorDeadError, EngineClosed):
        pass
