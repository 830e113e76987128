"""A non-blocking idempotent repeat of a blocking execution still queued (no index, no record
yet): it waits until that execution leaves the queue, and every id it answers with exists
(invariant 3). The first one may start (the repeat gets it, stored, with its index), or leave
the queue without ever being stored: cancelled (the repeat is then a new execution under the
key), refused because the task became COMPLETED (the same TaskNotRunnable), its task deleted
(TaskNotFound), or the engine closed (EngineClosed). Run on both backends; the case of another
node storing the key first is in test_pg_adversarial.py."""

from __future__ import annotations

import zlib
from typing import Any

import psycopg
import pykka
import pytest

from engine_helpers import WAIT, Gate, check_db
from taskengine import ExecutionStatus, errors

S = ExecutionStatus

pytestmark = pytest.mark.timeout(60)


def _queued(make_engine: Any, store: str, max_executions: int | None = None,
            **options: Any) -> tuple[Any, Gate, Any, Any, str]:
    """One worker held by a gate (index 0), a blocking trigger queued behind it under key "k"
    (and its id), and a non-blocking repeat of "k", which must not be answered yet."""
    gate = Gate()
    engine = make_engine(store, jobs={"g": gate}, workers=1, **options)
    engine.create_task("t", job="g", max_executions=max_executions)
    engine.trigger("t")
    assert gate.wait_calls(1)
    first = engine.trigger_future("t", blocking=True, idempotency_key="k")
    with pytest.raises(errors.ExecutionTimeout) as timed_out:
        first.get(timeout=0)  # the future can be read again later
    assert timed_out.value.index is None
    repeat = engine.trigger_future("t", idempotency_key="k")
    stats = engine.stats()  # asked after both triggers, of the same counter actor: they are handled
    assert stats.queued_blocking == 1
    with pytest.raises(pykka.Timeout):
        repeat.get(timeout=0)  # waiting for the first to leave the queue
    return engine, gate, first, repeat, timed_out.value.execution_id


def _readable(engine: Any, ex: Any) -> None:
    """The id answered exists: a read and a wait find it, with the index answered."""
    assert ex.index is not None
    read = engine.get_execution("t", ex.id)
    assert (read.id, read.index) == (ex.id, ex.index)
    done = engine.wait("t", ex.id, timeout=WAIT)
    assert (done.id, done.index, done.status) == (ex.id, ex.index, S.SUCCESS)


def test_a_repeat_of_a_queued_execution_gets_it_once_it_starts(make_engine: Any, store: str) -> None:
    engine, gate, first, repeat, queued_id = _queued(make_engine, store)
    gate.release()
    again = repeat.get(timeout=WAIT)
    done = first.get(timeout=WAIT)
    assert (again.id, again.index) == (done.id, 1) == (queued_id, 1) and done.status is S.SUCCESS
    _readable(engine, again)
    assert engine.trigger("t", idempotency_key="k").id == done.id
    assert engine.next_index("t") == 2
    make_engine.close(engine)
    check_db(store, allow_live=False)


def test_a_repeat_of_a_queued_execution_cancelled_before_it_starts_is_a_new_one(make_engine: Any, store: str) -> None:
    """The cancelled one is never stored; the key is free again, so the repeat is handled as a
    trigger that came after the cancel: a new execution, stored, with its own id and index."""
    engine, gate, first, repeat, queued_id = _queued(make_engine, store)
    cancelled = engine.cancel("t", queued_id)
    assert (cancelled.status, cancelled.index) == (S.CANCELLED, None)
    again = repeat.get(timeout=WAIT)
    assert again.id != queued_id and again.index == 1 and again.status is S.PENDING
    assert first.get(timeout=WAIT).status is S.CANCELLED
    gate.release()
    _readable(engine, again)
    assert engine.trigger("t", idempotency_key="k").id == again.id
    make_engine.close(engine)
    check_db(store, allow_live=False)


