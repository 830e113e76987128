"""Counter actors: the one writer of each task's counter, records and deletion.

Every change to a task goes through the counter actor the task is hashed to, so
index assignment, starts, finishes, cancels and deletion of one task are
serialised without locks. Group commit happens here: pykka hands an actor one
message at a time, so a counter actor takes every message already waiting in its
inbox, handles them all, writes all their changes in one synced write (a LevelDB batch, a
PostgreSQL transaction), and only then answers. An index is never acknowledged before the write that holds it.

With several nodes on one PostgreSQL database, a turn first has the writer lock the tasks its
messages touch (``Writer.begin``), so nodes are serialised per task by the database's locks,
and refreshes its cached states from the rows it locked before it decides anything: another
node may have handed out indexes, pruned, or deleted the task. A change that misses (a claim
another node won) is answered as such after the write. On LevelDB ``begin`` does nothing.

A shared turn whose write did not commit because its connection was lost, and whose tasks
another node wrote before the writer got them locked again (``TasksChanged``: common after a
server restart, when every node reconnects and the first one back writes), is decided again:
what its handling changed here is put back as it was when the turn began, and the same messages
are handled against the rows as they now stand. Nobody was answered, so nobody sees the first
decision (an index it chose was never acknowledged, and is chosen again from the new counter).
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import queue
import time
from collections.abc import Callable, Collection
from typing import Any, cast

import attrs

from taskengine.storage import Execution, ExecutionStatus, Task, records
from taskengine.storage.errors import CorruptRecord, TasksChanged, WriteFailed
from taskengine.storage.errors import StorageError as _StorageError
from taskengine.storage.interface import Change, Store, StoredTask, Writer

from . import hooks, retention
from . import messages as m
from .backlog import Backlog
from .board import CompletionBoard
from .errors import (
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    QueueFull,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
    translate,
)
from .hooks import HookSet
from .jobs import JobRegistry
from .mailbox import EngineActor, Reply
from .refs import ActorRefs, tell_if_alive
from .workqueue import wake

log = logging.getLogger(__name__)

TASK_DELETED = "cancelled: the task was deleted"
INTERRUPTED = records.INTERRUPTED
MAX_CHANGES_PER_TURN = 1024  # one turn, one write: bounds its size and its wait (in messages)


@attrs.define
class TaskState:
    task: Task
    counter: int
    stored: int = 0  # the counter as the last write stored it
    mark: int = 0  # the prune mark: the lowest stored index
    #: the retention policy's state: None idle, PRUNE_SCHEDULED while a Prune is on its way, or the
    #: index of the unfinished execution the last prune stopped at (pruning waits for it to finish)
    prune_wait: int | None = None
    deleted: bool = False  # a tombstone, so the id reads as absent until the entry is dropped
    running: dict[str, tuple[int, Execution]] = attrs.Factory(dict)  # id -> (token, RUNNING record)
    queued: dict[str, Execution] = attrs.Factory(dict)  # blocking executions not started yet
    # idempotency keys not (yet) on disk: key -> (execution id, the turn whose write stores the key,
    # or None while its blocking execution is queued and has no record)
    idem: dict[str, tuple[str, int | None]] = attrs.Factory(dict)
    # non-blocking idempotent repeats of a queued blocking execution, by its id: handled again
    # once it leaves the queue (README: they wait until the first one has an index)
    parked: dict[str, tuple[m.Trigger, ...]] = attrs.Factory(dict)

    def exhausted(self) -> bool:
        return self.task.max_executions is not None and self.counter >= self.task.max_executions

    def saved(self) -> tuple[Any, ...]:
        """What handling a message may change of it, its collections copied (for ``put_back``:
        a turn decided again)."""
        return (self.task, self.counter, self.stored, self.mark, self.prune_wait, self.deleted,
                dict(self.running), dict(self.queued), dict(self.idem), dict(self.parked))

    def put_back(self, saved: tuple[Any, ...]) -> None:
        (self.task, self.counter, self.stored, self.mark, self.prune_wait, self.deleted,
         self.running, self.queued, self.idem, self.parked) = saved

    def view(self) -> Task:
        """The task as callers see it: with its counter and prune mark as they stand."""
        return attrs.evolve(self.task, execution_count=self.counter, prune_mark=self.mark)


PRUNE_SCHEDULED = -1


#: run after the turn's write: its value answers the message (its exception fails it)
Outcome = Callable[[], Any]


class _Turn:
    """What one turn of the actor will write, and what it does once the write is durable."""

    __slots__ = ("changes", "answers", "pending", "removed", "submits", "deleted", "keys", "counted", "events",
                 "soft", "shared", "saved", "undo", "again")

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.answers: list[tuple[Reply[Any] | None, Outcome]] = []  # in the order the messages came
        self.pending: list[tuple[str, str, int]] = []
        self.removed: list[tuple[str, str]] = []  # pending entries whose execution finished
        self.submits: list[m.WorkItem] = []
        self.deleted: list[str] = []  # tombstones to drop once their deletion is written
        self.keys: list[tuple[TaskState, str]] = []  # idempotency keys to forget once written
        self.counted: dict[int, TaskState] = {}  # tasks that handed out indexes: one counter put each
        self.events: list[tuple[str, Execution]] | None = None  # for the hooks, only when there are some
        # changes that may miss (Changes.update): position -> (its answer's position, execution id,
        # the outcome that answers instead if it missed)
        self.soft: dict[int, tuple[int, str, Outcome]] = {}
        self.shared = False  # the writer locked this turn's tasks: other nodes share the database
        # a shared turn's state as it began, and what puts back what its handling did elsewhere
        # (the backlog, the pending store), newest last: for a turn decided again (_decide_again)
        self.saved: _Saved | None = None
        self.undo: list[Callable[[], object]] | None = None
        self.again = False  # its write was handed back (TasksChanged): decide it again


@attrs.frozen
class _Saved:
    """The counter actor's own state a shared turn's handling may change, as it began."""

    #: the turn's tasks' cached states and what they held (TaskState.saved), None if not cached
    states: dict[str, tuple[TaskState, tuple[Any, ...]] | None]
    triggered: int
    pruned: int
    ended: dict[ExecutionStatus, int]
    #: parked repeats handed on by the turn's begin (a task another node deleted), not yet handled
    unparked: tuple[m.Trigger, ...]


class CounterActor(EngineActor):

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
        self._board = board
        self._refs = refs
        self._jobs = jobs
        self._max_cached = max_cached
        self._backlog = backlog
        self._keep_last = keep_last
        self._cache: collections.OrderedDict[str, TaskState] = collections.OrderedDict()
        self._turn = _Turn()
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

    # -- the turn: take what waits, write once, answer ------------------------------------

    def on_receive(self, message: Any) -> Any:
        if type(message) not in self._handlers:
            return super().on_receive(message)
        self._turn_no += 1
        self._turn = turn = _Turn()
        # a Prune has a turn of its own, so it reads a disk that holds all this actor has done
        alone = type(message) is m.Prune
        batch = [message]
        while not alone and self._leftover is None and len(batch) < MAX_CHANGES_PER_TURN:
            more = self._take()
            if more is None:
                break
            batch.append(more)
        while True:
            try:
                self._begin(batch)  # inside: whatever happens, the turn's write ends what begin began
                for msg in batch:
                    self._handle(msg)
                # a turn whose tasks the writer did not lock (one writer: LevelDB) also takes what
                # arrives while it is handled, as long as it is not written: a bigger group commit
                taken = len(batch)
                while not alone and not turn.shared and self._leftover is None and taken < MAX_CHANGES_PER_TURN:
                    more = self._take()
                    if more is None:
                        break
                    self._handle(more)
                    taken += 1
            finally:
                written = self._commit(turn)
            if not turn.again:
                break
            self._decide_again(turn)
            self._turn = turn = _Turn()
        if written:
            self._forget_written(turn)
        self._evict()
        leftover, self._leftover = self._leftover, None
        if leftover is not None:
            self._handle_envelope(leftover)
        return None

    def _take(self) -> Any:
        """The next message waiting in the inbox for this turn, or None: none waits, or the next
        is a stop, an ask or a Prune, kept in ``_leftover`` for after this turn's write (pykka's order)."""
        inbox = cast("queue.SimpleQueue[Any]", self.actor_inbox)
        try:
            envelope = inbox.get_nowait()
        except queue.Empty:
            return None
        kind = type(envelope.message)
        if envelope.reply_to is None and kind in self._handlers and kind is not m.Prune:
            return envelope.message
        self._leftover = envelope
        return None

    def _begin(self, batch: list[Any]) -> None:
        """Have the writer lock the turn's tasks (PostgreSQL) and refresh their cached states from
        the rows it read; LevelDB's writer does nothing. A writer that fails here fails the turn:
        every message is then refused."""
        if self._committer.failure is not None:
            self._fail_parked(self._refusal)  # writes stopped between turns (a lost lease)
            return
        ids: list[str] = []

        def task_ids() -> Collection[str]:
            for msg in batch:
                of = _task_of.get(type(msg))
                if of is not None:
                    ids.extend(of(msg))
            return ids

        try:
            rows = self._committer.begin(task_ids)
        except _StorageError:
            self._stop_everything()
            return
        if rows is not None:
            turn = self._turn
            turn.shared = True
            self._refresh(ids, rows)
            turn.saved = self._save(ids)
            turn.undo = []

    def _save(self, ids: list[str]) -> _Saved:
        """The turn's tasks' states as they stand (handling changes them in place)."""
        states: dict[str, tuple[TaskState, tuple[Any, ...]] | None] = {}
        for task_id in ids:
            st = self._cache.get(task_id)
            states[task_id] = None if st is None else (st, st.saved())
        return _Saved(states, self.triggered, self.pruned, dict(self._ended), tuple(self._unparked))

    def _decide_again(self, turn: _Turn) -> None:
        """Put back what the turn's handling changed (its write changed nothing), so it can be
        handled again from the state it began with."""
        assert turn.saved is not None and turn.undo is not None
        for action in reversed(turn.undo):
            action()
        for task_id, saved in turn.saved.states.items():
            if saved is None:
                self._cache.pop(task_id, None)
            else:
                st, fields = saved
                st.put_back(fields)
                self._cache[task_id] = st
        self.triggered, self.pruned = turn.saved.triggered, turn.saved.pruned
        self._ended = dict(turn.saved.ended)
        self._unparked = list(turn.saved.unparked)
        log.info("a turn of %d change(s) is decided again: its tasks changed while its write's connection "
                 "was lost", len(turn.changes))

    def _undo(self, action: Callable[[], object]) -> None:
        """``action`` puts back a change this handling made outside the actor's own state, should
        the turn be decided again (a shared turn only)."""
        undo = self._turn.undo
        if undo is not None:
            undo.append(action)

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

    def _handle_envelope(self, envelope: Any) -> None:
        try:
            response = self._handle_receive(envelope.message)
        except Exception:
            if envelope.reply_to is None:
                raise
            envelope.reply_to.set_exception()
        else:
            if envelope.reply_to is not None:
                envelope.reply_to.set(response)

    def _handle(self, message: Any) -> None:
        reply = getattr(message, "reply", None)
        if self._committer.failure is not None and type(message) is not m.CounterStats:
            # writes have stopped engine-wide after a failed one: refuse, cheaply and quietly
            refused = self._committer.refusal()
            assert refused is not None
            m.fail(reply, translate(refused))
            return
        try:
            self._handlers[type(message)](message)
        except Exception as e:
            # a rejection changed nothing, but it was judged on this turn's state: answer it
            # after the turn's write, like everything else (a failed write fails it instead)
            if isinstance(e, _StorageError):
                e = translate(e)
            elif not isinstance(e, EngineError):
                log.exception("counter actor failed on %r", message)
            blocking_id = message.execution_id if isinstance(message, m.Trigger) and message.blocking else None
            self._after_write(reply, _rejection(e, self._board, blocking_id))
        if self._unparked:  # once the message that took their execution out of the queue is done
            ready, self._unparked = self._unparked, []
            for trigger in ready:
                self._handle(trigger)

    def _commit(self, turn: _Turn) -> bool:
        """Write the turn and answer it; False if the write failed (every reply has the failure)."""
        # each task's counter once, after its records (and after a deletion of the task this turn)
        counted = [st for st in turn.counted.values() if not st.deleted]
        turn.changes += [self._changes.counter(st.task.id, st.counter, st.stored) for st in counted]
        if turn.changes or turn.shared:  # a shared turn's write (even of nothing) ends its transaction
            try:
                missed = self._committer.write(turn.changes)
                if missed:
                    self._missed(turn, missed)
            except TasksChanged:
                turn.again = True  # nothing of it was written, nobody is answered yet
                return False
            except _StorageError as e:
                # the in-memory counters are now ahead of the disk; the committer writes nothing
                # more, and every caller of this turn and every waiter is told so
                for reply, _ in turn.answers:
                    m.fail(reply, _fresh(e))
                self._stop_everything()
                return False
        for st in counted:
            st.stored = st.counter
        if turn.events is not None:  # durable now; before anyone hears of it
            self._hooks.run(turn.events)
        refs = self._refs
        if turn.pending:  # before any answer, so a cancel can always claim what it was told of
            tell_if_alive(refs.pending, m.AddPending(turn.pending))
        if turn.removed:
            tell_if_alive(refs.pending, m.RemovePending(turn.removed))
        if turn.submits:
            self._submit(turn.submits)
        for reply, outcome in turn.answers:
            try:
                value = outcome()
            except Exception as e:
                if not isinstance(e, EngineError | _StorageError):
                    log.exception("counter actor failed after a write")
                m.fail(reply, translate(e) if isinstance(e, _StorageError) else e)
            else:
                m.answer(reply, value)
        return True

    def _submit(self, items: list[m.WorkItem]) -> None:
        """Ready work goes straight to the pool's queue, waking idle executors from this thread;
        work whose job is not registered goes to the pool, which parks it."""
        work = self._refs.work
        jobs = self._jobs
        unknown = [item for item in items if item.job not in jobs] if work is not None else items
        if unknown:
            tell_if_alive(self._refs.pool, m.Submit(unknown))
        if work is not None:
            wake(work, items if not unknown else [item for item in items if item.job in jobs])

    def _missed(self, turn: _Turn, missed: Collection[int]) -> None:
        """Changes that applied to nothing (another node claimed the execution first, or it is
        gone): their messages are answered by their miss outcomes, and no hook hears of them."""
        ids = set()
        for position in missed:
            at, execution_id, on_miss = turn.soft[position]
            turn.answers[at] = (turn.answers[at][0], on_miss)
            ids.add(execution_id)
        if turn.events is not None:
            turn.events = [(kind, ex) for kind, ex in turn.events if ex.id not in ids]

    def _stop_everything(self) -> None:
        """After a failed write: answer every waiter of the engine and stop the pool's queue."""
        writes_stopped(self._db.path, self._committer, self._board, self._refs)
        self._fail_parked(self._refusal)

    def _refusal(self) -> BaseException:
        return translate(cast(WriteFailed, self._committer.refusal()))

    def _fail_parked(self, error: Callable[[], BaseException]) -> None:
        """Parked repeats whose execution will now never leave the queue (writes stopped, or
        the engine stops): each is answered with a fresh ``error()``."""
        if not self._unparked and not any(st.parked for st in self._cache.values()):
            return
        parked = [t for st in self._cache.values() for ts in st.parked.values() for t in ts]
        parked += self._unparked
        self._unparked = []
        for st in self._cache.values():
            st.parked.clear()
        for trigger in parked:
            m.fail(trigger.reply, error())

    def _forget_written(self, turn: _Turn) -> None:
        """What memory held only until this turn's write: its idempotency keys, its tombstones."""
        for st, key in turn.keys:
            hit = st.idem.get(key)
            if hit is not None and hit[1] == self._turn_no:
                del st.idem[key]
        for task_id in turn.deleted:
            held = self._cache.get(task_id)
            if held is not None and held.deleted:  # not if re-created in the same turn
                del self._cache[task_id]

    def _write(self, ops: Change, reply: Reply[Any] | None = None, outcome: Outcome = lambda: None) -> None:
        self._turn.changes.append(ops)
        self._after_write(reply, outcome)

    def _write_soft(self, ops: Change, execution_id: str, reply: Reply[Any] | None, outcome: Outcome,
                    on_miss: Outcome) -> None:
        """``_write`` of a change that may miss (``Changes.update``): ``on_miss`` answers then.
        A writer whose changes all apply (``may_miss`` False: LevelDB's, the database's one writer)
        needs no note of them (two per execution)."""
        turn = self._turn
        if self._may_miss:
            turn.soft[len(turn.changes)] = (len(turn.answers), execution_id, on_miss)
        turn.changes.append(ops)
        turn.answers.append((reply, outcome))

    def _after_write(self, reply: Reply[Any] | None, outcome: Outcome) -> None:
        """Answer ``reply`` with ``outcome()`` once this turn's write is durable (or fail it with
        the write's error): no message is answered before the write that holds its change."""
        self._turn.answers.append((reply, outcome))

    def on_stop(self) -> None:
        self._refs.on_stop()
        self._fail_parked(EngineClosed)
        # our messages that raced with close: answer them rather than leave callers hanging;
        # anything else goes back for pykka's own teardown to answer
        inbox = cast("queue.SimpleQueue[Any]", self.actor_inbox)
        others = []
        while not inbox.empty():
            envelope = inbox.get_nowait()
            if envelope.reply_to is None and type(envelope.message) in self._handlers:
                m.fail(getattr(envelope.message, "reply", None), EngineClosed())
            else:
                others.append(envelope)
        for envelope in others:
            inbox.put(envelope)

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
        ops = self._changes.assign(ex, with_counter=False)  # before any state changes
        self._reserve(ex.id)
        self.triggered += 1
        self._advance(st)
        self._turn.pending.append((ex.task_id, ex.id, index))
        self._turn.submits.append(m.WorkItem(ex, st.task.job, st.task.incarnation))
        self._write(ops, msg.reply, lambda: ex)
        if self._hooks.active:
            self._note(hooks.TRIGGER, ex)
        if key is not None:
            self._remember_key(st, key, ex.id)

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


