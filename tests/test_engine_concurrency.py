"""Unique, gap-free and ordered under concurrency; max_executions and idempotency raced by many
callers; no execution run twice, no undercount, queue order past 9, and never [0, 0, 1]."""

from __future__ import annotations

import collections
import threading
from typing import Any

import pykka
import pytest

from engine_helpers import (
    WAIT,
    Gate,
    Recorder,
    assert_gap_free_api,
    assert_indexes_exact,
    check_db,
    run_threads,
)
from taskengine import ExecutionStatus, TaskStatus, errors

S = ExecutionStatus


def finish_all(engine: Any, tid: str, executions: list[Any]) -> list[Any]:
    """engine.wait on every execution; each keeps its index and succeeds."""
    done = []
    for ex in executions:
        fin = engine.wait(tid, ex.id, timeout=WAIT)
        assert fin.id == ex.id
        assert fin.index == ex.index, f"{ex.id}: index {ex.index} at trigger, {fin.index} when finished"
        assert fin.status == S.SUCCESS, (fin.status, fin.error)
        done.append(fin)
    return done


def verify_closed_db(make_engine: Any, engine: Any, path: str, tid: str, executions: list[Any]) -> None:
    """Close the engine, then check the database from disk: invariants, and every execution a
    caller was given sits at its index."""
    make_engine.close(engine)
    tasks = check_db(path, allow_live=False)
    t = tasks[tid]
    assert t.counter == len(executions)
    on_disk = t.by_id()
    for ex in executions:
        assert ex.id in on_disk, f"acknowledged execution {ex.id} is not on disk"
        assert on_disk[ex.id].index == ex.index


def assert_each_ran_once(rec: Recorder, executions: list[Any]) -> None:
    counts = collections.Counter(rec.ids())
    twice = [eid for eid, c in counts.items() if c > 1]
    assert not twice, f"executions run more than once: {twice[:5]}"
    by_id = {eid: idx for eid, idx, _ in rec.calls}
    for ex in executions:
        assert by_id.get(ex.id) == ex.index, f"{ex.id}: job saw ctx.index {by_id.get(ex.id)}, answer {ex.index}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("write_path", ["c-api", "plyvel"])
def test_mixed_triggers_from_32_threads_are_unique_and_gap_free(make_engine, db_path, monkeypatch, write_path):
    # both ways of building write batches (storage/capi.py, or plyvel's where capi cannot be used)
    if write_path == "plyvel":
        monkeypatch.setenv("TASKENGINE_PLAIN_BATCH", "1")
    else:
        monkeypatch.delenv("TASKENGINE_PLAIN_BATCH", raising=False)
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec}, workers=4)
    engine.create_task("t", job="rec")
    threads, per = 32, 8

    def client(i: int) -> list[Any]:
        got = []
        for k in range(per):
            blocking = (i + k) % 2 == 0
            ex = engine.trigger("t", data={"c": i, "k": k}, blocking=blocking, timeout=WAIT)
            if blocking:
                assert ex.status == S.SUCCESS, (ex.status, ex.error)
            else:
                assert ex.status == S.PENDING
            assert isinstance(ex.index, int)
            got.append(ex)
        return got

    out = run_threads(threads, client)
    out.raise_unexpected()
    n = threads * per
    executions = [ex for lst in out.results for ex in lst]
    assert_indexes_exact([ex.index for ex in executions], n)
    # §3.4: each caller's own triggers came back in increasing order
    for lst in out.results:
        idx = [ex.index for ex in lst]
        assert idx == sorted(idx) and len(set(idx)) == len(idx), f"one caller got {idx}"
    finish_all(engine, "t", [ex for ex in executions if not ex.blocking])
    assert engine.next_index("t") == n
    task = engine.get_task("t")
    assert task.execution_count == n  # no undercount
    assert_gap_free_api(engine, "t", executions)
    assert_each_ran_once(rec, executions)
    verify_closed_db(make_engine, engine, db_path, "t", executions)


