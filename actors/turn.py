"""A counter actor's turns: take what waits, write once, answer.

pykka hands an actor one message at a time, so a counter actor takes every message already
waiting in its inbox, handles them all, writes all their changes in one synced write (a LevelDB
batch, a PostgreSQL transaction), and only then answers: group commit. An index is never
acknowledged before the write that holds it.

With several nodes on one PostgreSQL database, a turn first has the writer lock the tasks its
messages touch (``Writer.begin``), so nodes are serialised per task by the database's locks,
and refreshes its cached states from the rows it locked before it decides anything: another
node may have handed out indexes, pruned, or deleted the task. A change that misses (a claim
another node won) is answered as such after the write. On LevelDB ``begin`` does nothing.

A turn that only hands out indexes (keyless, non-blocking triggers of tasks cached here) is
*stamped* instead (``Writer.begin_stamped``): nothing is locked or read before it is handled, and
its one write moves each task's counter from the value the row holds then, so another node's turn
waits for the task only while that write commits. Its indexes are decided assuming the cached
counters; the write returns how far each counter had moved past that (its *shift*), and every
index the turn handed out moves by as much before anyone is answered (``Turn.restamp``). A task
another node deleted, made again or limited meanwhile fails the write, and the turn is decided
again as below, locked first.

A shared turn whose write did not commit because its connection was lost, and whose tasks
another node wrote before the writer got them locked again (``TasksChanged``: common after a
server restart, when every node reconnects and the first one back writes), is decided again:
what its handling changed here is put back as it was when the turn began, and the same messages
are handled against the rows as they now stand. Nobody was answered, so nobody sees the first
decision (an index it chose was never acknowledged, and is chosen again from the new counter).

:class:`TurnActor` is that machinery; :class:`~taskengine.actors.counter.CounterActor` adds the
message handlers and sets the state both work on.
"""

from __future__ import annotations

import abc
import collections
import logging
import queue
import time
from collections.abc import Callable, Collection
from typing import Any, cast

import attrs

from taskengine.storage import Execution, ExecutionStatus
from taskengine.storage.errors import StorageError as _StorageError
from taskengine.storage.errors import TasksChanged, WriteFailed
from taskengine.storage.interface import Change, Changes, Store, StoredTask, Writer

from . import messages as m
from .board import CompletionBoard
from .errors import EngineClosed, EngineError, translate
from .hooks import HookSet
from .jobs import JobRegistry
from .mailbox import EngineActor, Reply
from .refs import ActorRefs, tell_if_alive
from .taskstate import TaskState
from .workqueue import give_back, wake

log = logging.getLogger(__name__)

MAX_CHANGES_PER_TURN = 1024  # one turn, one write: bounds its size and its wait (in messages)
#: how long a stamped turn may wait for more messages after one that found its task moved by
#: another node (``_gather``): the bound on what that adds to a trigger's latency
GATHER_SECONDS = 0.001

#: run after the turn's write: its value answers the message (its exception fails it)
Outcome = Callable[[], Any]


