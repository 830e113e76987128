"""Counter actors: the one writer of each task's counter, records and deletion.

Every change to a task goes through the counter actor the task is hashed to, so
index assignment, starts, finishes, cancels and deletion of one task are
serialised without locks. Its turns (group commit: one synced write for every message
waiting, answers only after it; with several nodes, tasks locked and turns decided again)
are turn.py's; this module holds its message handlers and the task state they keep.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, cast, final

from taskengine.storage import Execution, ExecutionStatus, Task, records
from taskengine.storage.errors import CorruptRecord
from taskengine.storage.interface import Store, StoredTask, Writer

from . import hooks, retention
from . import messages as m
from .backlog import Backlog
from .board import CompletionBoard
from .errors import (
    ExecutionNotFound,
    QueueFull,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
)
from .hooks import HookSet
from .jobs import JobRegistry
from .mailbox import Reply
from .refs import ActorRefs, tell_if_alive
from .taskstate import PRUNE_SCHEDULED, TaskState
from .turn import Outcome, Turn, TurnActor
from .workqueue import give_back

log = logging.getLogger(__name__)

TASK_DELETED = "cancelled: the task was deleted"
INTERRUPTED = records.INTERRUPTED


@final  # mypy then refuses it while it leaves one of TurnActor's abstract methods undefined
class CounterActor(TurnActor):

    def __init__(
        self,
        db: Store,
        committer: Writer,
        board: CompletionBoard,
        refs: ActorRefs,
        jobs: JobRegistry,
        max_cached: int,
        hooks: HookSet,
        backlog: Backlog | None = None,
        keep_last: int | None = None,
    ) -> None:
        """``backlog``: the engine's max_queued bound, if any; ``keep_last``: its retention policy."""
        super().__init__()
        self._hooks = hooks
        self._db = db
        self._changes = db.changes
        self._committer = committer
        # a writer that does not say (PostgreSQL's: other nodes write too) may miss
        self._may_miss: bool = getattr(committer, "may_miss", True)
        self._shares = committer.node is not None
        self._gather = 0
        self._board = board
        self._refs = refs
        self._jobs = jobs
        self._max_cached = max_cached
        self._backlog = backlog
        self._keep_last = keep_last
        self._cache: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self._turn = Turn()
        self._turn_no = 0
        self._leftover: Any = None  # an envelope taken from the inbox, handled after the turn's write
        self._abandoned: set[int] = set()  # tokens whose executor was given up on before it started
        self._unparked: list[m.Trigger] = []  # parked repeats to handle again after this message
        self.triggered = 0
        self._ended: dict[ExecutionStatus, int] = dict.fromkeys(
            (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED), 0
        )
        self.pruned = 0
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
            m.Prune: self._prune,
            m.RemoteOutcomes: self._remote_outcomes,
        }

    def _drop_entries(self, task_id: str) -> dict[str, bool]:
        """The pending store's entries of the task, taken from it (execution id -> claimed yet)."""
        pending = self._refs.pending
        assert pending is not None
        dropped = cast(dict[str, bool], pending.ask(m.DropTask(task_id)))
        if dropped:
            self._undo(lambda: pending.tell(m.PutBack(task_id, dropped)))
        return dropped

    def _refresh(self, ids: list[str], rows: list[StoredTask]) -> None:
        """Cached states as the locked rows say: another node may have moved a counter or a prune
        mark, or deleted the task (and maybe created it again: another incarnation)."""
        found = {row.id: row for row in rows}
        for task_id in set(ids):
            st = self._cache.get(task_id)
            if st is None or st.deleted:
                continue
            row = found.get(task_id)
            if row is None or (row.incarnation is not None and row.incarnation != st.task.incarnation):
                self._deleted_elsewhere(st)
            elif row.counter != st.stored or row.prune_mark != st.mark:
                st.counter = st.stored = row.counter
                st.mark = row.prune_mark

    def _stampable(self, message: Any) -> TaskState | None:
        """A non-blocking trigger without an idempotency key, of a task cached here: all it reads of
        the task's row is its counter (its limit and incarnation the stamped write checks), so its
        index can be decided by the write (a key is looked for first, a blocking one has none yet)."""
        if type(message) is not m.Trigger or message.blocking or message.idempotency_key is not None:
            return None
        st = self._cache.get(message.task_id)
        return None if st is None or st.deleted else st

    def _deleted_elsewhere(self, st: TaskState) -> None:
        """Another node deleted the task: its executions are gone from the database, so what this
        node holds of them (queued blocking ones, running jobs, pending entries) is cancelled here,
        as a deletion on this node would have, and the state is forgotten. (Waiters of its PENDING
        ones, whose records went with it, are answered by remote.py, which saw them last.)"""
        task_id = st.task.id
        dropped = self._drop_entries(task_id)
        cancelled = [_finished(q, ExecutionStatus.CANCELLED, error=TASK_DELETED) for q in st.queued.values()]
        cancelled += [_finished(r, ExecutionStatus.CANCELLED, error=TASK_DELETED) for _, r in st.running.values()]
        for execution_id in [*st.queued, *dropped]:
            self._release(execution_id)
        self._unqueue_all(st)
        del self._cache[task_id]
        for ex in cancelled:
            self._board.publish(ex)
        log.info("task %r was deleted by another node (%d executions held here cancelled)", task_id, len(cancelled))

    # -- task state ----------------------------------------------------------------------

    def _state(self, task_id: str) -> TaskState | None:
        st = self._cache.get(task_id)
        if st is not None:
            self._cache.move_to_end(task_id)
            return None if st.deleted else st
        task = self._db.get_task(task_id)
        if task is None:
            return None
        st = TaskState(task=task, counter=task.execution_count, stored=task.execution_count, mark=task.prune_mark)
        last = self._db.last_index(task_id)
        floor = max(st.mark, -1 if last is None else last + 1)
        if floor > st.counter:
            # a counter behind its records or its prune mark (a damaged or hand-edited database)
            # must never re-issue an index
            log.warning(
                "task %r: stored counter %d is behind its highest record %s or its prune mark %d; repaired to %d",
                task_id, st.counter, last, st.mark, floor,
            )
            st.counter = floor
            self._turn.counted[id(st)] = st  # written with this turn (or with the task's next index)
        self._cache[task_id] = st
        return st

    def _require(self, task_id: str) -> TaskState:
        st = self._state(task_id)
        if st is None:
            raise TaskNotFound(task_id)
        return st

    def _evict(self) -> None:
        """Between turns everything is on disk, so an idle task can be forgotten and reloaded."""
        excess = len(self._cache) - self._max_cached
        if excess <= 0:
            return
        for task_id in list(itertools.islice(self._cache, excess + 64)):  # the least recently used
            st = self._cache[task_id]
            if not st.running and not st.queued:
                del self._cache[task_id]
                excess -= 1
                if excess == 0:
                    return

    def _reread_outcome(self, task_id: str, execution_id: str) -> Outcome:
        """An outcome that reads the execution as it stands after this turn's write (a deletion
        later in the same turn makes it TaskNotFound, as if the read had come after the deletion)."""

        def read() -> Execution:
            ex = self._db.get_execution(task_id, execution_id)
            if ex is None:
                if self._state(task_id) is None:
                    raise TaskNotFound(task_id)
                raise ExecutionNotFound(task_id, execution_id)
            return ex

        return read

    # -- handlers --------------------------------------------------------------------------

    def _create(self, msg: m.CreateTask) -> None:
        task = msg.task
        st = self._state(task.id)
        if st is not None:
            difference = _difference(st.task, task)
            if not msg.exist_ok or difference is not None:
                raise TaskAlreadyExists(task.id, difference if msg.exist_ok else None)
            existing = st.view()
            self._after_write(msg.reply, lambda: existing)
            return
        ops = self._changes.create_task(task)  # first: an encoding error must leave nothing behind
        self._cache[task.id] = TaskState(task=task, counter=0)
        self._cache.move_to_end(task.id)
        self._write(ops, msg.reply, lambda: task)

    def _trigger(self, msg: m.Trigger) -> None:
        st = self._require(msg.task_id)
        key = msg.idempotency_key
        if key is not None:
            existing = self._execution_with_key(st, key)
            if existing is not None and not msg.blocking and existing in st.queued:
                # its id may never be stored (cancelled, refused, or its key stored first by
                # another node): the repeat waits until it leaves the queue, then is handled again
                st.parked[existing] = (*st.parked.get(existing, ()), msg)
                return
            if existing is not None:
                self._after_write(msg.reply, self._repeat(st, msg, existing))
                return
        if st.exhausted():
            raise TaskNotRunnable(
                f"task {msg.task_id!r} is COMPLETED: it has had its {st.task.max_executions} executions"
            )
        if st.task.job not in self._jobs:
            raise UnknownJob(st.task.job)
        index = None if msg.blocking else st.counter
        ex = Execution(
            id=msg.execution_id,
            task_id=msg.task_id,
            index=index,
            status=ExecutionStatus.PENDING,
            blocking=msg.blocking,
            data=msg.data,
            created_at=msg.created_at,
            idempotency_key=key,
        )
        if index is None:
            self._reserve(ex.id)
            self.triggered += 1
            st.queued[ex.id] = ex
            if key is not None:
                st.idem[key] = (ex.id, None)
            self._turn.submits.append(m.WorkItem(ex, st.task.job, st.task.incarnation))
            self._after_write(msg.reply, lambda: ex)
            if self._hooks.active:
                self._note(hooks.TRIGGER, ex)
            return
        item = m.WorkItem(ex, st.task.job, st.task.incarnation)
        work = self._refs.work
        # an idle executor (so nothing is queued) and nothing queued ahead of it in this turn:
        # started in this same write, see _start_now
        running = records.started(ex, time.time()) if (
            work is not None and work.any_idle and not self._turn.submits) else None
        # before any state changes
        ops = self._changes.assign(ex if running is None else running, with_counter=False, started=running is not None)
        self._reserve(ex.id)
        if running is not None and not self._start_now(st, item, running):
            ops = self._changes.assign(ex, with_counter=False)  # the executor was taken meanwhile
            running = None
        self.triggered += 1
        self._advance(st)
        if running is None:
            self._turn.pending.append((ex.task_id, ex.id, index))
            self._turn.submits.append(item)
        self._write(ops, msg.reply, functools.partial(self._turn.placed, ex) if self._turn.stamped else lambda: ex)
        if self._hooks.active:
            self._note(hooks.TRIGGER, ex)
            if running is not None:
                self._note(hooks.START, running)
        if key is not None:
            self._remember_key(st, key, ex.id)

    def _start_now(self, st: TaskState, item: m.WorkItem, running: Execution) -> bool:
        """Start a non-blocking execution in its trigger's write, on an executor that waits for
        work: it saves the execution the start's own write and round trip (the executor asks no
        one: the pending store is told it is claimed, in the same message that lists it). Its
        RUNNING record is durable when the executor is told to run it, as a start's is when
        the start is answered. False if no executor is idle."""
        work = self._refs.work
        assert work is not None
        reserved = work.reserve(item)
        if reserved is None:
            return False
        ref, _, token = reserved
        self._undo(functools.partial(give_back, work, self._refs.pool, ref, token))
        self._release(running.id)  # it leaves the backlog as it starts
        st.running[running.id] = (token, running)
        self._turn.direct.append((st, ref, item, token, running))
        return True

    def _repeat(self, st: TaskState, msg: m.Trigger, existing: str) -> Callable[[], Execution]:
        """The answer to an idempotent repeat. A blocking repeat's caller waits on its own id;
        the board passes it the first execution's outcome, whatever it is (finished, refused,
        cancelled), so both callers get the same answer. It is registered after this turn's
        write and before the read: an outcome published earlier in the turn is in the read."""
        queued = st.queued.get(existing)
        board, follower = self._board, msg.execution_id
        read = self._reread_outcome(msg.task_id, existing)

        def answer() -> Execution:
            if msg.blocking:
                board.follow(existing, follower, msg.task_id)
            try:
                ex = queued if queued is not None else read()
            except BaseException:
                board.unfollow(existing, follower)
                raise
            if ex.status.is_finished:
                board.unfollow(existing, follower)
            elif ex.index is not None:
                board.seen(ex)
            return ex

        return answer

    def _reserve(self, execution_id: str) -> None:
        """A place in the engine's backlog, or QueueFull: the last check before a trigger changes
        anything, so a refused one uses no index."""
        backlog = self._backlog
        if backlog is not None:
            if not backlog.reserve(execution_id):
                raise QueueFull(backlog.limit)
            self._undo(functools.partial(backlog.release, execution_id))

    def _release(self, execution_id: str) -> None:
        """The execution started, or left the queue without starting."""
        backlog = self._backlog
        if backlog is not None and backlog.release(execution_id):
            self._undo(lambda: backlog.add((execution_id,)))

    def _advance(self, st: TaskState) -> None:
        """One more index handed out; the counter is written once for the turn (see _commit)."""
        st.counter += 1
        self._turn.counted[id(st)] = st

    def _execution_with_key(self, st: TaskState, key: str) -> str | None:
        """Keys of queued blocking executions and of this turn are in memory; the rest on disk."""
        hit = st.idem.get(key)
        return hit[0] if hit is not None else self._db.find_idempotent(st.task.id, key)

    def _remember_key(self, st: TaskState, key: str, execution_id: str) -> None:
        """Until this turn's write puts the key on disk; then it is forgotten."""
        st.idem[key] = (execution_id, self._turn_no)
        self._turn.keys.append((st, key))

    def _start(self, msg: m.Start) -> None:
        if msg.finished is not None:  # the executor's previous run: one message for both
            self._handle(msg.finished)
        item, ex = msg.item, msg.item.execution
        if not ex.blocking:  # claimed: it runs now or never (a blocking item is a ticket, below)
            self._release(ex.id)
        if msg.token in self._abandoned:  # its executor timed out or died before this arrived
            self._abandoned.discard(msg.token)
            self._undo(functools.partial(self._abandoned.add, msg.token))
            self._after_write(msg.reply, _refused)
            return
        st = self._state(ex.task_id)
        if st is None or st.task.incarnation != item.incarnation:
            cancelled = _finished(ex, ExecutionStatus.CANCELLED, error=TASK_DELETED)

            def refuse() -> m.NotStarted:
                self._board.publish(cancelled)
                return m.NotStarted.REFUSED

            self._after_write(msg.reply, refuse)
            return
        if ex.blocking:
            # a blocking item is a ticket: it starts the task's oldest queued blocking execution,
            # so blocking triggers get indexes in the order they were made (README: ordered)
            if not st.queued:  # cancelled while queued
                self._after_write(msg.reply, _refused)
                return
            queued = st.queued[next(iter(st.queued))]
            self._release(queued.id)
            if self._turn.shared and queued.idempotency_key is not None and self._stored_elsewhere(st, queued):
                self._after_write(msg.reply, _refused)
                return
            if st.exhausted():
                self._unqueue(st, queued.id)
                self._forget_key(st, queued)
                error = TaskNotRunnable(
                    f"task {ex.task_id!r} became COMPLETED ({st.task.max_executions} executions) "
                    f"before execution {queued.id} started"
                )

                def refuse_exhausted() -> m.NotStarted:
                    self._board.fail(queued.id, error)
                    return m.NotStarted.REFUSED

                self._after_write(msg.reply, refuse_exhausted)
                return
            running = records.started(queued, time.time(), st.counter)
            ops = self._changes.assign(running, with_counter=False, started=True)
            self._unqueue(st, queued.id)
            self._advance(st)
            if queued.idempotency_key is not None:
                self._remember_key(st, queued.idempotency_key, queued.id)
        else:
            if ex.id in st.running:
                self._after_write(msg.reply, _refused)
                return
            running = records.started(ex, time.time())
            ops = self._changes.update(running)
        st.running[running.id] = (msg.token, running)
        if self._hooks.active:
            self._note(hooks.START, running)
        task = st.task

        def started() -> tuple[Execution, Task] | m.NotStarted:
            # deleted later in this same turn: the job must not run
            return m.NotStarted.REFUSED if st.deleted else (running, task)

        if ex.blocking:
            self._write(ops, msg.reply, started)
            return

        def claimed_elsewhere() -> m.NotStarted:
            # another node claimed it first (or it was cancelled or deleted): it is not run here
            if st.running.get(running.id, (None,))[0] == msg.token:
                del st.running[running.id]
            return m.NotStarted.REFUSED

        self._write_soft(ops, running.id, msg.reply, started, claimed_elsewhere)

    def _stored_elsewhere(self, st: TaskState, queued: Execution) -> bool:
        """A queued blocking execution's idempotency key, stored meanwhile by another node (under
        the task's lock the disk is authoritative): the queued one is dropped, and its caller is
        answered as a repeat, with the stored execution's outcome once it has one."""
        key = queued.idempotency_key
        assert key is not None
        existing = self._db.find_idempotent(st.task.id, key)
        if existing is None or existing == queued.id:
            return False
        self._unqueue(st, queued.id)
        self._forget_key(st, queued)
        board, read = self._board, self._reread_outcome(st.task.id, existing)

        def follow() -> None:  # logged once written: a turn decided again does not log it twice
            log.info("task %r: idempotency key of queued execution %s was stored by another node (execution %s)",
                     st.task.id, queued.id, existing)
            board.follow(existing, queued.id, st.task.id)  # run by another node, most likely
            try:
                stored = read()
            except Exception as e:  # pruned or deleted meanwhile: the caller is told so
                board.fail(queued.id, e)
                return
            if stored.status.is_finished:
                board.publish(stored)
            else:
                board.seen(stored)

        self._after_write(None, follow)
        return True

    def _unqueue(self, st: TaskState, execution_id: str) -> Execution | None:
        """Take a blocking execution out of the queue (started, refused, cancelled, dropped);
        the repeats parked on it are handled again once the current message is."""
        self._unparked += st.parked.pop(execution_id, ())
        return st.queued.pop(execution_id, None)

    def _unqueue_all(self, st: TaskState) -> None:
        for execution_id in list(st.queued):
            self._unqueue(st, execution_id)

    def _forget_key(self, st: TaskState, ex: Execution) -> None:
        if ex.idempotency_key is not None and st.idem.get(ex.idempotency_key, ("",))[0] == ex.id:
            del st.idem[ex.idempotency_key]

    def _running_with(self, st: TaskState, token: int) -> Execution | None:
        for held_token, running in st.running.values():
            if held_token == token:
                return running
        return None

    def _finish(self, msg: m.Finish) -> None:
        ex = msg.execution
        st = self._state(ex.task_id)
        held = None if st is None or st.task.incarnation != msg.incarnation else st.running.get(ex.id)
        if st is None or held is None or held[0] != msg.token:
            # deleted (a late completion never brings the task back), or finished already (job timeout)
            self._after_write(msg.reply, lambda: None)
            return
        self._complete(st, ex, msg.reply, listed=not msg.unlisted)

    def _complete(self, st: TaskState, ex: Execution, reply: Reply[Any] | None, listed: bool = True) -> None:
        ops = self._changes.update(ex)
        del st.running[ex.id]
        self._ended_now(ex)
        if not ex.blocking and listed:
            self._turn.removed.append((ex.task_id, ex.id))
        self._write_soft(ops, ex.id, reply, lambda: self._publish_and_answer(ex), lambda: self._not_ours(ex))
        self._retain(st, ex.index)

    def _not_ours(self, ex: Execution) -> None:
        """A finish that missed: the execution is no longer this node's to finish (its task was
        deleted, or another node finished it): nothing is written and nothing comes back."""
        self._ended[ex.status] -= 1
        log.warning("execution %s of task %r finished here as %s, but it is no longer this node's: not stored",
                    ex.id, ex.task_id, ex.status.value)

    def _ended_now(self, ex: Execution) -> None:
        """Count a finished execution, and note it for the hooks."""
        self._ended[ex.status] += 1
        if self._hooks.active:
            self._note(hooks.FINISH, ex)

    def _note(self, kind: str, ex: Execution) -> None:
        """An event for the hooks, run once this turn's write is durable."""
        turn = self._turn
        if turn.events is None:
            turn.events = []
        turn.events.append((kind, ex))

    def _publish_and_answer(self, ex: Execution) -> Execution:
        """An outcome: wake the execution's waiters, and answer with it."""
        self._board.publish(ex)
        return ex

    def _abandon(self, msg: m.Abandon) -> None:
        """The executor holding ``msg.token`` timed out or died. What it started is finished as
        FAILED; a late Start carrying the token is refused. A blocking ticket that started
        nothing goes back to the pool; a claimed non-blocking execution is failed, not run again,
        so an executor that dies on it cannot die on it forever."""
        item, ex = msg.item, msg.item.execution
        st = self._state(ex.task_id)
        if st is None or st.task.incarnation != item.incarnation:
            return
        running = self._running_with(st, msg.token)
        if running is not None:
            self._complete(st, _finished(running, ExecutionStatus.FAILED, error=msg.reason), None)
            return
        if msg.token not in self._abandoned:
            self._abandoned.add(msg.token)
            self._undo(functools.partial(self._abandoned.discard, msg.token))
        if len(self._abandoned) > 10_000:  # tokens of executors that died and never sent Start
            self._abandoned.discard(min(self._abandoned))
        if ex.blocking:
            self._turn.submits.append(item)  # at worst one ticket too many: it finds nothing queued
            return
        self._release(ex.id)
        # only if it never started: a job timeout can fire while the job's Finish is on its way,
        # and a finished execution must stay as it finished (it was RUNNING on disk before that)
        on_disk = self._db.get_execution_at(ex.task_id, ex.index or 0)
        if on_disk is not None and on_disk.id == ex.id and on_disk.status is ExecutionStatus.PENDING:
            failed = _finished(ex, ExecutionStatus.FAILED, error=msg.reason)
            self._turn.removed.append((ex.task_id, ex.id))
            self._ended_now(failed)
            self._write_soft(self._changes.update(failed), failed.id, None,
                             lambda: self._publish_and_answer(failed), lambda: self._not_ours(failed))
            self._retain(st, ex.index)

    def _cancel(self, msg: m.Cancel) -> None:
        st = self._require(msg.task_id)
        queued = self._unqueue(st, msg.execution_id)
        if queued is not None:
            self._release(queued.id)
            self._forget_key(st, queued)
            cancelled = _finished(queued, ExecutionStatus.CANCELLED, error="cancelled by Engine.cancel")
            self._ended_now(cancelled)
            self._after_write(msg.reply, lambda: self._publish_and_answer(cancelled))
            return
        assert self._refs.pending is not None
        pending = self._refs.pending
        if pending.ask(m.Claim(msg.task_id, msg.execution_id)):
            self._undo(lambda: pending.tell(m.PutBack(msg.task_id, {msg.execution_id: False})))
            self._release(msg.execution_id)
            record = self._db.get_execution(msg.task_id, msg.execution_id)  # PENDING, on disk
            if record is None:
                raise ExecutionNotFound(msg.task_id, msg.execution_id)
        else:
            record = self._pending_elsewhere(st, msg.execution_id)
            if record is None:
                # running, finished, or unknown: answer with what it is
                self._after_write(msg.reply, self._reread_outcome(msg.task_id, msg.execution_id))
                return
        cancelled = _finished(record, ExecutionStatus.CANCELLED, error="cancelled by Engine.cancel")
        self._ended_now(cancelled)
        self._turn.removed.append((msg.task_id, msg.execution_id))
        reread = self._reread_outcome(msg.task_id, msg.execution_id)

        def started_elsewhere() -> Execution:  # another node claimed it first: it is as it stands
            self._ended[ExecutionStatus.CANCELLED] -= 1
            return cast(Execution, reread())

        self._write_soft(self._changes.update(cancelled), cancelled.id, msg.reply,
                         lambda: self._publish_and_answer(cancelled), started_elsewhere)
        self._retain(st, cancelled.index)

    def _pending_elsewhere(self, st: TaskState, execution_id: str) -> Execution | None:
        """With several nodes (a turn that locked the task): an execution this node does not hold
        (another node made it, or holds it to run) that is PENDING on the database is cancelled
        here as well. The cancel is written only if the row is still PENDING, as a start is: of
        the two, the first written wins, and a node whose start comes second does not run it."""
        if not self._turn.shared or execution_id in st.running:
            return None
        record = self._db.get_execution(st.task.id, execution_id)
        return record if record is not None and record.status is ExecutionStatus.PENDING else None

    def _delete(self, msg: m.DeleteTask) -> None:
        try:
            st = self._require(msg.task_id)
        except CorruptRecord:
            self._delete_unreadable(msg)
            return
        dropped = self._drop_entries(msg.task_id)
        cancelled = [_finished(q, ExecutionStatus.CANCELLED, error=TASK_DELETED) for q in st.queued.values()]
        cancelled += [_finished(r, ExecutionStatus.CANCELLED, error=TASK_DELETED) for _, r in st.running.values()]
        for execution_id in dropped:
            if execution_id not in st.running:
                record = self._db.get_execution(msg.task_id, execution_id)
                if record is not None:
                    cancelled.append(_finished(record, ExecutionStatus.CANCELLED, error=TASK_DELETED))
        for execution_id in [*st.queued, *dropped]:
            self._release(execution_id)
        st.deleted = True
        for ex in cancelled:
            self._ended_now(ex)
        self._turn.deleted.append(msg.task_id)
        self._unqueue_all(st)
        st.running.clear()
        st.idem.clear()

        def published() -> None:  # logged once written: a turn decided again does not log it twice
            log.info("task %r deleted (%d unfinished executions cancelled)", msg.task_id, len(cancelled))
            for ex in cancelled:
                self._board.publish(ex)

        self._write(self._changes.delete_task(msg.task_id), msg.reply, published)

    def _delete_unreadable(self, msg: m.DeleteTask) -> None:
        """A task whose record cannot be read is still deleted (the way out of a damaged task
        short of ``taskengine recover``): none of its state could be loaded, so nothing of it runs
        here, and what the pending store held of it (recovered from intact live entries) goes."""
        for execution_id in self._drop_entries(msg.task_id):
            self._release(execution_id)

        def logged() -> None:  # once written: a turn decided again does not log it twice
            log.warning("task %r deleted although its record could not be read", msg.task_id)

        self._write(self._changes.delete_task(msg.task_id), msg.reply, logged)

    def _get_task(self, msg: m.GetTask) -> None:
        task = self._require(msg.task_id).view()
        self._after_write(msg.reply, lambda: task)

    def _lookup(self, msg: m.Lookup) -> None:
        queued = self._require(msg.task_id).queued.get(msg.execution_id)
        self._after_write(msg.reply, lambda: queued)

    def _interrupted(self, msg: m.Interrupted) -> None:
        st = self._require(msg.execution.task_id)  # loads the task, reconciling its counter first
        failed = _finished(msg.execution, ExecutionStatus.FAILED, error=INTERRUPTED)
        self._ended_now(failed)
        reread = self._reread_outcome(failed.task_id, failed.id)

        def finished_elsewhere() -> Execution:  # another node recovered it first
            self._ended[ExecutionStatus.FAILED] -= 1
            return cast(Execution, reread())

        self._write_soft(self._changes.update(failed), failed.id, msg.reply, lambda: failed, finished_elsewhere)
        self._retain(st, failed.index)

    def _remote_outcomes(self, msg: m.RemoteOutcomes) -> None:
        board = self._board

        def publish() -> None:
            for ex in msg.finished:
                board.publish(ex)
            for execution_id, error in msg.failed:
                board.fail(execution_id, error)

        self._after_write(None, publish)

    # -- retention -------------------------------------------------------------------------

    def _prune(self, msg: m.Prune) -> None:
        """Alone in its turn (see on_receive): the live keys on disk are exactly the task's
        unfinished executions, and the records below the counter are all written."""
        st = self._require(msg.task_id)
        incarnation = st.task.incarnation
        if msg.incarnation is not None and msg.incarnation != incarnation:
            # the task a prune in steps started on was deleted: this one starts at 0 and was not asked about
            replaced = m.Pruned(0, st.mark, st.mark, False, incarnation)
            self._after_write(msg.reply, lambda: replaced)
            return
        policy = msg.reply is None
        if policy:
            st.prune_wait = None
        target = st.counter
        if msg.keep_last is not None:
            target = min(target, st.counter - msg.keep_last)
        if msg.before_index is not None:
            target = min(target, msg.before_index)
        start = st.mark
        stop = min(target, start + retention.PRUNE_CHUNK)
        first_live = self._db.first_live(msg.task_id) if stop > start else None
        if first_live is not None:
            stop = min(stop, first_live)
        run = self._db.finished_run(msg.task_id, start, stop)
        mark = start + len(run)
        # it stopped at an unfinished execution (or a record it could not read) below the target
        blocked = mark < min(target, start + retention.PRUNE_CHUNK)
        if run:
            st.mark = mark
            self.pruned += len(run)
            self._write(self._changes.prune(msg.task_id, run, mark))
        if policy:
            if blocked:
                st.prune_wait = mark  # tried again once that execution finishes
            elif mark < target:
                self._schedule_prune(st)
        result = m.Pruned(len(run), mark, target, blocked, incarnation)
        self._after_write(msg.reply, lambda: result)

    def _retain(self, st: TaskState, index: int | None) -> None:
        """The retention policy, after an execution of ``st`` finished: once the task holds
        enough more than ``keep_last`` executions, a Prune (for a later turn of its own)."""
        if self._keep_last is None or (st.prune_wait is not None and st.prune_wait != index):
            return  # no policy; or a Prune is on its way, or the last one waits for another execution
        st.prune_wait = None
        if st.counter - st.mark - self._keep_last >= retention.slack(self._keep_last):
            self._schedule_prune(st)

    def _schedule_prune(self, st: TaskState) -> None:
        st.prune_wait = PRUNE_SCHEDULED
        prune = m.Prune(st.task.id, self._keep_last, None, None)
        # sent once the turn is written: a turn decided again schedules it again (one Prune, not two)
        self._after_write(None, lambda: tell_if_alive(self.actor_ref, prune))

    def _stats(self, msg: m.CounterStats) -> None:
        figures = {
            "cached_tasks": len(self._cache),
            "queued_blocking": sum(len(st.queued) for st in self._cache.values()),
            "triggered": self.triggered,
            "succeeded": self._ended[ExecutionStatus.SUCCESS],
            "failed": self._ended[ExecutionStatus.FAILED],
            "cancelled": self._ended[ExecutionStatus.CANCELLED],
            "pruned": self.pruned,
        }
        self._after_write(msg.reply, lambda: figures)



def _difference(existing: Task, wanted: Task) -> str | None:
    """How ``wanted`` differs from the ``existing`` task of the same id, for get-or-create: job,
    config (compared as canonical JSON: key order does not matter, ``1`` and ``1.0`` differ) or
    max_executions; None if in nothing."""
    found = []
    for name in ("job", "config", "max_executions"):
        have, want = getattr(existing, name), getattr(wanted, name)
        if json.dumps(have, sort_keys=True) != json.dumps(want, sort_keys=True):
            found.append(f"{name} ({_short(have)}, not {_short(want)})")
    return "; ".join(found) if found else None


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _refused() -> m.NotStarted:
    return m.NotStarted.REFUSED


def _finished(ex: Execution, status: ExecutionStatus, *, error: str | None = None, result: Any = None) -> Execution:
    return records.finished(ex, status, time.time(), result=result, error=error)
