"""Backpressure: ``Engine.open(..., max_queued=N)`` bounds the executions triggered and not yet
started. A trigger over it raises QueueFull, changes nothing and uses no index; the bound holds
under concurrent triggers over several counter actors."""

from __future__ import annotations

import threading

import pytest

import taskengine
from engine_helpers import WAIT, Gate, Recorder, assert_gap_free_api, check_db, run_threads
from taskengine import ExecutionStatus, errors
from tools_dbs import DbBuilder, P


def test_queue_full_is_a_public_engine_error():
    assert issubclass(errors.QueueFull, errors.EngineError)
    assert taskengine.QueueFull is errors.QueueFull
    assert "QueueFull" in taskengine.__all__ and "QueueFull" in errors.__all__
    assert "max_queued" in str(errors.QueueFull(3)) and errors.QueueFull(3).limit == 3


@pytest.mark.timeout(90)
def test_a_full_backlog_refuses_triggers_and_uses_no_index(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"job": gate}, workers=1, max_queued=5)
    engine.create_task("t", job="job")
    engine.trigger("t")
    assert gate.wait_calls(1)  # running: it holds the only executor, and no place in the backlog

    # 32 callers at once: exactly 5 get in, whatever the interleaving
    res = run_threads(32, lambda i: engine.trigger("t", data={"i": i}))
    refused = [e for e in res.errors if e is not None]
    assert all(isinstance(e, errors.QueueFull) for e in refused), refused
    accepted = [ex for ex in res.results if ex is not None]
    assert len(accepted) == 5 and len(refused) == 27
    assert sorted(ex.index for ex in accepted) == [1, 2, 3, 4, 5]
    assert engine.next_index("t") == 6  # no index for a refused trigger
    assert engine.stats().backlog == 5

    with pytest.raises(errors.QueueFull):  # a blocking trigger is refused at once too
        engine.trigger("t", blocking=True, timeout=WAIT)
    engine.cancel("t", accepted[0].id)  # a place frees
    blocking = engine.trigger_future("t", data={"blocking": True}, blocking=True)
    with pytest.raises(errors.QueueFull):
        engine.trigger("t")
    assert engine.stats().backlog == 5 and engine.next_index("t") == 6

    gate.release()
    done = blocking.get(timeout=WAIT)
    assert done.status is ExecutionStatus.SUCCESS and done.index == 6
    for ex in accepted[1:]:
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.stats().backlog == 0
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 7
    assert_gap_free_api(engine, "t")
    make_engine.close(engine)
    assert sorted(check_db(db_path)["t"].records) == list(range(8))


@pytest.mark.timeout(120)
def test_the_bound_holds_under_concurrent_mixed_triggers_over_several_actors(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"job": rec}, workers=2, counter_actors=3, max_queued=20)
    tasks = [f"t{i}" for i in range(6)]
    for tid in tasks:
        engine.create_task(tid, job="job")
    stop = threading.Event()
    seen: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            seen.append(engine.stats().backlog)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def client(c: int) -> tuple[int, int]:
        ok = full = 0
        for i in range(150):
            tid = tasks[(c + i) % len(tasks)]
            try:
                engine.trigger(tid, data={"c": c, "i": i}, blocking=(c + i) % 5 == 0, timeout=WAIT)
                ok += 1
            except errors.QueueFull:
                full += 1
        return ok, full

    try:
        res = run_threads(12, client)
    finally:
        stop.set()
        watcher.join(WAIT)
    res.raise_unexpected()
    accepted = sum(ok for ok, _ in res.results)
    refused = sum(full for _, full in res.results)
    assert accepted + refused == 12 * 150
    assert refused > 0, "the workload never filled the backlog: the test proves nothing"
    assert seen and max(seen) <= 20
    assert engine.stats().backlog_peak <= 20
    assert rec.wait_calls(accepted)
    assert sum(engine.next_index(tid) for tid in tasks) == accepted  # refused triggers used no index
    for tid in tasks:
        assert_gap_free_api(engine, tid)


@pytest.mark.timeout(60)
def test_recovered_executions_count_against_the_bound(make_engine, db_path):
    with DbBuilder(db_path) as b:
        b.task("t", job="job")
        b.executions("t", *[P] * 8, blocking=False)
    rec = Recorder()
    engine = make_engine(db_path, jobs={"other": Recorder()}, workers=1, max_queued=5)
    engine.create_task("o", job="other")
    assert engine.stats().backlog == 8  # waiting for their job, and counted: the bound is the engine's
    with pytest.raises(errors.QueueFull):
        engine.trigger("o")
    engine.register_job("job", rec)
    assert rec.wait_calls(8)
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 8


def test_max_queued_is_validated(make_engine, db_path):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(errors.InvalidArgument):
            make_engine(db_path, max_queued=bad)
    engine = make_engine(db_path)
    assert engine.stats().backlog is None  # no bound, nothing counted
