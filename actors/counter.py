"""Counter actors: the one writer of each task's counter, records and deletion.

Every change to a task goes through the counter actor the task is hashed to, so
index assignment, starts, finishes, cancels and deletion of one task are
serialised without locks. An index is taken from the in-memory counter and the
change is handed to the group-commit writer; the caller hears of it only when the
write is durable. Because the writer keeps submission order, index ``i+1`` can be
handed out before ``i`` is on disk without ever being durable without it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import pykka

from storage import Database, Execution, ExecutionStatus, GroupCommitWriter, Task, changes, keys
from storage import codec as storage_codec
from storage.errors import StorageError as _StorageError

from . import messages as m
from .board import CompletionBoard
from .errors import (
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
    translate,
)
from .jobs import JobRegistry
from .peers import Peers

log = logging.getLogger(__name__)

TASK_DELETED = "cancelled: the task was deleted"
INTERRUPTED = "interrupted: the engine stopped while this execution was running"
QUEUED = -1  # idempotency entry of a blocking execution that has no record yet


@attrs.define
class TaskState:
    task: Task
    counter: int
    last_seq: int = 0  # writer sequence of this task's latest change
    deleted: bool = False  # a tombstone kept until the deletion is durable
    running: dict[str, tuple[int, Execution]] = attrs.Factory(dict)  # id -> (token, RUNNING record)
    queued: dict[str, Execution] = attrs.Factory(dict)  # blocking executions not started yet
    idem: dict[str, tuple[str, int]] = attrs.Factory(dict)  # key -> (execution id, writer seq or QUEUED)

    def exhausted(self) -> bool:
        return self.task.max_executions is not None and self.counter >= self.task.max_executions


class CounterActor(pykka.ThreadingActor):
    use_daemon_thread = True

    def __init__(
        self,
        db: Database,
        writer: GroupCommitWriter,
        board: CompletionBoard,
        peers: Peers,
        jobs: JobRegistry,
        max_cached: int,
    ) -> None:
        super().__init__()
        self._jobs = jobs
        self.triggered = 0
        self.finished = 0
        self._db = db
        self._writer = writer
        self._board = board
        self._peers = peers
        self._max_cached = max_cached
        self._cache: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self._handlers: dict[type, Callable[[Any], None]] = {
            m.Trigger: self._trigger,
            m.Start: self._start,
            m.Finish: self._finish,
            m.Abandon: self._abandon,
            m.Cancel: self._cancel,
            m.CreateTask: self._create,
            m.DeleteTask: self._delete,
            m.GetTask: self._get_task,
            m.Lookup: self._lookup,
            m.Interrupted: self._interrupted,
            m.CounterStats: self._stats,
        }

    def on_receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            return super().on_receive(message)
        try:
            handler(message)
        except Exception as e:  # answered to the caller; the actor carries on
            if isinstance(e, _StorageError):
                e = translate(e)
            elif not isinstance(e, EngineError):
                log.exception("counter actor failed on %r", message)
            m.fail(getattr(message, "reply", None), e)
        return None

    def on_stop(self) -> None:
        # messages that raced with close: answer them rather than leave callers hanging
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            m.fail(getattr(envelope.message, "reply", None), EngineClosed())

    # -- task state ----------------------------------------------------------------------

    def _state(self, task_id: str) -> TaskState | None:
        st = self._cache.get(task_id)
        if st is not None:
            self._cache.move_to_end(task_id)
            return None if st.deleted else st
        task = self._db.get_task(task_id)
        if task is None:
            return None
        st = TaskState(task=task, counter=task.execution_count)
        last = self._db.last_index(task_id)
        if last is not None and last >= st.counter:
            # the original's defect 11: a counter behind its records must never re-issue an index
            log.warning(
                "task %r: stored counter %d is behind its highest record %d; repaired to %d",
                task_id, st.counter, last, last + 1,
            )
            st.counter = last + 1
            st.last_seq = self._writer.submit(
                [(keys.counter_key(task_id), storage_codec.encode_int(st.counter))]
            )
        self._cache[task_id] = st
        self._evict()
        return st

    def _require(self, task_id: str) -> TaskState:
        st = self._state(task_id)
        if st is None:
            raise TaskNotFound(task_id)
        return st

    def _evict(self) -> None:
        """Forget idle tasks beyond the cache size; only tasks whose writes are all durable
        and that have nothing queued or running, so a reload from disk is exact."""
        excess = len(self._cache) - self._max_cached
        if excess <= 0:
            return
        durable = self._writer.durable_seq
        for task_id in list(self._cache)[: excess + 64]:
            st = self._cache[task_id]
            if not st.running and not st.queued and st.last_seq <= durable:
                del self._cache[task_id]
                excess -= 1
                if excess == 0:
                    return

    def _submit(self, st: TaskState, ops: list[Any], done: Callable[[BaseException | None], None]) -> int:
        st.last_seq = self._writer.submit(ops, done)
        return st.last_seq

    def _reply_current(self, st: TaskState, execution_id: str, reply: m.Reply) -> None:
        """Answer with an execution as it stands once every earlier write of the task is durable."""
        queued = st.queued.get(execution_id)
        if queued is not None:
            m.answer(reply, queued)
            return
        db, task_id = self._db, st.task.id

        def done(err: BaseException | None) -> None:
            if err is not None:
                m.fail(reply, translate(err) if isinstance(err, _StorageError) else err)
                return
            try:
                ex = db.get_execution(task_id, execution_id)
            except _StorageError as e:
                m.fail(reply, translate(e))
                return
            if ex is None:
                m.fail(reply, ExecutionNotFound(task_id, execution_id))
            else:
                m.answer(reply, ex)

        self._writer.submit([], done)

    def _durably(self, reply: m.Reply | None, then: Callable[[], Any]) -> Callable[[BaseException | None], None]:
        """A writer callback: on success run ``then`` and answer its value, else fail the reply."""

        def done(err: BaseException | None) -> None:
            if err is None:
                try:
                    value = then()
                except Exception as e:  # never leave the caller waiting
                    log.exception("after-write step failed")
                    err = e
                else:
                    m.answer(reply, value)
                    return
            m.fail(reply, translate(err) if isinstance(err, _StorageError) else err)

        return done

    # -- handlers --------------------------------------------------------------------------

    def _create(self, msg: m.CreateTask) -> None:
        task = msg.task
        if self._state(task.id) is not None:
            raise TaskAlreadyExists(task.id)
        st = TaskState(task=task, counter=0)
        self._cache[task.id] = st
        self._cache.move_to_end(task.id)
        self._submit(st, changes.create_task(task), self._durably(msg.reply, lambda: task))

    def _trigger(self, msg: m.Trigger) -> None:
        ex = msg.execution
        st = self._require(ex.task_id)
        key = ex.idempotency_key
        if key is not None:
            existing = self._idempotent(st, key)
            if existing is not None:
                self._reply_current(st, existing, msg.reply)
                return
        if st.exhausted():
            raise TaskNotRunnable(
                f"task {ex.task_id!r} is COMPLETED: it has had its {st.task.max_executions} executions"
            )
        if st.task.job not in self._jobs:
            raise UnknownJob(st.task.job)
        self.triggered += 1
        if ex.blocking:
            st.queued[ex.id] = ex
            if key is not None:
                st.idem[key] = (ex.id, QUEUED)
            self._peers.tell_quietly(self._peers.pool, m.Submit(m.WorkItem(ex, st.task.job, st.task.incarnation)))
            m.answer(msg.reply, ex)
            return
        ex = attrs.evolve(ex, index=st.counter)
        st.counter += 1
        item = m.WorkItem(ex, st.task.job, st.task.incarnation)
        peers = self._peers

        def enqueue() -> Execution:
            # the pending store knows the index before the caller does, so a cancel can claim it
            peers.tell_quietly(peers.pending, m.AddPending(ex.task_id, ex.id, ex.index or 0))
            peers.tell_quietly(peers.pool, m.Submit(item))
            return ex

        seq = self._submit(st, changes.assign(ex), self._durably(msg.reply, enqueue))
        if key is not None:
            st.idem[key] = (ex.id, seq)

    def _idempotent(self, st: TaskState, key: str) -> str | None:
        hit = st.idem.get(key)
        if hit is not None:
            return hit[0]
        if len(st.idem) > 256:  # keep only what is not yet on disk
            durable = self._writer.durable_seq
            st.idem = {k: v for k, v in st.idem.items() if v[1] == QUEUED or v[1] > durable}
        return self._db.find_idempotent(st.task.id, key)

    def _start(self, msg: m.Start) -> None:
        item, ex = msg.item, msg.item.execution
        st = self._state(ex.task_id)
        if st is None or st.task.incarnation != item.incarnation:
            self._board.publish(_finished(ex, ExecutionStatus.CANCELLED, error=TASK_DELETED))
            m.answer(msg.reply, None)
            return
        if ex.blocking:
            queued = st.queued.pop(ex.id, None)
            if queued is None:  # cancelled while queued
                m.answer(msg.reply, None)
                return
            if st.exhausted():
                self._forget_key(st, queued)
                self._board.fail(
                    ex.id,
                    TaskNotRunnable(
                        f"task {ex.task_id!r} became COMPLETED ({st.task.max_executions} executions) "
                        f"before execution {ex.id} started"
                    ),
                )
                m.answer(msg.reply, None)
                return
            running = attrs.evolve(queued, index=st.counter, status=ExecutionStatus.RUNNING, started_at=time.time())
            st.counter += 1
            ops = changes.assign(running)
        else:
            if ex.id in st.running:
                m.answer(msg.reply, None)
                return
            running = attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=time.time())
            ops = changes.update(running)
        st.running[ex.id] = (msg.token, running)
        task = st.task
        seq = self._submit(st, ops, self._durably(msg.reply, lambda: (running, task)))
        if ex.blocking and ex.idempotency_key is not None:
            st.idem[ex.idempotency_key] = (ex.id, seq)

    def _forget_key(self, st: TaskState, ex: Execution) -> None:
        if ex.idempotency_key is not None and st.idem.get(ex.idempotency_key, ("",))[0] == ex.id:
            del st.idem[ex.idempotency_key]

    def _finish(self, msg: m.Finish) -> None:
        ex = msg.execution
        st = self._state(ex.task_id)
        if st is None or st.task.incarnation != msg.incarnation:
            m.answer(msg.reply, None)  # deleted: a late completion never brings the task back
            return
        held = st.running.get(ex.id)
        if held is None or held[0] != msg.token:
            m.answer(msg.reply, None)  # finished already (e.g. by the job timeout)
            return
        self._complete(st, ex, msg.reply)

    def _complete(self, st: TaskState, ex: Execution, reply: m.Reply | None) -> None:
        del st.running[ex.id]
        self.finished += 1
        if not ex.blocking:
            self._peers.tell_quietly(self._peers.pending, m.RemovePending(ex.task_id, ex.id))
        board = self._board

        def published() -> Execution:
            board.publish(ex)
            return ex

        self._submit(st, changes.update(ex), self._durably(reply, published))

    def _abandon(self, msg: m.Abandon) -> None:
        item, ex = msg.item, msg.item.execution
        st = self._state(ex.task_id)
        if st is None or st.task.incarnation != item.incarnation:
            return
        held = st.running.get(ex.id)
        if held is not None and held[0] == msg.token:
            self._complete(st, _finished(held[1], ExecutionStatus.FAILED, error=msg.reason), None)
        elif held is None and (not ex.blocking or ex.id in st.queued):
            # never started: hand it back to the pool
            if not ex.blocking:
                self._peers.tell_quietly(self._peers.pending, m.Unclaim(ex.task_id, ex.id))
            self._peers.tell_quietly(self._peers.pool, m.Submit(item))

    def _cancel(self, msg: m.Cancel) -> None:
        st = self._require(msg.task_id)
        queued = st.queued.pop(msg.execution_id, None)
        if queued is not None:
            self._forget_key(st, queued)
            cancelled = _finished(queued, ExecutionStatus.CANCELLED, error="cancelled by Engine.cancel")
            self._board.publish(cancelled)
            m.answer(msg.reply, cancelled)
            return
        assert self._peers.pending is not None
        index = self._peers.pending.ask(m.Claim(msg.task_id, msg.execution_id))
        if index is None:  # running, finished, or unknown: answer with what it is
            self._reply_current(st, msg.execution_id, msg.reply)
            return
        record = self._db.get_execution(msg.task_id, msg.execution_id)
        if record is None:
            raise ExecutionNotFound(msg.task_id, msg.execution_id)
        cancelled = _finished(record, ExecutionStatus.CANCELLED, error="cancelled by Engine.cancel")
        self._peers.tell_quietly(self._peers.pending, m.RemovePending(msg.task_id, msg.execution_id))
        board = self._board

        def published() -> Execution:
            board.publish(cancelled)
            return cancelled

        self._submit(st, changes.update(cancelled), self._durably(msg.reply, published))

    def _delete(self, msg: m.DeleteTask) -> None:
        st = self._require(msg.task_id)
        assert self._peers.pending is not None
        dropped = cast(list[tuple[str, int]], self._peers.pending.ask(m.DropTask(msg.task_id)))
        cancelled = [_finished(q, ExecutionStatus.CANCELLED, error=TASK_DELETED) for q in st.queued.values()]
        cancelled += [_finished(r, ExecutionStatus.CANCELLED, error=TASK_DELETED) for _, r in st.running.values()]
        for execution_id, _ in dropped:
            if execution_id not in st.running:
                record = self._db.get_execution(msg.task_id, execution_id)
                if record is not None:
                    cancelled.append(_finished(record, ExecutionStatus.CANCELLED, error=TASK_DELETED))
        st.deleted = True
        st.queued.clear()
        st.running.clear()
        st.idem.clear()
        board = self._board

        def published() -> None:
            for ex in cancelled:
                board.publish(ex)

        self._submit(st, changes.delete_task(msg.task_id), self._durably(msg.reply, published))
        log.info("task %r deleted (%d unfinished executions cancelled)", msg.task_id, len(cancelled))

    def _get_task(self, msg: m.GetTask) -> None:
        st = self._require(msg.task_id)
        m.answer(msg.reply, attrs.evolve(st.task, execution_count=st.counter))

    def _lookup(self, msg: m.Lookup) -> None:
        st = self._state(msg.task_id)
        if st is None:
            m.answer(msg.reply, None)
        else:
            m.answer(msg.reply, (st.queued.get(msg.execution_id), st.last_seq))

    def _interrupted(self, msg: m.Interrupted) -> None:
        ex = msg.execution
        st = self._require(ex.task_id)
        failed = _finished(ex, ExecutionStatus.FAILED, error=INTERRUPTED)
        self._submit(st, changes.update(failed), self._durably(msg.reply, lambda: failed))

    def _stats(self, msg: m.CounterStats) -> None:
        m.answer(
            msg.reply,
            {
                "cached_tasks": len(self._cache),
                "running": sum(len(st.running) for st in self._cache.values()),
                "queued_blocking": sum(len(st.queued) for st in self._cache.values()),
                "triggered": self.triggered,
                "finished": self.finished,
            },
        )


def _finished(ex: Execution, status: ExecutionStatus, *, error: str | None = None, result: Any = None) -> Execution:
    return attrs.evolve(ex, status=status, error=error, result=result, finished_at=time.time())