def test_a_repeat_of_a_queued_execution_refused_by_max_executions_is_refused(make_engine: Any, store: str) -> None:
    engine, gate, first, repeat, queued_id = _queued(make_engine, store, max_executions=2)
    last = engine.trigger("t")
    assert last.index == 1  # the task is COMPLETED now; the queued one cannot start
    gate.release()
    for fut in (first, repeat):
        with pytest.raises(errors.TaskNotRunnable):
            fut.get(timeout=WAIT)
    assert engine.next_index("t") == 2
    # a close leaves queued executions PENDING (README): index 1 may not have run yet
    assert engine.wait("t", last.id, timeout=WAIT).status is S.SUCCESS
    make_engine.close(engine)
    check_db(store, allow_live=False)


def test_a_repeat_of_a_queued_execution_whose_task_is_deleted_gets_task_not_found(make_engine: Any, store: str) -> None:
    engine, gate, first, repeat, queued_id = _queued(make_engine, store)
    engine.delete_task("t")
    with pytest.raises(errors.TaskNotFound):
        repeat.get(timeout=WAIT)
    assert first.get(timeout=WAIT).status is S.CANCELLED
    gate.release()
    make_engine.close(engine)


def test_a_repeat_of_a_queued_execution_is_answered_at_close(make_engine: Any, store: str) -> None:
    """The queued one never starts (its worker is held past the close's bound): the repeat is
    answered with EngineClosed, not left waiting."""
    engine, gate, first, repeat, queued_id = _queued(make_engine, store)
    engine.close(timeout=0.2)
    for fut in (repeat, first):
        with pytest.raises(errors.EngineClosed):
            fut.get(timeout=WAIT)
    gate.release()


def test_a_repeat_of_a_queued_execution_is_refused_when_the_node_loses_its_lease(make_engine: Any, pg_url: str) -> None:
    """PostgreSQL: the node's lease runs out (its row expired, as for a node paused past it)
    while the repeat waits and the worker is still held, so no message reaches the repeat's
    counter actor; the heartbeat finds the lease lost. The writer refuses everything from then on
    and the queued execution can never be stored: the repeat is answered at once with WriteFailed
    naming the lost lease (not left waiting for a turn that may never come), as is the blocking
    trigger; nothing more was stored."""
    engine, gate, first, repeat, queued_id = _queued(make_engine, pg_url, node_id="n", node_lease=1.0)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE taskengine.nodes SET lease_until = clock_timestamp() - interval '1 second'")
    for fut in (repeat, first):
        with pytest.raises(errors.WriteFailed, match="lost its lease"):
            fut.get(timeout=WAIT)
    gate.release()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT idx FROM taskengine.executions").fetchall() == [(0,)]


def test_a_repeat_of_a_queued_execution_is_refused_when_another_actors_write_is_fenced(
        make_engine: Any, pg_url: str) -> None:
    """PostgreSQL, two counter actors: the node is taken over (another engine joins under its
    id) long before its heartbeat would notice; a trigger of a task of the other counter actor
    is the write the fence refuses. Writes stop engine-wide there, and the repeat parked in the
    first actor is answered with that refusal, though its own actor handled nothing since."""
    engine, gate, first, repeat, queued_id = _queued(make_engine, pg_url, node_id="n", node_lease=60.0,
                                                     counter_actors=2)
    other = next(f"u{i}" for i in range(100) if zlib.crc32(f"u{i}".encode()) % 2 != zlib.crc32(b"t") % 2)
    engine.create_task(other, job="g")
    make_engine(pg_url, jobs={"g": Gate()}, node_id="n", node_lease=60.0)  # the next epoch of "n"
    with pytest.raises(errors.WriteFailed, match="lost its lease"):
        engine.trigger(other)
    for fut in (repeat, first):
        with pytest.raises(errors.WriteFailed, match="lost its lease"):
            fut.get(timeout=WAIT)
    gate.release()
