"""The executor pool: a fixed number of executor actors fed from one work queue.

pykka has no pool, so this actor is one: it starts the executors (busy ones take
the next item from the shared queue themselves, and the counter actors wake idle
ones, see workqueue.py), parks work whose job is not registered yet, replaces an executor
that dies, and, with a job timeout, finishes a hung job as FAILED and gives its
slot to a new executor (a Python thread cannot be killed; the hung one is left
to finish on its own and its late result is refused by the counter actor).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pykka

from taskengine.storage import Execution, ExecutionStatus, Task, records

from . import messages as m
from .board import CompletionBoard
from .errors import EngineClosed, EngineError, no_thread_left
from .jobloop import timeout_reason
from .jobrun import run_job
from .jobs import JobContext, JobRegistry
from .mailbox import EngineActor, Reply
from .refs import ActorRefs, await_reply, in_job, tell_if_alive
from .workqueue import WorkQueue, wake

log = logging.getLogger(__name__)

#: the reason an executor gives when it was stopped (not failed)
STOPPED = "stopped"


class ExecutorPool(EngineActor):
    def __init__(
        self, size: int, jobs: JobRegistry, refs: ActorRefs, board: CompletionBoard, job_timeout: float | None
    ) -> None:
        super().__init__()
        self._size = size
        self._jobs = jobs
        self._refs = refs
        self._board = board
        self._job_timeout = job_timeout
        self._work = WorkQueue(job_timeout, self._on_job_timeout)
        refs.work = self._work
        self._parked: dict[str, list[m.WorkItem]] = {}
        self._executors: dict[str, pykka.ActorRef[Any]] = {}  # urn -> executor, not given up on
        self._abandoned: dict[str, pykka.ActorRef[Any]] = {}
        self._draining = False
        self._failed = False
        self._drain_reply: Reply[Any] | None = None
        self.replaced = 0
        self._start_failure: EngineError | None = None

    def on_start(self) -> None:
        try:
            for _ in range(self._size):
                self._new_executor()
        except RuntimeError as e:  # no thread left: the open fails at its PoolStats, nothing left running
            self._start_failure = no_thread_left(e, f"{self._size} executors ({len(self._executors)} started)")
            if self._start_failure is None:
                raise
            for urn, ref in self._executors.items():  # abandoned: their stops do not read as stop_all()'s
                self._abandoned[urn] = ref
                ref.stop(block=False)
            self._executors.clear()

    def _new_executor(self) -> None:
        ref = Executor.start(self.actor_ref, self._refs, self._jobs, self._board, self._work)
        self._work.add_slot(ref.actor_urn, ref)
        self._executors[ref.actor_urn] = ref

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.Submit):
            self._submit_all(message.items)
        elif isinstance(message, m.ExecutorIdle):
            self._dispatch()
            self._check_drained()
        elif isinstance(message, m.JobTimedOut):
            self._job_timed_out(message)
        elif isinstance(message, m.ExecutorStopped):
            self._stopped(message)
        elif isinstance(message, m.JobRegistered):
            waiting = self._parked.pop(message.name, [])
            if waiting:
                log.info("job %r registered: %d executions that waited for it are queued", message.name, len(waiting))
            self._submit_all(waiting)
        elif isinstance(message, m.Drain):
            self._drain(message.reply)
        elif isinstance(message, m.StorageFailed):
            self._failed = True
            self._work.close()
        elif isinstance(message, m.ListExecutors):
            idle = self._work.idle_refs()
            others = [r for r in self._executors.values() if r not in idle]
            return idle, others + list(self._abandoned.values())
        elif isinstance(message, m.PoolStats):
            if self._start_failure is not None:
                raise self._start_failure
            return {
                "queued": len(self._work),
                "running": self._work.busy(),
                "waiting_for_job": sum(len(v) for v in self._parked.values()),
                "executors": len(self._executors),
                "abandoned_executors": len(self._abandoned),
                "replaced_executors": self.replaced,
            }
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        """The engine stops the executors (it waits for the idle ones); stop any left over."""
        self._refs.on_stop()
        self._work.stop()
        for ref in [*self._executors.values(), *self._abandoned.values()]:
            try:
                ref.stop(block=False)
            except pykka.ActorDeadError:
                pass

    # -- queue -------------------------------------------------------------------------------

    def _submit_all(self, items: list[m.WorkItem]) -> None:
        """Queue ``items``, parking those whose job is not registered: one log line per such job,
        however many executions wait for it (recovery can submit thousands at once)."""
        if self._draining or self._failed:
            return  # a non-blocking execution stays PENDING on disk for the next open
        parked: dict[str, int] = {}
        ready = []
        for item in items:
            if item.job in self._jobs:
                ready.append(item)
            else:
                self._parked.setdefault(item.job, []).append(item)
                parked[item.job] = parked.get(item.job, 0) + 1
        for job, n in parked.items():
            log.info("%d executions wait for job %r to be registered (%d in all)", n, job, len(self._parked[job]))
        self._dispatch(ready)

    def _dispatch(self, items: list[m.WorkItem] | None = None) -> None:
        """Queue ``items`` and wake idle executors while there is work; busy ones take the next
        item themselves."""
        wake(self._work, items or ())

    def _on_job_timeout(self, urn: str, token: int) -> None:
        """Called on the deadlines thread: the pool handles it in its turn."""
        tell_if_alive(self.actor_ref, m.JobTimedOut(urn, token))

    def _job_timed_out(self, msg: m.JobTimedOut) -> None:
        running = self._work.give_up(msg.executor_urn, msg.token)
        if running is None:
            return  # the run finished first
        item, token = running
        ref = self._executors.pop(msg.executor_urn)
        reason = f"TimeoutError: {timeout_reason(self._job_timeout)}"
        log.warning("execution %s: %s; its executor is replaced", item.execution.id, reason)
        tell_if_alive(self._refs.counter_for(item.execution.task_id), m.Abandon(item, token, reason))
        self._abandoned[msg.executor_urn] = ref
        ref.stop(block=False)  # after its hung job returns, if ever
        self._replace()

    def _stopped(self, msg: m.ExecutorStopped) -> None:
        if self._abandoned.pop(msg.executor_urn, None) is not None or self.actor_stopped.is_set():
            return
        self._executors.pop(msg.executor_urn, None)
        running = self._work.give_up(msg.executor_urn)
        if running is not None:
            item, token = running
            reason = f"the executor running it died ({msg.reason})"
            tell_if_alive(
                self._refs.counter_for(item.execution.task_id), m.Abandon(item, token, reason)
            )
        if self._draining:
            self._check_drained()
        elif msg.reason == STOPPED:
            # only close() (draining) and a job timeout (abandoned) stop executors: this stop came
            # from outside the engine (pykka.ActorRegistry.stop_all()), which closes the engine
            self._refs.on_stop()
        else:
            log.warning("executor %s stopped (%s); replacing it", msg.executor_urn, msg.reason)
            self._replace()

    def _replace(self) -> None:
        self.replaced += 1
        self._new_executor()
        self._dispatch()
        self._check_drained()

    def _drain(self, reply: Reply[Any]) -> None:
        """Closing: run nothing more and answer once the running jobs are done."""
        self._draining, self._drain_reply = True, reply
        left = 0
        for item in self._work.close():
            if item.execution.blocking:
                self._board.fail(item.execution.id, EngineClosed("the engine closed before the execution started"))
            else:
                left += 1
        left += sum(len(items) for items in self._parked.values())
        self._parked.clear()
        log.info("closing: waiting for %d running job(s); %d queued execution(s) stay PENDING for the next open",
                 self._work.busy(), left)
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drain_reply is not None and not self._work.busy():
            reply, self._drain_reply = self._drain_reply, None
            m.answer(reply, None)


class Executor(EngineActor):
    """Runs executions one at a time: claim its index, record it RUNNING, run the job, finish
    it; then takes the next one from the work queue itself, and tells the pool when there is none.
    An execution its trigger started (``Run.started``) is RUNNING already: its job runs at once.

    A job's Finish goes with the Start of the executor's next run when there is one (one message
    and one turn of the counter actor for both); it is sent alone before the executor's slot
    turns idle, so a close, which waits for busy slots, never misses it."""

    def __init__(
        self, pool: pykka.ActorRef[Any], refs: ActorRefs, jobs: JobRegistry, board: CompletionBoard, work: WorkQueue
    ) -> None:
        super().__init__()
        self._pool = pool
        self._refs = refs
        self._jobs = jobs
        self._board = board
        self._work = work

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, m.Run):
            return super().on_receive(message)
        # an exception here is a bug of ours, not the job's: the actor dies, and the pool
        # (told by on_failure) fails the execution and replaces this executor
        urn = self.actor_urn
        run: tuple[m.WorkItem, int] | None = (message.item, message.token)
        finish: m.Finish | None = None
        started = message.started
        if started is not None and not self._work.holds(urn, message.token):
            started, run = None, None  # given up on (a job timeout) before it could run: failed already
        while run is not None:
            item, token = run
            if started is not None:
                finish, started = self._run_job(item, token, *started), None
            else:
                finish = self._run(item, token, finish)
            run = self._work.next_for(urn, token, only_if_any=finish is not None)
            if run is None and finish is not None:
                self._send_finish(finish)
                finish = None
                run = self._work.next_for(urn, token)
        if self._work.closed:  # the pool waits for idle executors only while it drains
            tell_if_alive(self._pool, m.ExecutorIdle(urn))
        return None

    def on_stop(self) -> None:
        tell_if_alive(self._pool, m.ExecutorStopped(self.actor_urn, STOPPED))

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tell_if_alive(self._pool, m.ExecutorStopped(self.actor_urn, f"{exc_type.__name__}: {exc}"))

    def _send_finish(self, finish: m.Finish) -> None:
        # a closed engine drops it: the record stays RUNNING and the next open finishes it as interrupted
        tell_if_alive(self._refs.counter_for(finish.execution.task_id), finish)

    def _run(self, item: m.WorkItem, token: int, finished: m.Finish | None) -> m.Finish | None:
        """Start ``item`` (sending ``finished``, the previous run's Finish, with it) and run its
        job; returns the job's Finish, for the caller to send, or None if it did not run."""
        ex = item.execution
        pending = self._refs.pending
        assert pending is not None  # set before any executor starts
        counter = self._refs.counter_for(ex.task_id)
        if finished is not None and self._refs.counter_for(finished.execution.task_id) is not counter:
            self._send_finish(finished)
            finished = None
        reply: Reply[Any] = Reply()
        start = m.Start(item, token, reply, finished)
        # a non-blocking execution is claimed first (the pending store passes the Start on):
        # a cancelled, deleted or already claimed one is answered UNCLAIMED and never runs
        if ex.blocking:
            sent = tell_if_alive(counter, start)
        else:
            sent = tell_if_alive(pending, m.ClaimThenStart(ex.task_id, ex.id, counter, start))
        if not sent:
            if finished is not None:
                self._send_finish(finished)
            return None  # the engine is closing; the execution stays PENDING on disk
        try:
            started = await_reply(reply, counter) if ex.blocking else await_reply(reply, pending, counter)
        except EngineError:  # closed, or writes stopped after a failed one: it stays PENDING on disk
            return None
        if started is m.NotStarted.UNCLAIMED:
            return None
        if started is m.NotStarted.REFUSED:
            if not ex.blocking:
                tell_if_alive(pending, m.RemovePending([(ex.task_id, ex.id)]))
            return None
        running, task = started
        return self._run_job(item, token, running, task)

    def _run_job(self, item: m.WorkItem, token: int, running: Execution, task: Task) -> m.Finish:
        """Run the job of ``running``, whose RUNNING record is durable; returns its Finish."""
        fn = self._jobs.get(item.job)
        assert fn is not None  # the pool only dispatches registered jobs, and jobs are never removed
        # a blocking item is a ticket for the task's oldest queued blocking execution: run what started
        assert running.index is not None  # a started execution has its index
        ctx = JobContext(
            task_id=running.task_id, execution_id=running.id, index=running.index, config=task.config,
            data=running.data,
        )
        in_job.refs = self._refs
        try:
            status, result, error, traceback = run_job(fn, ctx, self._jobs.loop)
        finally:
            in_job.refs = None
        if status is ExecutionStatus.FAILED:
            log.warning("execution %s of task %r (index %s) failed: %s%s", running.id, running.task_id,
                        running.index, error, "" if traceback is None else "\n" + traceback.rstrip())
        finished_record = records.finished(running, status, time.time(), result=result, error=error,
                                           traceback=traceback)
        return m.Finish(finished_record, item.incarnation, token)