def writes_stopped(path: str, committer: Writer, board: CompletionBoard, refs: ActorRefs) -> None:
    """After the writer failed (a failed write, or a node that lost its lease): answer every
    waiter of the engine and stop the pool's queue."""
    failure = committer.failure

    def waiter_error() -> Exception:
        return translate(WriteFailed(
            f"the engine stopped writing after a failed write to the database at {path} ({failure}); "
            "this execution's outcome is not known here: reopen the engine and read it (an "
            "acknowledged execution that had not started runs after reopening)",
            outcome_unknown=True,
        ))

    board.close(waiter_error)
    tell_if_alive(refs.pool, m.StorageFailed())


#: the tasks a counter actor's message is about (CounterStats and RemoteOutcomes: none to lock)
_task_of: dict[type, Callable[[Any], tuple[str, ...]]] = {
    m.Trigger: lambda msg: (msg.task_id,),
    # with the executor's previous run, finished, of another task perhaps
    m.Start: lambda msg: (msg.item.execution.task_id,) + (
        () if msg.finished is None else (msg.finished.execution.task_id,)),
    m.Finish: lambda msg: (msg.execution.task_id,),
    m.Abandon: lambda msg: (msg.item.execution.task_id,),
    m.Cancel: lambda msg: (msg.task_id,),
    m.CreateTask: lambda msg: (msg.task.id,),
    m.DeleteTask: lambda msg: (msg.task_id,),
    m.GetTask: lambda msg: (msg.task_id,),
    m.Lookup: lambda msg: (msg.task_id,),
    m.Interrupted: lambda msg: (msg.execution.task_id,),
    m.Prune: lambda msg: (msg.task_id,),
}


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


def _fresh(error: _StorageError) -> Exception:
    """One caller's own copy of a write's failure (a shared instance would carry every
    caller's traceback)."""
    return translate(WriteFailed(str(error), outcome_unknown=getattr(error, "outcome_unknown", True)))


def _rejection(error: Exception, board: CompletionBoard, watched: str | None) -> Callable[[], Any]:
    def reject() -> Any:
        if watched is not None:  # the blocking caller's watcher is registered before it sends
            board.fail(watched, error)
        raise error

    return reject


def _finished(ex: Execution, status: ExecutionStatus, *, error: str | None = None, result: Any = None) -> Execution:
    return records.finished(ex, status, time.time(), result=result, error=error)