class Turn:
    """What one turn of the actor will write, and what it does once the write is durable."""

    __slots__ = ("changes", "answers", "pending", "removed", "submits", "direct", "deleted", "keys",
                 "counted", "events", "soft", "locked", "saved", "undo", "again", "stamped", "shifts",
                 "moved")

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.answers: list[tuple[Reply[Any] | None, Outcome]] = []  # in the order the messages came
        self.pending: list[tuple[str, str, int]] = []
        self.removed: list[tuple[str, str]] = []  # pending entries whose execution finished
        self.submits: list[m.WorkItem] = []
        # started by their trigger, on an executor reserved for them (CounterActor._start_now)
        self.direct: list[tuple[TaskState, Any, m.WorkItem, int, Execution]] = []
        self.deleted: list[str] = []  # tombstones to drop once their deletion is written
        self.keys: list[tuple[TaskState, str]] = []  # idempotency keys to forget once written
        self.counted: dict[int, TaskState] = {}  # tasks that handed out indexes: one counter put each
        self.events: list[tuple[str, Execution]] | None = None  # for the hooks, only when there are some
        # changes that may miss (Changes.update): position -> (its answer's position, execution id,
        # the outcome that answers instead if it missed)
        self.soft: dict[int, tuple[int, str, Outcome]] = {}
        self.locked: frozenset[str] | None = None  # the tasks the writer locked (a shared turn's)
        # a shared turn's state as it began, and what puts back what its handling did elsewhere
        # (the backlog, the pending store), newest last: for a turn decided again (_decide_again)
        self.saved: Saved | None = None
        self.undo: list[Callable[[], object]] | None = None
        self.again = False  # its write was handed back (TasksChanged): decide it again
        # it only hands out indexes, which its write decides (Writer.begin_stamped): its tasks'
        # counters were assumed, not read, and each task's indexes move by its shift once written
        self.stamped = False
        self.shifts: dict[str, int] = {}
        # placed(): id() of a record moved -> (that record, held so its id() is not reused, its move)
        self.moved: dict[int, tuple[Execution, Execution]] = {}

    @property
    def shared(self) -> bool:
        """The writer locked this turn's tasks: other nodes share the database."""
        return self.locked is not None

    def placed(self, ex: Execution) -> Execution:
        """``ex`` at the index this turn's write gave it (a stamped turn's: moved by its task's shift).
        One record per record moved: its answer and its work item share it."""
        shift = self.shifts.get(ex.task_id, 0) if self.shifts else 0
        if not shift or ex.index is None:
            return ex
        pair = self.moved.get(id(ex))
        if pair is None:
            pair = self.moved[id(ex)] = (ex, attrs.evolve(ex, index=ex.index + shift))
        return pair[1]

    def restamp(self, shifts: dict[str, int]) -> None:
        """A stamped turn written: its tasks' counters, and the executions it made wherever they
        wait to be told of (its answers read ``placed``), moved by their tasks' shifts."""
        self.shifts = shifts
        placed = self.placed
        for st in self.counted.values():
            st.counter += shifts.get(st.task.id, 0)
        self.pending = [(task_id, ex_id, index + shifts.get(task_id, 0)) for task_id, ex_id, index in self.pending]
        self.submits = [m.WorkItem(placed(w.execution), w.job, w.incarnation) for w in self.submits]
        direct = []
        for st, ref, item, token, running in self.direct:
            running = placed(running)
            st.running[running.id] = (token, running)
            direct.append((st, ref, m.WorkItem(placed(item.execution), item.job, item.incarnation), token, running))
        self.direct = direct
        if self.events is not None:
            self.events = [(kind, placed(ex)) for kind, ex in self.events]


@attrs.frozen
class Saved:
    """The counter actor's own state a shared turn's handling may change, as it began."""

    #: the turn's tasks' cached states and what they held (TaskState.saved), None if not cached
    states: dict[str, tuple[TaskState, tuple[Any, ...]] | None]
    triggered: int
    pruned: int
    ended: dict[ExecutionStatus, int]
    #: parked repeats handed on by the turn's begin (a task another node deleted), not yet handled
    unparked: tuple[m.Trigger, ...]


