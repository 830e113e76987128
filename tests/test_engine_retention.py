"""Retention (gap-free with the prune mark): ``prune`` removes a task's oldest finished
executions and moves its prune mark, so the stored indexes are exactly ``mark .. counter-1``;
pruned indexes are never issued again; PENDING and RUNNING executions are never pruned (the mark
stops at the first one); ``Engine.open(..., keep_last=N)`` applies the policy in the background.
Races with triggers, deletion and a SIGKILL are below."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine_helpers import WAIT, Child, Gate, Recorder, assert_gap_free_api, check_db, run_threads
from taskengine import ExecutionStatus, Hooks, errors, storage
from taskengine.actors import retention
from taskengine.storage import Database, keys
from taskengine.tools import replay
from tools_dbs import DbBuilder, S

FINISHED = (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


class Held:
    """A job that returns at once unless its data says ``hold``; held runs wait for ``release``."""

    def __init__(self) -> None:
        self.gate = Gate()
        self.fast = Recorder()

    def __call__(self, ctx: Any) -> Any:
        if (ctx.data or {}).get("hold"):
            return self.gate(ctx)
        return self.fast(ctx)


def replay_ok(path: str) -> replay.Report | None:
    if storage.is_url(path):  # replay reads LevelDB; the same invariants, read from the tables
        check_db(path)
        return None
    db = Database.open(path)
    try:
        report = replay.check(db)
    finally:
        db.close()
    assert report.ok, [str(v) for v in report.violations]
    return report


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition the engine offers no event for (background work), within a bound."""
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        stop.wait(0.01)


@pytest.mark.timeout(60)
def test_prune_keeps_the_last_n_and_never_reissues_an_index(make_engine, store):
    engine = make_engine(store, jobs={"job": Recorder()})
    engine.create_task("t", job="job")
    made = [engine.trigger("t", data={"n": i}, blocking=True, timeout=WAIT) for i in range(10)]
    assert engine.prune("t", keep_last=3) == 7
    task = engine.get_task("t")
    assert (task.prune_mark, task.execution_count) == (7, 10)
    assert [e.id for e in engine.list_executions("t")] == [e.id for e in made[7:]]
    assert [e.index for e in engine.list_executions("t", newest_first=True)] == [9, 8, 7]
    with pytest.raises(errors.ExecutionNotFound):
        engine.get_execution("t", made[0].id)
    assert engine.prune("t", keep_last=3) == 0  # nothing more to do
    assert engine.prune("t", before_index=5) == 0  # below the mark already
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 10
    assert engine.prune("t", before_index=9, keep_last=0) == 2  # both: the one that removes fewer
    assert engine.get_task("t").prune_mark == 9
    assert_gap_free_api(engine, "t")
    assert engine.stats().pruned == 9
    make_engine.close(engine)

    on_disk = check_db(store)["t"]
    assert (on_disk.prune_mark, on_disk.counter, sorted(on_disk.records)) == (9, 11, [9, 10])
    assert len(on_disk.ids) == 2
    report = replay_ok(store)
    if report is not None:
        assert (report.tasks[0].prune_mark, report.tasks[0].counter, report.tasks[0].executions) == (9, 11, 2)

    engine = make_engine(store, jobs={"job": Recorder()})
    assert engine.get_task("t").prune_mark == 9
    assert engine.prune("t", keep_last=0) == 2
    assert engine.list_executions("t") == []
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 11
    make_engine.close(engine)
    engine = make_engine(store, jobs={"job": Recorder()})  # everything pruned, then reopened
    assert engine.next_index("t") == 12 and engine.get_task("t").prune_mark == 11