class Client(pykka.ThreadingActor):
    """A client actor calling the engine from its own thread, as the stress tool's clients do."""

    def __init__(self, engine: Any, task_id: str, n: int, seed: int) -> None:
        super().__init__()
        self.engine = engine
        self.task_id = task_id
        self.n = n
        self.seed = seed

    def fire(self) -> list[Any]:
        """Fire all triggers as futures first, then collect them (concurrent within the actor)."""
        futures = [
            self.engine.trigger_future(self.task_id, {"a": self.seed, "k": k}, blocking=(self.seed + k) % 3 == 0)
            for k in range(self.n)
        ]
        return [f.get(timeout=WAIT) for f in futures]

    def in_a_row(self) -> list[Any]:
        """Each trigger's answer awaited before the next: §3.4 applies."""
        out = []
        for k in range(self.n):
            fut = self.engine.trigger_future(self.task_id, {"r": self.seed, "k": k}, blocking=(self.seed + k) % 2 == 0)
            out.append(fut.get(timeout=WAIT))
        return out


@pytest.mark.timeout(90)
def test_60_client_actors_trigger_futures_unique_and_gap_free(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=4)
    engine.create_task("t", job="rec")
    n_actors, per = 60, 6
    proxies = [make_engine.track(Client.start(engine, "t", per, i)).proxy() for i in range(n_actors)]
    futures = [p.fire() if i % 2 == 0 else p.in_a_row() for i, p in enumerate(proxies)]
    results = pykka.get_all(futures, timeout=60)
    executions = [ex for lst in results for ex in lst]
    n = n_actors * per
    assert_indexes_exact([ex.index for ex in executions], n)
    for ex in executions:
        if ex.blocking:
            assert ex.status == S.SUCCESS, (ex.status, ex.error)
        else:
            assert ex.status == S.PENDING
    for i, lst in enumerate(results):
        if i % 2 == 1:
            idx = [ex.index for ex in lst]
            assert idx == sorted(idx), f"actor {i} triggering in a row got {idx}"
    finish_all(engine, "t", [ex for ex in executions if not ex.blocking])
    assert engine.next_index("t") == n
    assert_gap_free_api(engine, "t", executions)
    assert_each_ran_once(rec, executions)
    verify_closed_db(make_engine, engine, store, "t", executions)


def test_original_bug_0_0_1_sequential_mixed_triggers(make_engine, store):
    """The original's first historic bug: non-blocking then blocking triggers gave [0, 0, 1]."""
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=2)
    engine.create_task("t", job="rec")
    a = engine.trigger("t", blocking=False)
    b = engine.trigger("t", blocking=True, timeout=WAIT)
    c = engine.trigger("t", blocking=True, timeout=WAIT)
    d = engine.trigger("t", blocking=False)
    e = engine.trigger("t", blocking=True, timeout=WAIT)
    got = [x.index for x in (a, b, c, d, e)]
    assert got == [0, 1, 2, 3, 4], f"indexes {got} (the original gave [0, 0, 1, ...])"
    fa, fd = engine.wait("t", a.id, timeout=WAIT), engine.wait("t", d.id, timeout=WAIT)
    assert (fa.index, fd.index) == (0, 3)
    assert_gap_free_api(engine, "t", [a, b, c, d, e])
    assert_each_ran_once(rec, [a, b, c, d, e])
    verify_closed_db(make_engine, engine, store, "t", [a, b, c, d, e])


def test_original_bug_0_0_1_blocking_queued_behind_pending_nonblocking(make_engine, store):
    """Non-blocking executions hold pre-assigned indexes while a blocking one is queued behind
    them: the blocking one must not take an index a pending one already has, and the pending
    ones must finish with the index they were given (the original's second historic bug)."""
    gate = Gate()
    engine = make_engine(store, jobs={"gate": gate}, workers=2)
    engine.create_task("t", job="gate")
    x = engine.trigger("t", blocking=False)
    y = engine.trigger("t", blocking=False)
    z = engine.trigger("t", blocking=False)  # PENDING: both workers are held by x and y
    assert gate.wait_calls(2)
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(engine.trigger("t", blocking=True, timeout=WAIT)))
    t.start()
    assert [x.index, y.index, z.index] == [0, 1, 2]
    assert engine.get_execution("t", z.id).index == 2
    gate.release()
    t.join(WAIT)
    assert box and box[0].status == S.SUCCESS
    assert box[0].index == 3
    for ex in (x, y, z):
        fin = engine.wait("t", ex.id, timeout=WAIT)
        assert fin.index == ex.index and fin.status == S.SUCCESS
        assert gate.index_of(ex.id) == ex.index
    verify_closed_db(make_engine, engine, store, "t", [x, y, z, box[0]])