class TurnActor(EngineActor):
    """A counter actor's turns (on_receive) and what a handler writes and answers through them
    (``_write``, ``_write_soft``, ``_after_write``, ``_undo``). The subclass's ``__init__`` sets
    the state declared here; its handlers are ``_handlers``."""

    _hooks: HookSet
    _db: Store
    _changes: Changes
    _committer: Writer
    _may_miss: bool
    #: the database is shared with other nodes (PostgreSQL): a turn may be stamped (_begin)
    _shares: bool
    #: how many messages the next turn waits for (_gather_more), 0 if none
    _gather: int
    _board: CompletionBoard
    _refs: ActorRefs
    _jobs: JobRegistry
    _cache: collections.OrderedDict[str, TaskState]
    _turn: Turn
    _turn_no: int
    _leftover: Any
    _unparked: list[m.Trigger]
    triggered: int
    pruned: int
    _ended: dict[ExecutionStatus, int]
    _handlers: dict[type, Callable[[Any], None]]

    # what the subclass must define: abstract, so an actor without them cannot start (pykka's
    # actors are ABCs) and mypy holds the subclass's to these signatures

    @abc.abstractmethod
    def _refresh(self, ids: list[str], rows: list[StoredTask]) -> None:
        """Cached states as the rows a shared turn locked say."""

    @abc.abstractmethod
    def _evict(self) -> None:
        """Forget idle tasks between turns."""

    @abc.abstractmethod
    def _stampable(self, message: Any) -> TaskState | None:
        """The task of ``message`` if a stamped turn can take it (it only hands out an index of a
        task cached here), else None."""

    # -- the turn: take what waits, write once, answer ------------------------------------

    def on_receive(self, message: Any) -> Any:
        if type(message) not in self._handlers:
            if type(message) is m.StorageFailed:  # writes stopped engine-wide, perhaps not by us
                self._fail_parked(self._refusal)
                return None
            return super().on_receive(message)
        while message is not None:
            self._turn_of(message)
            leftover, self._leftover = self._leftover, None
            message = None
            if leftover is None:
                pass
            elif leftover.reply_to is None and type(leftover.message) in self._handlers:
                message = leftover.message  # a message about a task this turn did not lock: the next turn's
            else:
                self._handle_envelope(leftover)
        return None

    def _turn_of(self, message: Any) -> None:
        """One turn: ``message`` and what waits behind it, handled, written once, answered."""
        self._turn_no += 1
        self._turn = turn = Turn()
        # a Prune has a turn of its own, so it reads a disk that holds all this actor has done
        alone = type(message) is m.Prune
        batch = [message]
        while not alone and self._leftover is None and len(batch) < MAX_CHANGES_PER_TURN:
            more = self._take()
            if more is None:
                break
            batch.append(more)
        stamp = self._shares  # a turn decided again is never stamped: its tasks changed under it
        if stamp and self._gather and not alone:
            self._gather_more(batch)
        while True:
            try:
                self._begin(batch, stamp)  # inside: whatever happens, the turn's write ends what begin began
                for msg in batch:
                    self._handle(msg)
                # a turn also takes what arrives while it is handled, as long as it is not written:
                # a bigger group commit. A turn whose tasks the writer locked (several nodes) takes
                # only messages about those tasks, and hands them to a turn decided again: it
                # waited for the locks while other nodes' turns held them, and what its callers
                # sent meanwhile joins it rather than waiting for another turn's locks
                taken = len(batch)
                while not alone and self._leftover is None and taken < MAX_CHANGES_PER_TURN:
                    more = self._take(turn.locked, turn.stamped)
                    if more is None:
                        break
                    if turn.shared:
                        batch.append(more)
                    self._handle(more)
                    taken += 1
            finally:
                written = self._commit(turn)
            if not turn.again:
                break
            self._decide_again(turn)
            stamp = False
            self._turn = turn = Turn()
        if written:
            self._forget_written(turn)
        self._evict()

    def _gather_more(self, batch: list[Any]) -> None:
        """After a stamped turn that found its tasks moved by another node: wait, up to
        GATHER_SECONDS, until as many messages as it answered are in ``batch``.

        Why: a stamped turn cannot take what arrives while its write waits for the task's lock (a
        turn that locks first does), so on a task other nodes trigger too, a node's callers split
        into two halves that take turns, each turn with half of them, and each turn costs the node
        and the server about as much whatever it carries. The callers that turn answered send
        their next triggers within moments; waiting for them makes one turn of the two (group
        commit's delay, as PostgreSQL's ``commit_delay``). A node alone never waits: nobody else
        moves its counters."""
        wanted, self._gather = min(self._gather, MAX_CHANGES_PER_TURN), 0
        deadline = time.monotonic() + GATHER_SECONDS
        while len(batch) < wanted and self._leftover is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            more = self._take(timeout=left)
            if more is None:
                return
            batch.append(more)

    def _take(self, locked: frozenset[str] | None = None, stamped: bool = False, timeout: float = 0.0) -> Any:
        """The next message waiting in the inbox for this turn (``timeout``: the one that arrives
        within that many seconds), or None: none waits, or the next is a stop, an ask, a Prune,
        (``locked``: the tasks a shared turn holds) about another task, or (``stamped``) one a
        stamped turn cannot take, kept in ``_leftover`` for after this turn's write (pykka's order)."""
        inbox = cast("queue.SimpleQueue[Any]", self.actor_inbox)
        try:
            envelope = inbox.get(timeout=timeout) if timeout > 0 else inbox.get_nowait()
        except queue.Empty:
            return None
        message = envelope.message
        kind = type(message)
        if envelope.reply_to is None and kind in self._handlers and kind is not m.Prune and (
                locked is None or locked.issuperset(_task_of.get(kind, _none)(message))) and (
                not stamped or self._stampable(message) is not None):
            return message
        self._leftover = envelope
        return None

    def _begin(self, batch: list[Any], stamp: bool) -> None:
        """Have the writer lock the turn's tasks (PostgreSQL) and refresh their cached states from
        the rows it read; LevelDB's writer does nothing. With ``stamp``, a turn whose messages only
        hand out indexes of cached tasks is begun stamped instead (``Writer.begin_stamped``):
        nothing is locked or read before its write. A writer that fails here fails the turn:
        every message is then refused."""
        if self._committer.failure is not None:
            self._fail_parked(self._refusal)  # writes stopped between turns (a lost lease)
            return
        tasks = self._stamped_tasks(batch) if stamp else None
        if tasks is not None:
            try:
                stamped = self._committer.begin_stamped(tasks)
            except _StorageError:
                self._stop_everything()
                return
            if stamped:
                turn = self._turn
                turn.locked = frozenset(tasks)
                turn.stamped = True
                turn.saved = self._save(list(tasks))
                turn.undo = []
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
            turn.locked = frozenset(ids)
            self._refresh(ids, rows)
            turn.saved = self._save(ids)
            turn.undo = []

    def _stamped_tasks(self, batch: list[Any]) -> dict[str, str | None] | None:
        """The tasks of ``batch`` and their incarnations, if a stamped turn can take every message."""
        tasks: dict[str, str | None] = {}
        for msg in batch:
            st = self._stampable(msg)
            if st is None:
                return None
            tasks[st.task.id] = st.task.incarnation
        return tasks

    def _save(self, ids: list[str]) -> Saved:
        """The turn's tasks' states as they stand (handling changes them in place)."""
        states: dict[str, tuple[TaskState, tuple[Any, ...]] | None] = {}
        for task_id in ids:
            st = self._cache.get(task_id)
            states[task_id] = None if st is None else (st, st.saved())
        return Saved(states, self.triggered, self.pruned, dict(self._ended), tuple(self._unparked))

    def _decide_again(self, turn: Turn) -> None:
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
        log.info("a turn of %d change(s) is decided again: its tasks changed before its write committed",
                 len(turn.changes))

    def _undo(self, action: Callable[[], object]) -> None:
        """``action`` puts back a change this handling made outside the actor's own state, should
        the turn be decided again (a shared turn only)."""
        undo = self._turn.undo
        if undo is not None:
            undo.append(action)

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

    def _commit(self, turn: Turn) -> bool:
        """Write the turn and answer it; False if the write failed (every reply has the failure)."""
        # each task's counter once, after its records (and after a deletion of the task this turn)
        counted = [st for st in turn.counted.values() if not st.deleted]
        turn.changes += [self._changes.counter(st.task.id, st.counter, st.stored) for st in counted]
        if turn.changes or turn.shared:  # a shared turn's write (even of nothing) ends its transaction
            try:
                if turn.stamped:
                    shifts = self._committer.write_stamped(turn.changes)
                    if any(shifts.values()):  # another node moved a counter: gather the next turn
                        turn.restamp(shifts)
                        self._gather = len(turn.answers)
                else:
                    missed = self._committer.write(turn.changes)
                    if missed:
                        self._missed(turn, missed)
            except TasksChanged:
                turn.again = True  # nothing of it was written, nobody is answered yet
                return False  # (its undo list gives its reserved executors back)
            except _StorageError as e:
                # the in-memory counters are now ahead of the disk; the committer writes nothing
                # more, and every caller of this turn and every waiter is told so
                self._unreserve(turn.direct)
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
        if turn.direct:
            self._run_started(turn.direct)
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

    def _run_started(self, direct: list[tuple[TaskState, Any, m.WorkItem, int, Execution]]) -> None:
        """Executions started by their trigger's write, now durable: the pending store lists them
        as claimed (before their runs, whose finishes remove the entries), then each reserved
        executor is told to run its one. One whose task was deleted later in the turn gets no
        entry (no run would remove it) and gives its executor back; an executor that died
        meanwhile is the pool's to replace, and its Abandon fails the execution."""
        live = [d for d in direct if not d[0].deleted]
        if live:
            claimed = [(r.task_id, r.id, cast(int, r.index)) for _, _, _, _, r in live]
            tell_if_alive(self._refs.pending, m.AddPending(claimed, claimed=True))
        for st, ref, item, token, running in live:
            tell_if_alive(ref, m.Run(item, token, (running, st.task)))
        if len(live) < len(direct):
            self._unreserve([d for d in direct if d[0].deleted])

    def _unreserve(self, direct: list[tuple[TaskState, Any, m.WorkItem, int, Execution]]) -> None:
        work = self._refs.work
        if work is not None:
            for _, ref, _, token, _ in direct:
                give_back(work, self._refs.pool, ref, token)

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

    def _missed(self, turn: Turn, missed: Collection[int]) -> None:
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

    def _forget_written(self, turn: Turn) -> None:
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



def writes_stopped(path: str, committer: Writer, board: CompletionBoard, refs: ActorRefs) -> None:
    """After the writer failed (a failed write, or a node that lost its lease): answer every
    waiter of the engine, stop the pool's queue, and have every counter actor answer its parked
    repeats (their executions will never leave the queue, and their actor may get no other
    message to notice it by)."""
    failure = committer.failure

    def waiter_error() -> Exception:
        return translate(WriteFailed(
            f"the engine stopped writing after a failed write to the database at {path} ({failure}); "
            "this execution's outcome is not known here: reopen the engine and read it (an "
            "acknowledged execution that had not started runs after reopening)",
            outcome_unknown=True,
        ))

    board.close(waiter_error)
    for ref in (refs.pool, *refs.counters):
        tell_if_alive(ref, m.StorageFailed())


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


def _none(msg: Any) -> tuple[str, ...]:
    return ()


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
