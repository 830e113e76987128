"""Waiting across nodes and finding work other nodes left (PostgreSQL): an engine against a real
server, and "another node" played by SQL run directly against the same database from the test
(it writes what a node writes: the rows, and the one notification its transaction sends, or none
when the test stands for a notification that was lost)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Recorder
from pg_other import OtherNode
from taskengine import Engine, errors
from taskengine.storage import Execution, ExecutionStatus
from taskengine.storage.pgfeed import CHANNEL

pytestmark = pytest.mark.timeout(60)

#: a poll interval no test outlasts: an answer within a test's bounds came by notification
NEVER = 3600.0


@pytest.fixture
def other(pg_url: str) -> Iterator[OtherNode]:
    node = OtherNode(pg_url)
    try:
        yield node
    finally:
        node.close()


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Bounded: polls a condition the engine's own threads make true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Waiter:
    """``engine.wait`` (or any call) on a thread of its own; ``result()`` its answer or error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._out: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._out.append(call())
        except BaseException as e:  # noqa: BLE001
            self._out.append(e)

    def pending(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = WAIT) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the waiter did not return"
        return self._out[0]


def watching(engine: Engine, execution_id: str) -> bool:
    """The engine waits for the execution and has read it unfinished (so only the database can
    tell it of the finish)."""
    return any(eid == execution_id and seen is not None for _, eid, seen in engine._board.remote())


def remote_wait(engine: Engine, task_id: str, execution_id: str) -> Waiter:
    waiter = Waiter(lambda: engine.wait(task_id, execution_id, timeout=WAIT))
    until(lambda: watching(engine, execution_id), "the wait to begin")
    return waiter


def waiting_engine(make_engine: Any, pg_url: str, other: OtherNode) -> tuple[Engine, Execution, Waiter]:
    """An engine that waits for a PENDING execution the other node made (and would run): only a
    notification can tell it of the finish in time."""
    engine = make_engine(pg_url, poll_interval=NEVER)
    other.create_task("t", job="elsewhere")
    ex = other.trigger("t")
    return engine, ex, remote_wait(engine, "t", ex.id)


# -- waits -----------------------------------------------------------------------------------


#: the calls that wait for an execution: each returns its outcome when another node finishes it
WAYS: dict[str, Callable[[Engine, Execution], Any]] = {
    "wait": lambda engine, ex: engine.wait("t", ex.id, timeout=WAIT),
    "await_execution": lambda engine, ex: asyncio.run(engine.await_execution("t", ex.id, timeout=WAIT)),
    "blocking_repeat": lambda engine, ex: engine.trigger("t", blocking=True, idempotency_key="k", timeout=WAIT),
}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("notify", [True, False], ids=["notification", "polling"])
def test_a_waiter_returns_when_another_node_finishes(make_engine: Any, pg_url: str, other: OtherNode,
                                                     notify: bool, way: str) -> None:
    engine = make_engine(pg_url, jobs={"here": Recorder()}, poll_interval=NEVER if notify else 0.2)
    other.create_task("t", job="elsewhere")  # a job this node does not have: it never runs it
    ex = other.trigger("t", key="k")
    waiter = Waiter(lambda: WAYS[way](engine, ex))
    until(lambda: watching(engine, ex.id), "the wait to begin")
    done = other.finish(ex, notify=notify)
    got = waiter.result()
    assert got == done and got.status is ExecutionStatus.SUCCESS and got.result == {"ran": "elsewhere"}