@pytest.mark.parametrize("pattern", ["blocking", "nonblocking", "mixed"])
def test_one_caller_in_a_row_gets_increasing_indexes_despite_other_callers(make_engine, store, pattern):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=3)
    engine.create_task("t", job="rec")
    stop = threading.Event()
    noise_errors: list[BaseException] = []

    def noise(i: int) -> None:
        k = 0
        try:
            while not stop.is_set() and k < 400:
                engine.trigger("t", blocking=(k % 2 == 0), timeout=WAIT)
                k += 1
        except BaseException as e:  # noqa: BLE001
            noise_errors.append(e)

    noisers = [threading.Thread(target=noise, args=(i,), daemon=True) for i in range(6)]
    for th in noisers:
        th.start()
    mine = []
    for k in range(30):
        blocking = {"blocking": True, "nonblocking": False, "mixed": k % 3 != 1}[pattern]
        mine.append(engine.trigger("t", data={"me": k}, blocking=blocking, timeout=WAIT))
    stop.set()
    for th in noisers:
        th.join(WAIT)
        assert not th.is_alive()
    assert not noise_errors, noise_errors[:3]
    idx = [ex.index for ex in mine]
    assert all(a < b for a, b in zip(idx, idx[1:], strict=False)), f"one caller's indexes are not increasing: {idx}"
    for ex in mine:
        assert engine.wait("t", ex.id, timeout=WAIT).index == ex.index
    assert_gap_free_api(engine, "t", mine)
    make_engine.close(engine)
    check_db(store)


@pytest.mark.timeout(90)
def test_max_executions_raced_by_40_callers(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=4)
    engine.create_task("t", job="rec", max_executions=10)

    def client(i: int) -> Any:
        return engine.trigger("t", data={"i": i}, blocking=(i % 2 == 0), timeout=WAIT)

    out = run_threads(40, client)
    out.raise_unexpected(allowed=(errors.TaskNotRunnable,))
    ok = [r for r, e in zip(out.results, out.errors, strict=True) if e is None]
    rejected = [e for e in out.errors if e is not None]
    assert len(ok) == 10, f"{len(ok)} triggers accepted with max_executions=10"
    assert len(rejected) == 30
    assert_indexes_exact([ex.index for ex in ok], 10)
    finish_all(engine, "t", [ex for ex in ok if not ex.blocking])
    task = engine.get_task("t")
    assert task.status == TaskStatus.COMPLETED
    assert task.execution_count == 10
    assert engine.next_index("t") == 10
    for blocking in (False, True):
        with pytest.raises(errors.TaskNotRunnable):
            engine.trigger("t", blocking=blocking, timeout=WAIT)
        assert engine.next_index("t") == 10  # a rejected call consumes no index
    with pytest.raises(errors.TaskNotRunnable):
        engine.trigger_future("t", blocking=False).get(timeout=WAIT)
    assert rec.count() == 10
    assert_gap_free_api(engine, "t", ok)
    verify_closed_db(make_engine, engine, store, "t", ok)


def test_max_executions_sequential_boundary(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec})
    engine.create_task("t", job="rec", max_executions=3)
    assert engine.get_task("t").status == TaskStatus.ACTIVE
    got = [engine.trigger("t", blocking=k == 1, timeout=WAIT).index for k in range(3)]
    assert got == [0, 1, 2]
    assert engine.get_task("t").status == TaskStatus.COMPLETED
    with pytest.raises(errors.TaskNotRunnable):
        engine.trigger("t")
    assert engine.next_index("t") == 3
    make_engine.close(engine)
    engine = make_engine(store, jobs={"rec": rec})
    assert engine.get_task("t").status == TaskStatus.COMPLETED  # persisted across reopen
    with pytest.raises(errors.TaskNotRunnable):
        engine.trigger("t", blocking=True, timeout=WAIT)
    assert engine.next_index("t") == 3


