"""Many threads, many tasks (sharing counter actors), random mixed operations including
deletions and idempotent repeats; afterwards the guarantees hold from the API and from disk.
Also: close() while callers are triggering loses no acknowledged execution."""

from __future__ import annotations

import collections
import random
import threading
from typing import Any

import pytest

from engine_helpers import WAIT, Recorder, assert_gap_free_api, check_db, run_threads
from taskengine import ExecutionStatus, errors

S = ExecutionStatus
TASKS = [f"task-{i}" for i in range(8)] + ["a", "a:", "a:b", "a/b"]


def _job(ctx: Any) -> Any:
    if ctx.data and ctx.data.get("fail"):
        raise ValueError(f"failing on purpose {ctx.index}")
    return ctx.index


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_actors,sync", [(8, True), (1, True), (3, False)])
def test_random_mixed_operations_on_many_tasks(make_engine, db_path, counter_actors, sync):
    rec = Recorder(result=_job)
    engine = make_engine(db_path, jobs={"j": rec}, workers=3, counter_actors=counter_actors, sync=sync)
    for tid in TASKS:
        engine.create_task(tid, job="j")

    def client(i: int) -> list[Any]:
        rng = random.Random(1000 + i)
        got: list[Any] = []
        for _ in range(150):
            tid = rng.choice(TASKS)
            op = rng.random()
            try:
                if op < 0.70:
                    blocking = rng.random() < 0.4
                    key = f"key-{rng.randrange(5)}" if rng.random() < 0.15 else None
                    ex = engine.trigger(tid, data={"fail": rng.random() < 0.1}, blocking=blocking,
                                        timeout=WAIT, idempotency_key=key)
                    got.append(ex)
                elif op < 0.85 and got:
                    ex = rng.choice(got)
                    seen = engine.get_execution(ex.task_id, ex.id)
                    assert seen.id == ex.id
                    if ex.index is not None:
                        assert seen.index == ex.index, f"{ex.id}: index {ex.index}, read {seen.index}"
                elif op < 0.97:
                    engine.list_executions(tid, after=rng.randrange(5), limit=rng.randrange(1, 20))
                    engine.next_index(tid)
                else:
                    engine.delete_task(tid)
                    engine.create_task(tid, job="j")
            except (errors.TaskNotFound, errors.ExecutionNotFound, errors.TaskAlreadyExists):
                pass  # another client deleted (and maybe re-created) the task meanwhile
        return got

    out = run_threads(24, client, timeout=100)
    out.raise_unexpected()
    answered: dict[str, set[int]] = collections.defaultdict(set)  # id -> every index answered for it
    for lst in out.results:
        for ex in lst:
            answered[ex.id].update({ex.index} - {None})
    for tid in TASKS:
        listed = assert_gap_free_api(engine, tid)
        for e in listed:
            fin = engine.wait(tid, e.id, timeout=WAIT)
            assert fin.index == e.index and fin.status in (S.SUCCESS, S.FAILED)
            if fin.status == S.FAILED:
                assert fin.error.startswith("ValueError"), fin.error
            assert e.id in answered, f"{tid}: execution {e.id} never returned to a caller"
            assert answered[e.id] <= {e.index}, f"{e.id}: answered indexes {answered[e.id]}, stored {e.index}"
    counts = collections.Counter(rec.ids())
    assert not [k for k, c in counts.items() if c > 1], "an execution ran twice"
    make_engine.close(engine)
    disk = check_db(db_path, allow_live=False)
    assert set(disk) == set(TASKS)


@pytest.mark.timeout(90)
def test_close_while_callers_trigger_loses_no_acknowledged_execution(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"j": rec}, workers=2)
    engine.create_task("t", job="j")
    acked: dict[str, Any] = {}
    lock = threading.Lock()
    bad: list[BaseException] = []

    def client(i: int) -> None:
        k = 0
        while True:
            try:
                ex = engine.trigger("t", data={"c": i, "k": k}, blocking=(i + k) % 3 == 0, timeout=WAIT)
            except errors.EngineClosed:
                return
            except BaseException as e:  # noqa: BLE001
                bad.append(e)
                return
            with lock:
                acked[ex.id] = ex
            k += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    assert rec.wait_calls(150)
    make_engine.close(engine)
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a caller hangs after close()"
    assert not bad, bad[:3]
    at_close = check_db(db_path, allow_live=True)["t"]
    by_id = at_close.by_id()
    for eid, ex in acked.items():
        assert eid in by_id, f"acknowledged execution {eid} (index {ex.index}) lost at close"
        assert by_id[eid].index == ex.index
        if ex.blocking:
            assert by_id[eid].status == S.SUCCESS
    engine = make_engine(db_path, jobs={"j": rec}, workers=2)
    listed = assert_gap_free_api(engine, "t")
    for e in listed:
        assert engine.wait("t", e.id, timeout=WAIT).status in (S.SUCCESS, S.FAILED)
    make_engine.close(engine)
    check_db(db_path, allow_live=False)
