"""Every kind of message a counter actor's turn carries, in a turn decided again (PostgreSQL).

A turn whose write did not commit (its connection lost) while another node wrote its tasks is
handled again from the state it began with (turn.py's ``_decide_again``). That is safe only
if handling a message changes nothing outside what the turn puts back: an answer sent early, a
message told, a waiter woken, a pending-store entry claimed or a backlog place taken without an
undo would leave the turn decided again on a half-restored state.

Each scenario below makes node A's counter actor take one turn holding chosen messages (its
actor is held in the turn before, while the test queues them), has that turn's write cut (its
server process terminated, as a server restart does, just before the query that holds its
statements and its COMMIT is sent: the writer cannot know whether it committed) and another node
(``OtherNode``, SQL on a connection of its own) write the same task before A reconnects; A then
decides the turn again. The test checks, inside A's counter actor:

- the state the turn is decided again from equals the state its first decision began with: the
  task states, the counters and statistics, the abandoned tokens, the backlog, the pending store,
  the completion board; and nothing was told, answered, published, submitted or logged on the
  way (all of that waits for the write);

and then that the run ends as the same scenario ends when the other node's write comes before
A's turn, which is never cut (every caller's answer, the rows, A's statistics).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
import pytest

from engine_helpers import WAIT, Gate, poll_until, read_postgres
from pg import PgServer
from pg_other import OtherNode
from taskengine import Execution, Task, errors
from taskengine.actors import counter as counter_module
from taskengine.actors import messages as m
from taskengine.actors import turn as turn_module

pytestmark = pytest.mark.timeout(240)


class _Watch:
    """A's counter actor and writer, instrumented (instance and module attributes only: the code
    that runs is the engine's own)."""

    def __init__(self, engine: Any, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine
        self.url = url
        self.actor = engine._refs.counters[0]._actor_weakref()
        self.pending = engine._refs.pending
        self.writer = engine._committer
        self.thread: int | None = None  # the counter actor's thread
        self.effects: list[str] = []  # what the counter actor's thread did that leaves it
        self.pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (as a turn began, as it is decided again)
        self._began: dict[str, Any] | None = None
        self.hold: threading.Event | None = None
        self.held = threading.Event()
        self.cut: Callable[[], None] | None = None
        self.cuts = 0
        self.foreign: set[str] = set()  # the ids of the executions the other node made
        # its turns lock their tasks first, even those a stamped turn could take (test_pg_stamped):
        # what is instrumented here is a turn begun by ``begin`` and decided again
        self.actor._shares = False
        self._wrap_writer()
        self._wrap_actor()
        self._wrap_effects(monkeypatch)

    # -- holding the actor, cutting a write ---------------------------------------------------

    def _wrap_writer(self) -> None:
        writer, begin, statements = self.writer, self.writer.begin, self.writer._statements

        def held_begin(task_ids: Any) -> Any:
            self.thread = threading.get_ident()
            hold, self.hold = self.hold, None
            if hold is not None:
                self.held.set()
                assert hold.wait(WAIT)
            return begin(task_ids)

        def cut_statements(conn: Any, changes: Any, **kwargs: Any) -> Any:
            meanwhile, self.cut = self.cut, None
            if meanwhile is not None:  # its statements and COMMIT are lost: the server process ends first
                backend = conn.info.backend_pid
                with psycopg.connect(self.url, autocommit=True) as side:
                    side.execute("SELECT pg_terminate_backend(%s)", (backend,))
                    poll_until("the cut connection's server process exits", lambda: not side.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone()[0])
                meanwhile()
                self.cuts += 1
            return statements(conn, changes, **kwargs)  # on the lost connection: the writer settles it

        writer.begin = held_begin
        writer._statements = cut_statements

    # -- what the turn began with, and what it is decided again from ---------------------------

    def _wrap_actor(self) -> None:
        actor, save, decide_again = self.actor, self.actor._save, self.actor._decide_again

        def watched_save(ids: Any) -> Any:
            saved = save(ids)
            self._began = self.snapshot()
            return saved

        def watched_decide_again(turn: Any) -> None:
            decide_again(turn)
            assert self._began is not None
            self.pairs.append((self._began, self.snapshot()))

        actor._save = watched_save
        actor._decide_again = watched_decide_again

    def _wrap_effects(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Count what the counter actor's thread sends out: tells, wakes, answers, the board's
        publications, hooks, log lines of the counter and turn modules."""

        def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if threading.get_ident() == self.thread:
                    self.effects.append(name)
                return fn(*args, **kwargs)
            return call

        for module in (counter_module, turn_module):
            monkeypatch.setattr(module, "tell_if_alive", counted("tell", module.tell_if_alive))
        monkeypatch.setattr(turn_module, "wake", counted("wake", turn_module.wake))
        monkeypatch.setattr(m, "answer", counted("answer", m.answer))
        monkeypatch.setattr(m, "fail", counted("fail", m.fail))
        board = self.engine._board
        for name in ("publish", "fail", "follow", "unfollow", "seen", "watch"):
            setattr(board, name, counted(f"board.{name}", getattr(board, name)))
        hooks = self.engine._hooks
        hooks.run = counted("hooks", hooks.run)
        watch = self

        class Lines(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if threading.get_ident() == watch.thread and "decided again" not in record.getMessage():
                    watch.effects.append(f"log: {record.getMessage()}")

        handler = Lines(logging.INFO)
        for module in (counter_module, turn_module):
            logger = logging.getLogger(module.__name__)
            monkeypatch.setattr(logger, "level", logging.INFO)
            logger.addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        for module in (counter_module, turn_module):
            logging.getLogger(module.__name__).removeHandler(self._handler)

    def snapshot(self) -> dict[str, Any]:
        """Everything of the engine a turn's handling may change (taken on the actor's thread)."""
        actor = self.actor
        self.pending.ask(m.PendingCount())  # what was told to the pending store is in
        store = self.pending._actor_weakref()
        board = self.engine._board
        backlog = actor._backlog
        return {
            "tasks": {tid: (id(st), st.saved()) for tid, st in actor._cache.items()},
            "figures": (actor.triggered, actor.pruned, dict(actor._ended)),
            "abandoned": set(actor._abandoned),
            "unparked": list(actor._unparked),
            "backlog": None if backlog is None else set(backlog._ids),
            # (not the other node's executions: A's remote.py may add them at any time)
            "pending": {key: claimed for key, claimed in store._claimed.items() if key[1] not in self.foreign},
            "pending by task": {tid: set(ids) - self.foreign for tid, ids in store._by_task.items()},
            # (not its _tasks: remote.py drops those no longer watched, on a thread of its own)
            "board": ({e: len(f) for e, f in board._watchers.items()},
                      {e: list(f) for e, f in board._followers.items()}),
            "effects": list(self.effects),
        }

    # -- one turn -------------------------------------------------------------------------------

    def turn(self, calls: list[tuple[str, Callable[[], Any]]], meanwhile: Callable[[], None], cut: bool,
             after: Callable[[], None] = lambda: None, arrive: int = 0) -> dict[str, Any]:
        """Hold A's counter actor (in a turn of its own), make ``calls`` on threads of their own, one
        after another (each once its message is in the actor's inbox: the turn takes them in that
        order), do ``after()`` and wait for ``arrive`` more messages (from A's executors), then let
        it go: the next turn takes them all. With ``cut`` that turn's write is cut and
        ``meanwhile()`` writes before A reconnects; without, ``meanwhile()`` writes first. Each
        call's answer (or exception), once all returned."""
        hold = self.hold = threading.Event()
        self.held.clear()
        # a task of its own: a turn takes what arrives about the tasks it locked, and the calls'
        # messages must wait for the next turn
        holder = threading.Thread(target=lambda: self.engine.get_task("holder"), daemon=True)
        holder.start()
        assert self.held.wait(WAIT)
        inbox = self.actor.actor_inbox
        waiting = inbox.qsize()
        answers: dict[str, Any] = {}

        def call(name: str, fn: Callable[[], Any]) -> None:
            try:
                answers[name] = fn()
            except Exception as e:  # an answer like another
                answers[name] = e

        threads = []
        for name, fn in calls:
            threads.append(threading.Thread(target=call, args=(name, fn), daemon=True))
            threads[-1].start()
            waiting += 1
            poll_until(f"{name}: its message in A's counter actor's inbox",
                       lambda n=waiting: inbox.qsize() >= n)  # type: ignore[misc]
        after()
        poll_until(f"{arrive} more messages in A's counter actor's inbox", lambda: inbox.qsize() >= waiting + arrive)
        if cut:
            self.cut = meanwhile
        else:
            meanwhile()
        hold.set()
        for t in [holder, *threads]:
            t.join(WAIT)
            assert not t.is_alive()
        # with no calls nothing above waited for the turn let go: a call answered by the same
        # actor comes after it, so what the scenario does next (a wait's watcher on the board)
        # cannot land between that turn's start and its decision again (a refusal is an answer too)
        with contextlib.suppress(errors.EngineError):
            self.engine.get_task("hold")
        return answers


def _outcome(value: Any) -> Any:
    """An answer as it compares between two runs (execution ids are new in each)."""
    if isinstance(value, Execution):
        return ("execution", value.index, value.status, value.data, value.error, value.blocking,
                value.idempotency_key)
    if isinstance(value, Task):
        return ("task", value.id, value.job, value.execution_count, value.prune_mark)
    if isinstance(value, BaseException):
        return ("raised", type(value).__name__)
    return value


def _rows(url: str) -> dict[str, Any]:
    tasks, live, problems = read_postgres(url)
    assert not problems
    return {tid: (t.counter, t.prune_mark, {i: (r.status, r.data, r.error, r.blocking, r.idempotency_key)
                                           for i, r in t.records.items()}) for tid, t in tasks.items()}


@attrs.define
class Run:
    engine: Any
    other: OtherNode
    watch: _Watch
    gate: Gate
    url: str
    held: dict[str, Any] = attrs.Factory(dict)  # the answers of its blocking triggers
    threads: list[threading.Thread] = attrs.Factory(list)  # the threads that wait for them
    gates: list[Gate] = attrs.Factory(list)  # more gates, released at the end


Scenario = Callable[[Run, bool], dict[str, Any]]


def _settle(run: Run) -> dict[str, Any]:
    """Let every job finish, wait until nothing is live, and what the run ended as."""
    for gate in [run.gate, *run.gates]:
        gate.release()
    for thread in run.threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    engine = run.engine

    def quiet() -> bool:
        stats = engine.stats()
        return not read_postgres(run.url)[1] and stats.running == 0 and stats.queued == 0 and stats.pending == 0

    poll_until("every execution finished", quiet)
    stats = engine.stats()
    assert stats.write_failure is None
    figures = {name: getattr(stats, name) for name in ("triggered", "succeeded", "failed", "cancelled", "pruned",
                                                         "pending", "queued_blocking", "backlog")}
    return {"figures": figures, "rows": _rows(run.url)}


def _open(make_engine: Any, url: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Run:
    gate = Gate()
    kwargs.setdefault("workers", 1)  # held by a Gate: nothing else starts, nothing claims meanwhile
    kwargs.setdefault("max_queued", 100)  # places in the backlog are taken and released
    # one counter actor (PostgreSQL's default is two): the one _Watch holds and whose writer it cuts
    kwargs.setdefault("counter_actors", 1)
    engine = make_engine(url, jobs={"g": gate}, node_id="a", poll_interval=0.2, **kwargs)
    engine.create_task("holder", job="g")
    engine.create_task("hold", job="g")
    engine.create_task("t", job="g")
    other, watch = OtherNode(url), _Watch(engine, url, monkeypatch)
    trigger = other.trigger

    def noted(*args: Any, **kwargs: Any) -> Execution:
        ex = trigger(*args, **kwargs)
        watch.foreign.add(ex.id)
        return ex

    other.trigger = noted  # type: ignore[method-assign]
    return Run(engine, other, watch, gate, url)


def _running(run: Run) -> Execution:
    """An execution of t that holds A's one executor (its Gate is shut)."""
    ex = run.engine.trigger("t", {"n": "running"})
    assert run.gate.wait_calls(1)
    return ex


def _blocking(run: Run, name: str, data: Any = None, key: str | None = None) -> threading.Thread:
    """A blocking trigger of t, made on a thread of its own (its answer in ``run.held[name]``)."""

    def call() -> None:
        try:
            run.held[name] = run.engine.trigger("t", data, blocking=True, idempotency_key=key)
        except Exception as e:  # its answer
            run.held[name] = e

    thread = threading.Thread(target=call, daemon=True)  # daemon: a caller never answered fails the test, not the run
    thread.start()
    run.threads.append(thread)
    return thread


def _queued(run: Run, n: int) -> None:
    poll_until(f"{n} blocking execution(s) queued", lambda: run.engine.stats().queued_blocking >= n)


# -- the scenarios: each puts chosen messages in one turn ----------------------------------------


def triggers(run: Run, cut: bool) -> dict[str, Any]:
    """Triggers: new, with a key and its repeat, blocking, over the backlog; with a GetTask, a
    Lookup (a queued blocking one) and a CounterStats in the same turn."""
    _running(run)
    _blocking(run, "queued", {"n": "queued"})
    _queued(run, 1)
    queued_id = next(iter(run.watch.actor._cache["t"].queued))
    e = run.engine
    answers = run.watch.turn([
        ("new", lambda: e.trigger("t", {"n": 1})),
        ("keyed", lambda: e.trigger("t", {"n": 2}, idempotency_key="k")),
        ("repeat", lambda: e.trigger("t", {"n": 2}, idempotency_key="k")),
        ("over the backlog", lambda: e.trigger("t", {"n": 3})),
        ("task", lambda: e.get_task("t")),
        ("stats", lambda: e.stats().triggered),
        ("lookup", lambda: e.get_execution("t", queued_id)),
    ], lambda: run.other.trigger("t"), cut)
    return {"answers": answers}


def starts(run: Run, cut: bool) -> dict[str, Any]:
    """A Start of a non-blocking execution that carries its executor's previous Finish."""
    _running(run)
    later = run.engine.trigger("t", {"n": "later"})
    answers = run.watch.turn([], lambda: run.other.trigger("t"), cut, after=run.gate.release, arrive=1)
    return {"answers": answers, "later": _outcome(run.engine.wait("t", later.id, timeout=WAIT))}


def blocking_starts(run: Run, cut: bool) -> dict[str, Any]:
    """A blocking execution's ticket: its index is handed out in the turn decided again."""
    _running(run)
    _blocking(run, "blocking", {"n": "blocking"}, key="b")
    _queued(run, 1)
    answers = run.watch.turn([], lambda: run.other.trigger("t"), cut, after=run.gate.release, arrive=1)
    return {"answers": answers}


def finishes(run: Run, cut: bool) -> dict[str, Any]:
    """A Finish that the retention policy follows with a Prune (``keep_last``)."""
    _running(run)
    for n in range(16):
        run.engine.trigger("t", {"n": n})
    answers = run.watch.turn([], lambda: run.other.trigger("t"), cut, after=run.gate.release, arrive=1)
    return {"answers": answers}


def cancels(run: Run, cut: bool) -> dict[str, Any]:
    """Cancels of a PENDING execution A holds, of a queued blocking one, of one another node made."""
    _running(run)
    e = run.engine
    pending = e.trigger("t", {"n": "pending"})
    _blocking(run, "queued", {"n": "queued"})
    _queued(run, 1)
    elsewhere = run.other.trigger("t", notify=False)
    queued_id = next(iter(run.watch.actor._cache["t"].queued))
    answers = run.watch.turn([
        ("pending", lambda: e.cancel("t", pending.id)),
        ("queued", lambda: e.cancel("t", queued_id)),
        ("elsewhere", lambda: e.cancel("t", elsewhere.id)),
    ], lambda: run.other.trigger("t"), cut)
    return {"answers": answers}


def delete_and_create(run: Run, cut: bool) -> dict[str, Any]:
    """A deletion of a task with a running, a PENDING and a queued blocking execution, then its
    creation again and a trigger of it, all in one turn."""
    _running(run)
    e = run.engine
    e.trigger("t", {"n": "pending"})
    _blocking(run, "queued", {"n": "queued"})
    _queued(run, 1)
    answers = run.watch.turn([
        ("delete", lambda: e.delete_task("t")),
        ("create", lambda: e.create_task("t", job="g")),
        ("trigger", lambda: e.trigger("t", {"n": "new"})),
    ], lambda: run.other.trigger("t"), cut)
    return {"answers": answers}


def creates(run: Run, cut: bool) -> dict[str, Any]:
    """A creation (get-or-create) and a trigger of a task another node creates meanwhile."""
    e = run.engine
    answers = run.watch.turn([
        ("create", lambda: e.create_task("u", job="g", exist_ok=True)),
    ], lambda: run.other.create_task("u", "g"), cut)
    answers["trigger"] = e.trigger("u", {"n": "u"})
    return {"answers": answers}


def prunes(run: Run, cut: bool) -> dict[str, Any]:
    """A prune (a turn of its own)."""
    run.gate.release()
    for n in range(4):
        ex = run.engine.trigger("t", {"n": n})
        run.engine.wait("t", ex.id, timeout=WAIT)
    busy = Gate()  # holds the executor, so the other node's execution is not claimed during the turn
    run.gates.append(busy)
    run.engine.register_job("busy", busy)
    run.engine.create_task("busy", job="busy")
    run.engine.trigger("busy")
    assert busy.wait_calls(1)
    answers = run.watch.turn([("prune", lambda: run.engine.prune("t", keep_last=1))],
                             lambda: run.other.trigger("t"), cut)
    return {"answers": answers}


def deleted_elsewhere(run: Run, cut: bool) -> dict[str, Any]:
    """Triggers, a cancel and a Start with a Finish, of a task another node deletes meanwhile."""
    _running(run)
    e = run.engine
    pending = e.trigger("t", {"n": "pending"})
    answers = run.watch.turn([
        ("trigger", lambda: e.trigger("t", {"n": 1})),
        ("cancel", lambda: e.cancel("t", pending.id)),
    ], lambda: run.other.delete_task("t"), cut, after=run.gate.release, arrive=1)
    return {"answers": answers}


def abandons(run: Run, cut: bool) -> dict[str, Any]:
    """An Abandon: the job of a running execution ran past ``job_timeout``."""
    _running(run)
    answers = run.watch.turn([], lambda: run.other.trigger("t"), cut, arrive=1)
    return {"answers": answers}


def key_stored_elsewhere(run: Run, cut: bool) -> dict[str, Any]:
    """A blocking execution's ticket, whose idempotency key another node stored (and ran) while
    it was queued: the queued execution is dropped and its caller answered as a repeat."""
    _running(run)
    _blocking(run, "blocking", {"n": "blocking"}, key="b")
    _queued(run, 1)
    stored = run.other.trigger("t", key="b", notify=False)
    run.held["stored"] = run.other.finish(stored, notify=False)
    answers = run.watch.turn([], lambda: run.other.trigger("t"), cut, after=run.gate.release, arrive=1)
    return {"answers": answers}


def parked_repeat_deleted_elsewhere(run: Run, cut: bool) -> dict[str, Any]:
    """A non-blocking repeat waits (parked) for a queued blocking execution with its key; another
    node deletes the task. The turn that finds the task deleted hands the repeat on to be
    handled again; the other node creates the task again while that turn's write is cut. The
    repeat is handled in the turn decided again too: answered, as a trigger of the new task."""
    _running(run)
    _blocking(run, "queued", {"n": "queued"}, key="k")
    _queued(run, 1)
    repeat = threading.Thread(target=lambda: run.held.update(
        repeat=run.engine.trigger("t", {"n": "repeat"}, idempotency_key="k")), daemon=True)
    repeat.start()
    run.threads.append(repeat)
    poll_until("the repeat is parked", lambda: run.watch.actor._cache["t"].parked)
    run.other.delete_task("t")
    answers = run.watch.turn([
        ("other task", lambda: run.engine.trigger("hold", {"n": "other"})),  # the turn writes
        ("trigger", lambda: run.engine.trigger("t", {"n": "new"})),
    ], lambda: run.other.create_task("t", "g"), cut)
    return {"answers": answers}


def deletes_unreadable(run: Run, cut: bool) -> dict[str, Any]:
    """A deletion of a task whose record cannot be read (one A never loaded)."""
    run.other.create_task("u", "g")
    run.other.conn.execute("UPDATE taskengine.tasks SET record = %s WHERE id = 'u'", (b"not a record",))
    answers = run.watch.turn([("delete", lambda: run.engine.delete_task("u"))],
                             lambda: run.other.trigger("u"), cut)
    return {"answers": answers}


SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "triggers": (triggers, {"max_queued": 4}),
    "starts": (starts, {}),
    "blocking starts": (blocking_starts, {}),
    "finishes": (finishes, {"keep_last": 0}),
    "cancels": (cancels, {}),
    "delete and create": (delete_and_create, {}),
    "creates": (creates, {}),
    "prunes": (prunes, {}),
    "deleted elsewhere": (deleted_elsewhere, {}),
    "abandons": (abandons, {"job_timeout": 0.5}),
    "key stored elsewhere": (key_stored_elsewhere, {}),
    "parked repeat deleted elsewhere": (parked_repeat_deleted_elsewhere, {}),
    "deletes unreadable": (deletes_unreadable, {}),
}


def _run(make_engine: Any, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, name: str, cut: bool
         ) -> tuple[dict[str, Any], _Watch]:
    scenario, options = SCENARIOS[name]
    url = pg_server.create_database()
    with monkeypatch.context() as patch:
        run = _open(make_engine, url, patch, **options)
        try:
            ended = scenario(run, cut)
            settled = _settle(run)
        finally:
            run.watch.close()
            run.other.close()
        make_engine.close(run.engine)
    answers = {k: _outcome(v) for k, v in ended.pop("answers").items()}
    held = {k: _outcome(v) for k, v in run.held.items()}
    return {"answers": answers, "held": held, **ended, **settled}, run.watch


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_a_turn_decided_again_ends_as_a_turn_never_cut(
    make_engine: Any, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    cut, watch = _run(make_engine, pg_server, monkeypatch, name, cut=True)
    assert watch.cuts == 1 and watch.pairs, "the turn was not decided again"
    for began, again in watch.pairs:
        for part in began:
            assert again[part] == began[part], f"{part}: decided again from another state than it began with"
    never_cut, _ = _run(make_engine, pg_server, monkeypatch, name, cut=False)
    assert cut == never_cut



def test_a_turn_whose_writer_stopped_while_it_was_handled_is_not_decided_again(
    make_engine: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat judges the lease lost (the writer's ``failure``) while a turn is handled: the
    turn's later messages are refused at once. If its write is then cut and the task changed,
    the turn must not be decided again: that would refuse the same messages a second time (a
    second answer to one reply raises in the counter actor, which then dies)."""
    run = _open(make_engine, pg_url, monkeypatch)
    handlers = run.watch.actor._handlers
    trigger = handlers[m.Trigger]

    def trigger_then_lose_the_lease(msg: Any) -> None:
        trigger(msg)
        if msg.data == {"n": 1}:  # as the heartbeat does, between two messages of the turn
            run.engine._committer._lost("the test judged the lease lost")

    handlers[m.Trigger] = trigger_then_lose_the_lease
    try:
        answers = run.watch.turn([
            ("first", lambda: run.engine.trigger("t", {"n": 1})),
            ("second", lambda: run.engine.trigger("t", {"n": 2})),
        ], lambda: run.other.trigger("t"), cut=True)
    finally:
        run.watch.close()
        run.other.close()
    assert run.watch.cuts == 1
    assert all(isinstance(answer, Exception) for answer in answers.values()), answers
    # the counter actor lives on and answers (a dead one makes the engine close itself)
    assert run.engine.stats().write_failure is not None
    assert run.engine._refs.counters[0].is_alive()
    make_engine.close(run.engine)