def test_idempotency_key_raced_by_24_threads_consumes_one_index(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=4)
    engine.create_task("t", job="rec")

    def client(i: int) -> Any:
        return engine.trigger("t", data={"i": i}, idempotency_key="same", blocking=False)

    out = run_threads(24, client)
    out.raise_unexpected()
    ids = {ex.id for ex in out.results}
    assert len(ids) == 1, f"one idempotency key gave {len(ids)} executions"
    assert {ex.index for ex in out.results} == {0}
    assert engine.next_index("t") == 1

    def mixed(i: int) -> Any:
        return engine.trigger("t", idempotency_key="mixed", blocking=(i % 2 == 0), timeout=WAIT)

    out2 = run_threads(24, mixed)
    out2.raise_unexpected()
    assert len({ex.id for ex in out2.results}) == 1
    # a non-blocking repeat of a blocking execution still queued may see index None (api.md)
    assert {ex.index for ex in out2.results} - {None} == {1}
    assert engine.wait("t", out2.results[0].id, timeout=WAIT).index == 1
    assert engine.next_index("t") == 2
    first = out.results[0]
    fin = engine.wait("t", first.id, timeout=WAIT)
    assert fin.index == 0 and fin.status == S.SUCCESS
    again = engine.trigger("t", idempotency_key="same", blocking=True, timeout=WAIT)
    assert (again.id, again.index) == (first.id, 0)
    assert engine.next_index("t") == 2
    assert collections.Counter(rec.ids()) == {first.id: 1, out2.results[0].id: 1}
    make_engine.close(engine)
    tasks = check_db(store, allow_live=False)
    assert tasks["t"].counter == 2
    assert tasks["t"].idempotency == {"same": first.id, "mixed": out2.results[0].id}


def test_queue_runs_in_index_order_past_9(make_engine, store):
    """Not job ids ordered as strings (10 before 9). One worker, so the
    order of runs is observable: it must be index order."""
    order: list[int] = []
    hold = threading.Event()
    started = threading.Event()

    def job(ctx: Any) -> Any:
        if ctx.index == 0:
            started.set()
            assert hold.wait(WAIT)
        order.append(ctx.index)
        return ctx.index

    engine = make_engine(store, jobs={"j": job}, workers=1)
    engine.create_task("t", job="j")
    first = engine.trigger("t")
    assert started.wait(WAIT)
    rest = [engine.trigger("t") for _ in range(14)]
    hold.set()
    for ex in [first, *rest]:
        assert engine.wait("t", ex.id, timeout=WAIT).status == S.SUCCESS
    assert order == list(range(15))


def test_nonblocking_futures_fired_in_a_row_get_increasing_indexes(make_engine, store):
    """§3.4 for a caller that does not wait between triggers: futures fired in a row by one
    caller, while other callers trigger the same task, resolve to increasing indexes."""
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=2)
    engine.create_task("t", job="rec")

    def caller(i: int) -> list[int]:
        futures = [engine.trigger_future("t", {"i": i, "k": k}) for k in range(40)]
        return [f.get(timeout=WAIT).index for f in futures]

    out = run_threads(6, caller)
    out.raise_unexpected()
    for idx in out.results:
        assert idx == sorted(idx) and len(set(idx)) == len(idx), f"one caller's futures resolved to {idx}"
    assert_indexes_exact([i for idx in out.results for i in idx], 240)


def test_blocking_futures_fired_in_a_row_get_increasing_indexes(make_engine, store):
    """§3.4 for blocking futures one caller fires without waiting in between."""
    e = make_engine(store, jobs={"job": lambda ctx: ctx.index}, workers=4)
    e.create_task("t", job="job")
    for _ in range(5):
        futures = [e.trigger_future("t", i, blocking=True) for i in range(16)]
        indexes = [f.get(timeout=WAIT).index for f in futures]
        assert indexes == sorted(indexes), indexes
