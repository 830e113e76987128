"""The executor pool: a fixed number of executor actors fed from one queue.

pykka has no pool, so this actor is one: it hands work to idle executors, parks
work whose job is not registered yet, replaces an executor that dies, and, with a
job timeout, finishes a hung job as FAILED and gives its slot to a new executor
(a Python thread cannot be killed; the hung one is left to finish on its own and
its late result is refused by the counter actor).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import time
from typing import Any

import attrs
import pykka

from storage import ExecutionStatus, codec

from . import messages as m
from .board import CompletionBoard
from .deadlines import Deadlines
from .errors import EngineClosed
from .jobs import JobContext, JobRegistry
from .mailbox import EngineActor, Reply
from .peers import Peers, await_reply, current_job

log = logging.getLogger(__name__)


@attrs.define
class _Busy:
    ref: pykka.ActorRef[Any]
    item: m.WorkItem
    token: int
    deadline: int | None


class ExecutorPool(EngineActor):

    def __init__(
        self, size: int, jobs: JobRegistry, peers: Peers, board: CompletionBoard, job_timeout: float | None
    ) -> None:
        super().__init__()
        self._size = size
        self._jobs = jobs
        self._peers = peers
        self._board = board
        self._job_timeout = job_timeout
        self._deadlines = Deadlines() if job_timeout is not None else None
        self._tokens = itertools.count(1)
        self._queue: collections.deque[m.WorkItem] = collections.deque()
        self._parked: dict[str, list[m.WorkItem]] = {}
        self._idle: list[pykka.ActorRef[Any]] = []
        self._busy: dict[str, _Busy] = {}
        self._abandoned: dict[str, pykka.ActorRef[Any]] = {}
        self._draining = False
        self._drained: m.Reply | None = None
        self.replaced = 0

    def on_start(self) -> None:
        for _ in range(self._size):
            self._idle.append(self._new_executor())

    def _new_executor(self) -> pykka.ActorRef[Any]:
        return Executor.start(self.actor_ref, self._peers, self._jobs, self._board)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, m.Submit):
            for item in message.items:
                self._submit(item)
        elif isinstance(message, m.Done):
            self._done(message)
        elif isinstance(message, m.Expired):
            self._expired(message)
        elif isinstance(message, m.ExecutorStopped):
            self._stopped(message)
        elif isinstance(message, m.JobRegistered):
            for item in self._parked.pop(message.name, []):
                self._submit(item)
        elif isinstance(message, m.Drain):
            self._drain(message.reply)
        elif isinstance(message, m.Executors):
            return list(self._idle), [b.ref for b in self._busy.values()] + list(self._abandoned.values())
        elif isinstance(message, m.PoolStats):
            return {
                "queued": len(self._queue),
                "running": len(self._busy),
                "waiting_for_job": sum(len(v) for v in self._parked.values()),
                "executors": len(self._idle) + len(self._busy),
                "abandoned_executors": len(self._abandoned),
                "replaced_executors": self.replaced,
            }
        else:
            return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        """The engine stops the executors (it waits for the idle ones); stop any left over."""
        if self._deadlines is not None:
            self._deadlines.stop()
        for ref in [*self._idle, *(b.ref for b in self._busy.values()), *self._abandoned.values()]:
            try:
                ref.stop(block=False)
            except pykka.ActorDeadError:
                pass

    # -- queue -------------------------------------------------------------------------------

    def _submit(self, item: m.WorkItem) -> None:
        if self._draining:
            return  # closing: a non-blocking execution stays PENDING on disk for the next open
        if item.job not in self._jobs:
            log.info("execution %s waits for job %r to be registered", item.execution.id, item.job)
            self._parked.setdefault(item.job, []).append(item)
        elif self._idle:
            self._dispatch(self._idle.pop(), item)
        else:
            self._queue.append(item)

    def _dispatch(self, ref: pykka.ActorRef[Any], item: m.WorkItem) -> None:
        token = next(self._tokens)
        deadline = None
        if self._deadlines is not None and self._job_timeout is not None:
            pool, urn = self.actor_ref, ref.actor_urn

            def expire() -> None:
                self._peers.tell_quietly(pool, m.Expired(urn, token))

            deadline = self._deadlines.schedule(self._job_timeout, expire)
        self._busy[ref.actor_urn] = _Busy(ref, item, token, deadline)
        ref.tell(m.Run(item, token))

    def _free(self, ref: pykka.ActorRef[Any]) -> None:
        if not self._draining and self._queue:
            self._dispatch(ref, self._queue.popleft())
        else:
            self._idle.append(ref)
        self._check_drained()

    def _take(self, urn: str, token: int | None = None) -> _Busy | None:
        busy = self._busy.get(urn)
        if busy is None or (token is not None and busy.token != token):
            return None
        del self._busy[urn]
        if busy.deadline is not None and self._deadlines is not None:
            self._deadlines.cancel(busy.deadline)
        return busy

    def _done(self, msg: m.Done) -> None:
        busy = self._take(msg.executor_urn, msg.token)
        if busy is not None:
            self._free(busy.ref)

    def _expired(self, msg: m.Expired) -> None:
        busy = self._take(msg.executor_urn, msg.token)
        if busy is None:
            return
        reason = f"TimeoutError: the job ran longer than the job timeout of {self._job_timeout} s"
        log.warning("execution %s: %s; its executor is replaced", busy.item.execution.id, reason)
        self._peers.tell_quietly(
            self._peers.counter_for(busy.item.execution.task_id), m.Abandon(busy.item, busy.token, reason)
        )
        self._abandoned[busy.ref.actor_urn] = busy.ref
        busy.ref.stop(block=False)  # after its hung job returns, if ever
        self._replace()

    def _stopped(self, msg: m.ExecutorStopped) -> None:
        if self._abandoned.pop(msg.executor_urn, None) is not None or self.actor_stopped.is_set():
            return
        self._idle = [r for r in self._idle if r.actor_urn != msg.executor_urn]
        busy = self._take(msg.executor_urn)
        if busy is not None:
            reason = f"the executor running it died ({msg.reason})"
            self._peers.tell_quietly(
                self._peers.counter_for(busy.item.execution.task_id), m.Abandon(busy.item, busy.token, reason)
            )
        if not self._draining:
            log.warning("executor %s stopped (%s); replacing it", msg.executor_urn, msg.reason)
            self._replace()
        else:
            self._check_drained()

    def _replace(self) -> None:
        self.replaced += 1
        self._free(self._new_executor())

    def _drain(self, reply: m.Reply) -> None:
        """Closing: run nothing more and answer once the running jobs are done."""
        self._draining, self._drained = True, reply
        for item in self._queue:
            if item.execution.blocking:
                self._board.fail(item.execution.id, EngineClosed("the engine closed before the execution started"))
        self._queue.clear()
        self._parked.clear()
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._busy:
            reply, self._drained = self._drained, None
            m.answer(reply, None)


class Executor(EngineActor):
    """Runs one execution at a time: claim its index, record it RUNNING, run the job, finish it."""

    def __init__(
        self, pool: pykka.ActorRef[Any], peers: Peers, jobs: JobRegistry, board: CompletionBoard
    ) -> None:
        super().__init__()
        self._pool = pool
        self._peers = peers
        self._jobs = jobs
        self._board = board

    def on_receive(self, message: Any) -> Any:
        if not isinstance(message, m.Run):
            return super().on_receive(message)
        # an exception here is a bug of ours, not the job's: the actor dies, and the pool
        # (told by on_failure) fails the execution and replaces this executor
        self._run(message.item, message.token)
        self._peers.tell_quietly(self._pool, m.Done(self.actor_urn, message.token))
        return None

    def on_stop(self) -> None:
        self._peers.tell_quietly(self._pool, m.ExecutorStopped(self.actor_urn, "stopped"))

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._peers.tell_quietly(self._pool, m.ExecutorStopped(self.actor_urn, f"{exc_type.__name__}: {exc}"))

    def _run(self, item: m.WorkItem, token: int) -> None:
        ex = item.execution
        pending = self._peers.pending
        counter = self._peers.counter_for(ex.task_id)
        reply: m.Reply = Reply()
        start = m.Start(item, token, reply)
        # a non-blocking execution is claimed first (the pending store passes the Start on):
        # a cancelled, deleted or already claimed one is answered NOT_CLAIMED and never runs
        if ex.blocking:
            sent = self._peers.tell_quietly(counter, start)
        else:
            sent = self._peers.tell_quietly(pending, m.ClaimThenStart(ex.task_id, ex.id, counter, start))
        if not sent:
            return  # the engine is closing; the execution stays PENDING on disk
        try:
            started = await_reply(reply, counter)
        except EngineClosed:
            return
        if started is m.NOT_CLAIMED:
            return
        if started is None:
            if not ex.blocking:
                self._peers.tell_quietly(pending, m.RemovePending([(ex.task_id, ex.id)]))
            return
        running, task = started
        fn = self._jobs.get(item.job)
        assert fn is not None  # the pool only dispatches registered jobs, and jobs are never removed
        # a blocking item is a ticket for the task's oldest queued blocking execution: run what started
        ctx = JobContext(
            task_id=running.task_id, execution_id=running.id, index=running.index, config=task.config,
            data=running.data,
        )
        current_job.peers = self._peers
        try:
            status, result, error = run_job(fn, ctx)
        finally:
            current_job.peers = None
        finished = attrs.evolve(running, status=status, result=result, error=error, finished_at=time.time())
        # a closed engine drops it: the record stays RUNNING and the next open finishes it as interrupted
        self._peers.tell_quietly(counter, m.Finish(finished, item.incarnation, token))


INVALID_RESULT = "InvalidResult: the job's result is not JSON-serializable: "


def run_job(fn: Any, ctx: JobContext) -> tuple[ExecutionStatus, Any, str | None]:
    """Run a job and turn any outcome into a status; nothing a job does escapes. The result is
    stored as JSON, so the caller gets the JSON-normalised copy the record holds."""
    try:
        result = fn(ctx)
    except BaseException as e:  # noqa: BLE001 - SystemExit from a job must not stop the actors
        return ExecutionStatus.FAILED, None, _error_text(e)
    try:
        return ExecutionStatus.SUCCESS, json.loads(codec.to_json(result).encode()), None
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        return ExecutionStatus.FAILED, None, _error_text(e, INVALID_RESULT)


def _error_text(e: BaseException, prefix: str | None = None) -> str:
    """'TypeName: message', storable as UTF-8 whatever the exception holds."""
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the failure
        message = repr(e)
    text = (prefix or f"{type(e).__name__}: ") + message
    return text.encode("utf-8", "backslashreplace").decode()