@pytest.mark.timeout(60)
def test_the_mark_stops_at_the_first_unfinished_execution(make_engine, store):
    job = Held()
    engine = make_engine(store, jobs={"job": job}, workers=1)
    engine.create_task("t", job="job")
    for i in range(2):
        engine.trigger("t", data={"i": i}, blocking=True, timeout=WAIT)
    held = engine.trigger("t", data={"hold": True})  # index 2: RUNNING, holding the only executor
    assert job.gate.wait_calls(1)
    pending = [engine.trigger("t", data={"i": i}) for i in (3, 4)]  # PENDING behind it
    blocking = engine.trigger_future("t", data={"i": 5}, blocking=True)  # queued: no index yet
    assert engine.prune("t", keep_last=0) == 2
    assert engine.get_task("t").prune_mark == 2
    assert engine.prune("t", before_index=5) == 0
    assert engine.get_execution("t", held.id).status is ExecutionStatus.RUNNING
    assert all(engine.get_execution("t", p.id).status is ExecutionStatus.PENDING for p in pending)

    job.gate.release()
    assert blocking.get(timeout=WAIT).index == 5
    for ex in [held, *pending]:
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.prune("t", keep_last=1) == 3
    assert engine.get_task("t").prune_mark == 5
    assert len(job.fast.ids()) == 5  # nothing ran twice, nothing was lost
    assert_gap_free_api(engine, "t")


def test_a_pruned_idempotency_key_is_forgotten(make_engine, store):
    engine = make_engine(store, jobs={"job": Recorder()})
    engine.create_task("t", job="job")
    first = engine.trigger("t", idempotency_key="k", blocking=True, timeout=WAIT)
    assert engine.trigger("t", idempotency_key="k").id == first.id
    engine.prune("t", keep_last=0)
    again = engine.trigger("t", idempotency_key="k", blocking=True, timeout=WAIT)
    assert again.id != first.id and again.index == 1
    assert engine.trigger("t", idempotency_key="k").id == again.id
    make_engine.close(engine)
    replay_ok(store)


def test_prune_refuses_bad_arguments(make_engine, db_path):
    engine = make_engine(db_path, jobs={"job": Recorder()})
    engine.create_task("t", job="job")
    for bad in ({}, {"keep_last": -1}, {"keep_last": True}, {"before_index": "3"}, {"before_index": 2**64}):
        with pytest.raises(errors.InvalidArgument):
            engine.prune("t", **bad)
    with pytest.raises(errors.TaskNotFound):
        engine.prune("nope", keep_last=1)
    with pytest.raises(errors.InvalidArgument):
        make_engine(db_path + "-2", keep_last=-1)
    make_engine.close(engine)
    with pytest.raises(errors.EngineClosed):
        engine.prune("t", keep_last=1)


