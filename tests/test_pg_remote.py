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
    engine = make_engine(pg_url, jobs={"j": gate}, poll_interval=NEVER)
    with psycopg.connect(pg_url, autocommit=True) as listen:
        listen.execute(f"LISTEN {CHANNEL}")
        engine.create_task("t", job="j")  # needs none
        ex = engine.trigger("t")  # a PENDING execution: "p"
        assert gate.wait_calls(1)  # its start needs none
        gate.release()
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS  # "f"
        engine.delete_task("t")  # "f": waiters of its executions elsewhere
        listen.execute("SELECT pg_notify(%s, 'end')", (CHANNEL,))
        heard = []
        for n in listen.notifies(timeout=WAIT):
            if n.payload == "end":
                break
            heard.append(n.payload)
    assert heard == ["p", "f", "f"]


def test_poll_interval_is_validated(make_engine: Any, db_path: str) -> None:
    for bad in (0, -1, None, float("inf"), float("nan"), "1", True):
        with pytest.raises(errors.InvalidArgument, match="poll_interval"):
            make_engine(db_path, poll_interval=bad)