def test_a_wait_for_an_execution_whose_task_another_node_deletes_is_cancelled(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    engine, ex, waiter = waiting_engine(make_engine, pg_url, other)
    other.delete_task("t")
    got = waiter.result()
    assert isinstance(got, Execution), got
    assert got.status is ExecutionStatus.CANCELLED and got.error == "cancelled: the task was deleted"
    assert (got.id, got.index) == (ex.id, 0)


def test_a_lost_listening_connection_comes_back_and_waits_return(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    engine = make_engine(pg_url, poll_interval=NEVER)
    other.create_task("t", job="elsewhere")
    feed = engine._remote._feed
    first = feed.backend_pid()
    assert first is not None
    other.conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    until(lambda: feed.reconnects >= 1 and feed.backend_pid() not in (None, first), "the feed to reconnect")
    ex = other.trigger("t")
    waiter = remote_wait(engine, "t", ex.id)
    done = other.finish(ex)  # heard on the new connection: the poll interval is out of reach
    assert waiter.result() == done


def test_a_finish_missed_while_the_listener_was_down_is_found_on_reconnect(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    engine, ex, waiter = waiting_engine(make_engine, pg_url, other)
    feed = engine._remote._feed
    pid = feed.backend_pid()
    # the finish's notification is lost with the connection: the reconnect reads again what it missed
    with other.conn.transaction():
        other.conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        done = other.finish(ex, notify=False)
    assert waiter.result() == done


def test_close_answers_a_remote_wait(make_engine: Any, pg_url: str, other: OtherNode) -> None:
    engine, ex, waiter = waiting_engine(make_engine, pg_url, other)
    engine.close(timeout=WAIT)
    assert isinstance(waiter.result(), errors.EngineClosed)
    assert not engine._remote._thread.is_alive()


# -- finding PENDING executions other nodes made -----------------------------------------------


@pytest.mark.parametrize("notify", [True, False], ids=["notification", "polling"])
def test_a_pending_execution_another_node_made_runs_here_once(
    make_engine: Any, pg_url: str, other: OtherNode, notify: bool
) -> None:
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"j": rec}, poll_interval=NEVER if notify else 0.2)
    other.create_task("t", job="j")
    ex = other.trigger("t", notify=notify)
    got = engine.wait("t", ex.id, timeout=WAIT)
    assert got.status is ExecutionStatus.SUCCESS and got.index == 0
    remote = engine._remote
    # more rounds after it finished find nothing more to run
    rounds = remote.rounds["discoveries"]
    for n in range(3):
        other.create_task(f"nudge{n}", job="elsewhere")
        other.trigger(f"nudge{n}")  # a notification that makes it look again
        until(lambda n=n: remote.rounds["discoveries"] > rounds + n, "another round")
    assert rec.ids() == [ex.id]
    assert remote.rounds["discovered"] == 1


def test_pending_executions_of_jobs_not_registered_here_are_left_alone(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"j": rec}, poll_interval=NEVER)
    other.create_task("mine", job="j")
    other.create_task("theirs", job="elsewhere")
    theirs = other.trigger("theirs")
    mine = other.trigger("mine")
    assert engine.wait("mine", mine.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.get_execution("theirs", theirs.id).status is ExecutionStatus.PENDING
    assert rec.ids() == [mine.id]


def test_a_job_registered_later_finds_its_pending_executions(make_engine: Any, pg_url: str, other: OtherNode) -> None:
    rec = Recorder()
    engine = make_engine(pg_url, poll_interval=NEVER)
    other.create_task("t", job="j")
    ex = other.trigger("t", notify=False)  # nothing tells this node of it: the registration makes it look
    engine.register_job("j", rec)
    assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert rec.ids() == [ex.id]


def test_discovery_takes_no_more_than_the_idle_executors(make_engine: Any, pg_url: str, other: OtherNode) -> None:
    from engine_helpers import Gate

    gate = Gate()
    engine = make_engine(pg_url, jobs={"j": gate}, workers=2, poll_interval=NEVER)
    other.create_task("t", job="j")
    made = [other.trigger("t") for _ in range(5)]
    assert gate.wait_calls(2)
    stats = engine.stats()
    assert stats.queued == 0 and stats.pending == 2  # the three others stay in the database only
    gate.release()
    for ex in made:
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert sorted(c[0] for c in gate.calls) == sorted(ex.id for ex in made)


# -- the notifications an engine sends -------------------------------------------------------


def test_each_write_that_needs_it_sends_one_notification(make_engine: Any, pg_url: str) -> None:
    from engine_helpers import Gate

    gate = Gate()
    engine = make_engine(pg_url, jobs={"j": gate}, workers=1, poll_interval=NEVER)
    with psycopg.connect(pg_url, autocommit=True) as listen:
        listen.execute(f"LISTEN {CHANNEL}")
        engine.create_task("t", job="j")  # needs none
        first = engine.trigger("t")  # started by its trigger's write (the executor was idle): needs none
        assert gate.wait_calls(1)
        second = engine.trigger("t")  # a PENDING execution (the one executor is busy): "p"
        second_start = engine.trigger("t")  # another: "p"
        engine.cancel("t", second.id)  # "f"
        gate.release()
        for ex in (first, second_start):  # the second's start needs none; each finish "f"
            assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
        engine.delete_task("t")  # "f": waiters of its executions elsewhere
        listen.execute("SELECT pg_notify(%s, 'end')", (CHANNEL,))
        heard = []
        for n in listen.notifies(timeout=WAIT):
            if n.payload == "end":
                break
            heard.append(n.payload)
    assert heard == ["p", "p", "f", "f", "f", "f"]


def test_poll_interval_is_validated(make_engine: Any, db_path: str) -> None:
    for bad in (0, -1, None, float("inf"), float("nan"), "1", True):
        with pytest.raises(errors.InvalidArgument, match="poll_interval"):
            make_engine(db_path, poll_interval=bad)


# -- listening only while there is use for it ------------------------------------------------


def test_a_feed_is_not_told_what_was_sent_while_it_did_not_listen(pg_url: str, other: OtherNode) -> None:
    from taskengine.storage.pgfeed import PostgresFeed

    feed = PostgresFeed(pg_url, "the test's database", lambda: set())
    try:
        assert feed.listen(True) is False  # it listens from the start
        assert feed.listen(False) is False
        other.conn.execute("SELECT pg_notify(%s, 'f')", (CHANNEL,))  # nobody hears this one
        assert feed.listen(True) is True  # listening again: what came meanwhile was missed
        other.conn.execute("SELECT pg_notify(%s, 'p')", (CHANNEL,))
        assert feed.wait(WAIT) == {"p"}
    finally:
        feed.release()


def test_a_node_with_no_use_for_notifications_stops_listening_and_a_wait_brings_it_back(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    """No job registered and nothing waited for: nothing another node writes concerns it. A wait
    for another node's execution makes it listen again at once (the poll is out of reach)."""
    engine = make_engine(pg_url, poll_interval=NEVER)
    feed = engine._remote._feed
    until(lambda: not feed.listening, "the feed to stop listening")
    other.create_task("t", job="elsewhere")
    ex = other.trigger("t")
    waiter = remote_wait(engine, "t", ex.id)
    done = other.finish(ex)
    assert waiter.result() == done
    assert feed.listening


def test_a_finish_sent_before_the_feed_listens_again_is_read_when_it_does(
    make_engine: Any, pg_url: str, other: OtherNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(pg_url, poll_interval=NEVER)
    feed = engine._remote._feed
    until(lambda: not feed.listening, "the feed to stop listening")
    about_to_listen, go_on = threading.Event(), threading.Event()
    listen = feed.listen

    def held_listen(on: bool) -> bool:  # the finish is committed just before the LISTEN
        if on and not feed.listening:
            about_to_listen.set()
            assert go_on.wait(WAIT)
        return listen(on)

    monkeypatch.setattr(feed, "listen", held_listen)
    other.create_task("t", job="elsewhere")
    ex = other.trigger("t")
    waiter = remote_wait(engine, "t", ex.id)
    assert about_to_listen.wait(WAIT)
    done = other.finish(ex)  # its notification reaches no one
    go_on.set()
    assert waiter.result() == done


def test_a_wait_that_begins_while_looks_for_work_fail_is_still_heard(
    make_engine: Any, pg_url: str, other: OtherNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every look for PENDING executions fails (and every round looks): the feed still listens
    again for a wait that began, so a notified finish answers it (the poll is out of reach)."""
    from taskengine.actors import remote as remote_module

    engine = make_engine(pg_url, poll_interval=NEVER)
    remote, feed = engine._remote, engine._remote._feed
    until(lambda: not feed.listening, "the feed to stop listening")

    def failing_look() -> bool | None:
        raise RuntimeError("the look for work failed")

    monkeypatch.setattr(remote, "_discover", failing_look)
    monkeypatch.setattr(remote_module, "DISCOVERY_GAP", 0.0)  # the wait's wake finds a look due
    other.create_task("t", job="elsewhere")
    ex = other.trigger("t")
    waiter = remote_wait(engine, "t", ex.id)
    done = other.finish(ex)
    assert waiter.result() == done


def test_a_node_whose_executors_are_all_busy_stops_listening_until_it_has_room(
    make_engine: Any, pg_url: str, other: OtherNode
) -> None:
    from engine_helpers import Gate

    gate = Gate()
    engine = make_engine(pg_url, jobs={"j": gate}, workers=1, poll_interval=NEVER)
    engine.create_task("mine", job="j")
    engine.trigger("mine")
    assert gate.wait_calls(1)
    feed = engine._remote._feed
    other.create_task("nudge", job="elsewhere")
    other.trigger("nudge")  # a notification: it looks for work, and finds no room for any
    until(lambda: not feed.listening, "the feed to stop listening")
    other.create_task("t", job="j")
    made = other.trigger("t")  # notified, not heard: the executor has no room for it
    gate.release()
    assert gate.wait_calls(2)  # found once the executor had room
    assert gate.calls[1][0] == made.id
    until(lambda: feed.listening, "the feed to listen again")


# -- two real engines (nodes) on one database ------------------------------------------------


def test_two_engines_wait_for_and_run_each_others_executions(make_engine: Any, pg_url: str) -> None:
    """Node A triggers three executions and runs two (its two executors hold them); node B, which
    gets the job later, finds the third and runs it; each waits for what the other runs (a wait,
    and a blocking repeat of an idempotency key A stored), and each hears of the finish by its
    notification (no polling within the test's bounds)."""
    from engine_helpers import Gate

    gate_a, gate_b = Gate(), Gate()
    a = make_engine(pg_url, jobs={"hold": gate_a}, workers=2, node_id="a", poll_interval=NEVER)
    b = make_engine(pg_url, node_id="b", poll_interval=NEVER)
    a.create_task("t", job="hold")
    made = [a.trigger("t", idempotency_key=f"k{i}") for i in range(3)]
    assert gate_a.wait_calls(2)
    held_by_a = [c[0] for c in gate_a.calls]
    (third,) = [ex for ex in made if ex.id not in held_by_a]
    b.register_job("hold", gate_b)  # B looks for work of the job it now has
    assert gate_b.wait_calls(1)
    assert [c[0] for c in gate_b.calls] == [third.id]
    a_waits = remote_wait(a, "t", third.id)
    b_waits = remote_wait(b, "t", held_by_a[0])
    first_key = next(ex.idempotency_key for ex in made if ex.id == held_by_a[1])
    b_repeats = Waiter(lambda: b.trigger("t", blocking=True, idempotency_key=first_key, timeout=WAIT))
    until(lambda: watching(b, held_by_a[1]), "B's blocking repeat to follow A's execution")
    gate_b.release()
    assert a_waits.result().status is ExecutionStatus.SUCCESS
    gate_a.release()
    assert b_waits.result().status is ExecutionStatus.SUCCESS
    repeat = b_repeats.result()
    assert (repeat.id, repeat.status) == (held_by_a[1], ExecutionStatus.SUCCESS)
    # A's executor took the third from its own queue too: its start missed, and it ran nothing
    assert gate_a.wait_returned(2) and sorted(c[0] for c in gate_a.calls) == sorted(held_by_a)
    assert [c[0] for c in gate_b.calls] == [third.id]
    for ex in made:
        assert a.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS


def test_an_engine_in_another_process_shares_waits_and_work(make_engine: Any, pg_url: str) -> None:
    """The same across processes: a child node triggers three executions and holds two; this
    node, given the job, runs the third, and waits for one the child runs; the child's own waits
    (tests/node_child.py) see every execution finish, the one run here included."""
    from engine_helpers import Child

    rec = Recorder()
    here = make_engine(pg_url, node_id="here", poll_interval=NEVER)
    child = Child("node_child.py", pg_url, "child", "t", "3")
    try:
        acked, running = child_started(child)
        (third,) = [eid for eid in acked if eid not in running]
        here.register_job("hold", rec)
        assert rec.wait_calls(1)
        assert rec.ids() == [third]
        waits = remote_wait(here, "t", running[0])
        assert child.proc.stdin is not None
        child.proc.stdin.write("GO\n")
        child.proc.stdin.flush()
        assert waits.result().status is ExecutionStatus.SUCCESS
        outcomes = dict(child.expect("WAIT").split()[1:] for _ in range(3))
        child.expect("DONE")
    finally:
        child.finish()
    assert outcomes == dict.fromkeys(acked, "SUCCESS"), outcomes
    assert not [line for line in child.seen if line == f"RUNNING {third}"], "the third ran twice"
    assert rec.ids() == [third]


def child_started(child: Any, running: int = 2) -> tuple[list[str], list[str]]:
    """The ids a node_child.py acknowledged, and those it runs, once it is READY and runs that many."""
    acked: list[str] = []
    started: list[str] = []
    while len(started) < running or "READY" not in child.seen:  # the lines interleave
        line = child.readline()
        child.seen.append(line)
        word, *rest = line.split()
        {"ACK": acked, "RUNNING": started}.get(word, []).extend(rest[:1])
    return acked, started


def test_a_wait_for_an_execution_of_a_node_that_dies_returns_when_it_is_reaped(make_engine: Any, pg_url: str) -> None:
    """The reaper's transaction notifies like any other: a waiter on a surviving node hears that
    the killed node's execution was finished as interrupted without polling."""
    from engine_helpers import Child

    here = make_engine(pg_url, node_id="here", node_lease=1.0, poll_interval=NEVER)
    child = Child("node_child.py", pg_url, "child", "t", "2")
    try:
        _, running = child_started(child)
        waits = remote_wait(here, "t", running[0])
        child.kill9()
    finally:
        child.finish()
    got = waits.result()
    assert (got.status, got.error) == (ExecutionStatus.FAILED, "interrupted: node child lost")


def test_successive_looks_go_round_every_task(pg_url: str, other: OtherNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look reads a window of the PENDING rows; the next starts after the tasks it covered, so
    a backlog on the first tasks (by id) does not hide the later ones from every look."""
    from taskengine.storage import open_store, postgres

    monkeypatch.setattr(postgres, "DISCOVERY_WINDOW", 4)
    store = open_store(pg_url, create=True)  # makes the schema
    try:
        tasks = [f"t{n}" for n in range(5)]
        for task in tasks:
            other.create_task(task, job="j")
            for _ in range(3):
                other.trigger(task, notify=False)
        seen: set[str] = set()
        after = ""
        for _ in range(len(tasks)):
            found, after = store.pending_elsewhere(["j"], 2, "salt", after)
            assert len(found) == 2
            seen.update(ex.task_id for ex, _ in found)
        assert seen == set(tasks)
    finally:
        store.close()