@pytest.mark.timeout(90)
def test_a_large_prune_goes_in_steps_and_lets_triggers_through(make_engine, db_path, monkeypatch):
    with DbBuilder(db_path) as b:
        b.task("big", job="job")
        b.executions("big", *[S] * 600)
        b.task("other", job="job")
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 1)  # one execution per write
    engine = make_engine(db_path, jobs={"job": Recorder()})
    writes = engine.stats().writes
    removed: list[int] = []
    pruner = threading.Thread(target=lambda: removed.append(engine.prune("big", keep_last=0)), daemon=True)
    pruner.start()
    wait_for(lambda: engine.stats().pruned > 0)
    # the task's counter actor serves other messages between the steps of the prune
    assert engine.trigger("other", blocking=True, timeout=WAIT).index == 0
    assert engine.trigger("big", blocking=True, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert pruner.is_alive() and engine.stats().pruned < 600
    pruner.join(WAIT)
    assert removed == [600]  # its target was fixed at the start: the new execution stays
    assert engine.stats().writes - writes >= 600
    task = engine.get_task("big")
    assert (task.prune_mark, task.execution_count) == (600, 601)
    assert_gap_free_api(engine, "big")


@pytest.mark.timeout(120)
def test_prune_races_triggers_and_deletion(make_engine, store):
    """Callers trigger (mixed) while one thread prunes and another deletes and re-creates a task:
    every acknowledged execution is found unless pruned after it finished; indexes stay exactly
    mark..n-1; nothing runs twice; the files replay clean."""
    rec = Recorder()
    engine = make_engine(store, jobs={"job": rec}, workers=3, counter_actors=2)
    for tid in ("a", "b", "d"):
        engine.create_task(tid, job="job")
    stop = threading.Event()
    acked: dict[str, list[Any]] = {"a": [], "b": []}
    lock = threading.Lock()

    def client(c: int) -> None:
        if c == 0:  # the pruner
            while not stop.is_set():
                for tid, keep in (("a", 5), ("b", 0), ("d", 2)):
                    try:
                        engine.prune(tid, keep_last=keep)
                    except errors.TaskNotFound:
                        assert tid == "d"
            return
        if c == 1:  # deletes and re-creates "d" while it is triggered and pruned
            for _ in range(30):
                engine.delete_task("d")
                engine.create_task("d", job="job")
            stop.set()
            return
        for i in range(120):
            tid = ("a", "b", "d")[(c + i) % 3]
            try:
                ex = engine.trigger(tid, data={"c": c, "i": i}, blocking=i % 4 == 0, timeout=WAIT)
            except errors.TaskNotFound:
                assert tid == "d"
                continue
            if tid != "d":
                with lock:
                    acked[tid].append(ex)

    res = run_threads(8, client)
    stop.set()
    res.raise_unexpected(allowed=(errors.TaskNotFound,))
    assert rec.wait_calls(sum(len(v) for v in acked.values()))
    for tid, exs in acked.items():
        mark = engine.get_task(tid).prune_mark
        listed = {e.id: e for e in assert_gap_free_api(engine, tid)}
        assert len({e.index for e in exs}) == len(exs), f"{tid}: an index was issued twice"
        for ex in exs:
            if ex.index >= mark:
                assert listed[ex.id].index == ex.index
    assert len(rec.ids()) == len(set(rec.ids())), "an execution ran twice"
    for tid in ("a", "b"):  # the last prunes: everything finished by now
        engine.prune(tid, keep_last=0)
        assert engine.list_executions(tid) == []
    make_engine.close(engine)
    tasks = check_db(store, allow_live=False)
    assert tasks["a"].prune_mark == tasks["a"].counter == len(acked["a"])
    replay_ok(store)


@pytest.mark.timeout(90)
def test_the_policy_prunes_in_the_background(make_engine, store):
    job = Held()
    engine = make_engine(store, jobs={"job": job}, workers=2, keep_last=0)
    engine.create_task("t", job="job")
    # index 0 stays RUNNING: the mark cannot move. Its outcome comes through the future, watched
    # from the start: once it finishes it is pruned, and a wait() begun after that finds nothing
    held = engine.trigger_future("t", data={"hold": True}, blocking=True)
    assert job.gate.wait_calls(1)
    for i in range(40):
        engine.trigger("t", data={"i": i}, blocking=True, timeout=WAIT)
    assert engine.get_task("t").prune_mark == 0
    job.gate.release()
    assert held.get(timeout=WAIT).status is ExecutionStatus.SUCCESS
    # its finish scheduled a prune before it answered; get_task comes after it in the same inbox
    assert engine.get_task("t").prune_mark == 41
    assert engine.list_executions("t") == []

    engine.create_task("u", job="job")
    for i in range(30):
        engine.trigger("u", data={"i": i}, blocking=True, timeout=WAIT)
    stored = len(engine.list_executions("u", limit=100))
    assert 1 <= stored <= retention.slack(0)  # pruned every 16 finishes, not at each
    make_engine.close(engine)
    replay_ok(store)


@pytest.mark.timeout(90)
def test_the_policy_sweeps_every_task_at_open(make_engine, store):
    """A database with history from before the policy: each task is pruned to keep_last once."""
    with DbBuilder(store) as b:
        for t in range(3):
            b.task(f"t{t}", job="job")
            b.executions(f"t{t}", *[S] * 40, blocking=False)
    engine = make_engine(store, jobs={"job": Recorder()}, keep_last=10)
    wait_for(lambda: engine.stats().pruned == 90)
    assert [(t.prune_mark, t.execution_count) for t in engine.list_tasks()] == [(30, 40)] * 3
    make_engine.close(engine)
    replay_ok(store)


@pytest.mark.timeout(90)
def test_close_stops_the_sweep_and_the_next_open_finishes_it(make_engine, db_path):
    with DbBuilder(db_path) as b:
        for t in range(150):
            b.task(f"t{t:03}", job="job")
            b.executions(f"t{t:03}", *[S] * 12, blocking=False)
        b.task("small", job="job")
        b.executions("small", S, S, blocking=False)
    engine = make_engine(db_path, jobs={"job": Recorder()}, keep_last=2)
    make_engine.close(engine)  # most likely in the middle of the sweep
    replay_ok(db_path)
    engine = make_engine(db_path, jobs={"job": Recorder()}, keep_last=2)
    wait_for(lambda: all(t.prune_mark == 10 for t in engine.list_tasks(limit=1000) if t.id != "small"))
    assert engine.get_task("small").prune_mark == 0
    make_engine.close(engine)
    replay_ok(db_path)


def test_the_engine_upgrades_a_version_1_database(make_engine, db_path):
    with DbBuilder(db_path) as b:
        b.task("t", job="job")
        b.executions("t", S, S)
        b.put(keys.SCHEMA_KEY, b"1")
    engine = make_engine(db_path, jobs={"job": Recorder()})
    assert engine.prune("t", keep_last=1) == 1
    make_engine.close(engine)
    db = Database.open(db_path)
    try:
        assert db.schema == 2 and db.read_prune_mark("t") == 1
    finally:
        db.close()


# -- a real process killed with SIGKILL while it prunes ------------------------------------------


def _kill_while_pruning(path: str, acks_wanted: int) -> tuple[list[tuple[str, int, bool]], int]:
    child = Child("crash_child.py", path, "t", "prune", "3")
    acks: list[tuple[str, int, bool]] = []
    last_mark = 0
    prunes = 0
    try:
        child.expect("READY")
        while len(acks) < acks_wanted or prunes < 5:
            line = child.readline()
            if line.startswith("ACK "):
                _, eid, idx, _kind, blocking = line.split(" ")
                acks.append((eid, int(idx), blocking == "1"))
            elif line.startswith("PRUNED "):
                prunes += 1
                last_mark = max(last_mark, int(line.split(" ")[2]))
    finally:
        child.kill9()
    assert child.proc.returncode == -9
    return acks, last_mark


@pytest.mark.timeout(120)
def test_sigkill_mid_prune_keeps_the_mark_and_the_indexes(make_engine, db_path):
    """Five lives of a child that triggers and prunes (in steps of 5, and by its keep_last policy)
    on one database, each ended by SIGKILL: after each, the files hold exactly mark..counter-1,
    every acknowledged prune and every acknowledged execution at or above the mark."""
    acked: dict[str, int] = {}
    blocking_ids: set[str] = set()
    last_mark = 0
    for acks_wanted in (37, 150, 23, 80, 120):
        acks, mark = _kill_while_pruning(db_path, acks_wanted)
        last_mark = max(last_mark, mark)
        for eid, idx, blocking in acks:
            assert acked.setdefault(eid, idx) == idx
            if blocking:
                blocking_ids.add(eid)
        at_kill = check_db(db_path)["t"]  # records exactly mark..counter-1, every key consistent
        replay_ok(db_path)
        assert at_kill.prune_mark >= last_mark, "an acknowledged prune was lost"
        for eid, idx in acked.items():
            if idx >= at_kill.prune_mark:
                assert at_kill.records[idx].id == eid, f"acknowledged execution at {idx} lost"
                if eid in blocking_ids:
                    assert at_kill.records[idx].status in FINISHED
            else:
                assert eid not in at_kill.ids  # pruned: gone with its id key
        assert len(set(acked.values())) == len(acked), "an index was issued twice across the lives"
        assert at_kill.counter >= max(acked.values()) + 1

    n = check_db(db_path)["t"].counter
    rec = Recorder()
    engine = make_engine(db_path, jobs={"crashjob": rec}, workers=2)
    assert engine.trigger("t", data={"kind": "fast"}, blocking=True, timeout=WAIT).index == n
    engine.prune("t", keep_last=0)
    assert_gap_free_api(engine, "t")
    make_engine.close(engine)
    replay_ok(db_path)


@pytest.mark.timeout(60)
def test_a_prune_in_steps_stops_at_a_deletion_and_never_touches_the_task_created_after_it(
    make_engine, db_path, monkeypatch
):
    """A prune goes in steps toward a target fixed for the task it started on; if that task is
    deleted and one with the same id created between two steps, the new task (which starts again
    at index 0) is not the one asked about: none of its executions may be pruned."""
    with DbBuilder(db_path) as b:
        b.task("t", job="job")
        b.executions("t", *[S] * 5)
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 1)  # one execution per step
    engine = make_engine(db_path, jobs={"job": Recorder()})
    step = engine._prune_step
    steps = []

    def deleting_after_the_first_step(*args: Any) -> Any:
        done = step(*args)
        steps.append(done)
        if len(steps) == 1:
            engine.delete_task("t")
            engine.create_task("t", job="job")
            for _ in range(3):
                engine.trigger("t", blocking=True, timeout=WAIT)
        return done

    monkeypatch.setattr(engine, "_prune_step", deleting_after_the_first_step)
    assert engine.prune("t", keep_last=0) == 1  # the one step made before the deletion
    task = engine.get_task("t")
    assert (task.prune_mark, task.execution_count) == (0, 3)
    assert [e.index for e in assert_gap_free_api(engine, "t")] == [0, 1, 2]
    make_engine.close(engine)
    replay_ok(db_path)


class _Finished(Hooks):
    def __init__(self) -> None:
        self.event = threading.Event()

    def on_finish(self, execution: Any) -> None:
        self.event.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["wait", "await_execution"])
def test_a_waiter_whose_execution_finishes_and_is_pruned_before_it_reads_gets_the_outcome(
    make_engine, db_path, monkeypatch, how
):
    """wait() watches the execution, then reads it. If it finishes (published to the watcher) and
    is pruned (the keep_last policy) between the two, the waiter has its outcome in hand: it must
    return it, not ExecutionNotFound."""
    gate = Gate()
    finished = _Finished()
    engine = make_engine(db_path, jobs={"job": gate}, hooks=[finished])
    engine.create_task("t", job="job")
    ex = engine.trigger("t")
    stored = engine._stored
    calls = []

    def finished_and_pruned_first(task_id: str, execution_id: str) -> Any:
        calls.append(execution_id)
        if len(calls) == 1:
            gate.release()
            assert finished.event.wait(WAIT)
            assert engine.prune("t", keep_last=0) == 1  # answered after the finish's publication
        return stored(task_id, execution_id)

    monkeypatch.setattr(engine, "_stored", finished_and_pruned_first)
    if how == "wait":
        done = engine.wait("t", ex.id, timeout=WAIT)
    else:
        done = asyncio.run(engine.await_execution("t", ex.id, timeout=WAIT))
    assert (done.id, done.index, done.status) == (ex.id, 0, ExecutionStatus.SUCCESS)
    with pytest.raises(errors.ExecutionNotFound):  # a later read: pruned
        engine.wait("t", ex.id, timeout=WAIT)
