"""Clean deletion, and task ids that share prefixes (``a``, ``a:b``) kept apart."""

from __future__ import annotations

import collections
import threading
from typing import Any

import pytest

from engine_helpers import (
    WAIT,
    Gate,
    Recorder,
    assert_gap_free_api,
    check_db,
    run_threads,
    task_keys_on_disk,
)
from taskengine import ExecutionStatus, errors

S = ExecutionStatus


def assert_cancelled_by_deletion(ex: Any) -> None:
    assert ex.status == S.CANCELLED, (ex.status, ex.error)
    assert "delet" in (ex.error or "").lower(), ex.error


def test_delete_cancels_pending_running_completion_cannot_resurrect(make_engine, store):
    gate = Gate()
    rec = Recorder()
    engine = make_engine(store, jobs={"gate": gate, "rec": rec}, workers=1)
    engine.create_task("t", job="gate", config={"v": 1})
    running = engine.trigger("t")
    assert gate.wait_calls(1)
    pending = [engine.trigger("t", data={"p": k}) for k in range(4)]
    blocking_fut = engine.trigger_future("t", {"b": 1}, blocking=True)  # queued, its caller waits

    waited: dict[str, Any] = {}
    started = threading.Barrier(3)

    def waiter(eid: str) -> None:
        started.wait(WAIT)
        try:
            waited[eid] = engine.wait("t", eid, timeout=WAIT)
        except errors.TaskNotFound as e:  # if the wait only began after the delete
            waited[eid] = e

    ws = [threading.Thread(target=waiter, args=(eid,), daemon=True) for eid in (running.id, pending[1].id)]
    for w in ws:
        w.start()
    started.wait(WAIT)
    engine.delete_task("t")

    assert_cancelled_by_deletion(blocking_fut.get(timeout=WAIT))
    for w in ws:
        w.join(WAIT)
        assert not w.is_alive()
    for eid, res in waited.items():
        if not isinstance(res, errors.TaskNotFound):
            assert res.id == eid
            assert_cancelled_by_deletion(res)
    for call in (
        lambda: engine.get_task("t"),
        lambda: engine.next_index("t"),
        lambda: engine.get_execution("t", pending[0].id),
        lambda: engine.list_executions("t"),
        lambda: engine.wait("t", pending[0].id, timeout=1),
        lambda: engine.trigger("t"),
        lambda: engine.trigger("t", blocking=True, timeout=1),
        lambda: engine.delete_task("t"),
    ):
        with pytest.raises(errors.TaskNotFound):
            call()

    # let the running job finish; the one worker then passes the cancelled queue
    gate.release()
    assert gate.wait_returned(1)
    engine.create_task("other", job="rec")
    assert engine.trigger("other", blocking=True, timeout=WAIT).status == S.SUCCESS
    assert gate.count() == 1, "a cancelled pending execution of a deleted task ran"
    with pytest.raises(errors.TaskNotFound):
        engine.get_task("t")
    make_engine.close(engine)
    assert task_keys_on_disk(store, "t") == [], "deleted task left keys (or its completion wrote it back)"
    check_db(store, allow_live=False)

    engine = make_engine(store, jobs={"gate": gate, "rec": rec})
    with pytest.raises(errors.TaskNotFound):
        engine.get_task("t")
    task = engine.create_task("t", job="rec")
    assert task.execution_count == 0 and task.config is None
    assert engine.next_index("t") == 0
    with pytest.raises(errors.ExecutionNotFound):
        engine.get_execution("t", running.id)
    again = engine.trigger("t", blocking=True, timeout=WAIT)
    assert again.index == 0 and again.status == S.SUCCESS
    assert gate.count() == 1
    make_engine.close(engine)
    t = check_db(store, allow_live=False)["t"]
    assert t.counter == 1 and list(t.by_id()) == [again.id]


def test_recreated_task_starts_at_zero_in_the_same_engine(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    old = [engine.trigger("t", blocking=True, timeout=WAIT, idempotency_key=f"k{k}") for k in range(5)]
    engine.delete_task("t")
    engine.create_task("t", job="rec")
    assert engine.next_index("t") == 0
    new = engine.trigger("t", idempotency_key="k0")  # the old task's idempotency keys are gone
    assert new.id != old[0].id and new.index == 0
    assert engine.wait("t", new.id, timeout=WAIT).status == S.SUCCESS
    assert [e.id for e in engine.list_executions("t")] == [new.id]
    make_engine.close(engine)
    t = check_db(store, allow_live=False)["t"]
    assert t.counter == 1 and t.idempotency == {"k0": new.id}


@pytest.mark.timeout(90)
def test_delete_racing_concurrent_triggers_leaves_no_orphans(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=3)
    engine.create_task("t", job="rec")
    n_clients, per = 16, 30
    deletions = 3

    def work(i: int) -> Any:
        if i == n_clients:  # the deleter
            for d in range(deletions):
                assert rec.wait_calls(40 * (d + 1))
                engine.delete_task("t")
                engine.create_task("t", job="rec")
            return None
        got = []
        for k in range(per):
            try:
                got.append(engine.trigger("t", data={"c": i, "k": k}, blocking=(i + k) % 2 == 0, timeout=WAIT))
            except errors.TaskNotFound:
                got.append(None)
        return got

    out = run_threads(n_clients + 1, work)
    out.raise_unexpected()
    returned = {ex.id: ex for lst in out.results[:n_clients] for ex in lst if ex is not None}
    for ex in returned.values():
        if ex.blocking:
            assert ex.status in (S.SUCCESS, S.CANCELLED), (ex.status, ex.error)
            if ex.status == S.CANCELLED:
                assert_cancelled_by_deletion(ex)
        else:
            assert ex.status == S.PENDING and isinstance(ex.index, int)
    listed = assert_gap_free_api(engine, "t")
    for e in listed:
        assert e.id in returned, f"execution {e.id} at {e.index} was never returned to a caller"
        assert returned[e.id].index == e.index
        assert engine.wait("t", e.id, timeout=WAIT).index == e.index
    counts = collections.Counter(rec.ids())
    assert max(counts.values()) == 1, "an execution ran twice"
    make_engine.close(engine)
    disk = check_db(store, allow_live=False)
    assert set(disk) == {"t"}, f"orphan task key ranges: {set(disk) - {'t'}}"
    assert {r.id for r in disk["t"].records.values()} == {e.id for e in listed}


PREFIX_IDS = ["a", "a:b", "a:", "a/b", "a:b:c", "ab", "a b", "ä", "日本:タスク", "a" * 256, ":", "/"]


def test_task_ids_sharing_prefixes_never_see_each_other(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=2)
    mine: dict[str, list[Any]] = {}
    for n, tid in enumerate(PREFIX_IDS):
        assert engine.create_task(tid, job="rec", config={"n": n}).id == tid
    for n, tid in enumerate(PREFIX_IDS):
        mine[tid] = [engine.trigger(tid, data={"n": n}, blocking=k % 2 == 1, timeout=WAIT) for k in range(n + 1)]
        mine[tid].append(engine.trigger(tid, idempotency_key="shared-key"))
    for n, tid in enumerate(PREFIX_IDS):
        assert engine.next_index(tid) == n + 2
        assert [ex.index for ex in mine[tid]] == list(range(n + 2))
        listed = assert_gap_free_api(engine, tid, mine[tid])
        assert {e.id for e in listed} == {ex.id for ex in mine[tid]}
        assert engine.get_task(tid).config == {"n": n}
    # one task never resolves another's execution id
    for tid in ("a", "a:", "a:b"):
        for other in ("a", "a:", "a:b", "ab"):
            if other != tid:
                with pytest.raises(errors.ExecutionNotFound):
                    engine.get_execution(tid, mine[other][0].id)
    keyed = {mine[tid][-1].id for tid in PREFIX_IDS}
    assert len(keyed) == len(PREFIX_IDS), "an idempotency key leaked between tasks"
    for tid in PREFIX_IDS:
        for ex in mine[tid]:
            engine.wait(tid, ex.id, timeout=WAIT)
    engine.delete_task("a")
    engine.delete_task("a:")
    for gone in ("a", "a:"):
        with pytest.raises(errors.TaskNotFound):
            engine.get_task(gone)
    for n, tid in enumerate(PREFIX_IDS):
        if tid in ("a", "a:"):
            continue
        assert engine.next_index(tid) == n + 2
        assert [e.id for e in engine.list_executions(tid)] == [ex.id for ex in mine[tid]]
    engine.create_task("a", job="rec")
    assert engine.trigger("a", blocking=True, timeout=WAIT).index == 0
    assert engine.next_index("a:b") == PREFIX_IDS.index("a:b") + 2
    make_engine.close(engine)
    disk = check_db(store, allow_live=False)
    assert set(disk) == set(PREFIX_IDS) - {"a:"}
    for n, tid in enumerate(PREFIX_IDS):
        if tid not in ("a", "a:"):
            assert disk[tid].counter == n + 2
    assert disk["a"].counter == 1


def test_old_incarnation_work_never_touches_a_recreated_task(make_engine, store):
    """Delete and re-create while the old task has a running and queued executions: the old
    queued ones never run, the old running one's completion writes nothing into the new task."""
    gate = Gate(result="old")
    rec = Recorder(result=lambda ctx: "new")
    engine = make_engine(store, jobs={"gate": gate, "rec": rec}, workers=1)
    old_task = engine.create_task("t", job="gate")
    old_running = engine.trigger("t")
    assert gate.wait_calls(1)
    old_queued = [engine.trigger("t") for _ in range(3)]
    engine.delete_task("t")
    new_task = engine.create_task("t", job="rec")
    assert new_task.incarnation != old_task.incarnation
    new = engine.trigger("t")  # index 0 again, queued behind the old running job
    assert new.index == 0
    gate.release()
    fin = engine.wait("t", new.id, timeout=WAIT)
    assert (fin.index, fin.status, fin.result) == (0, S.SUCCESS, "new")
    assert gate.wait_returned(1)
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 1
    assert gate.count() == 1, "a queued execution of the deleted task ran"
    assert sorted(rec.ids()) == sorted(e.id for e in engine.list_executions("t"))
    for old in [old_running, *old_queued]:
        with pytest.raises(errors.ExecutionNotFound):
            engine.get_execution("t", old.id)
    make_engine.close(engine)
    t = check_db(store, allow_live=False)["t"]
    assert t.counter == 2
    assert t.records[0].id == new.id and t.records[0].result == "new"
    assert not {old_running.id, *(e.id for e in old_queued)} & set(t.ids)


def test_recovered_pending_of_a_task_deleted_before_its_job_is_registered_never_runs(make_engine, store):
    gate = Gate()
    engine = make_engine(store, jobs={"late": gate}, workers=1)
    engine.create_task("t", job="late")
    engine.trigger("t")
    assert gate.wait_calls(1)
    queued = [engine.trigger("t") for _ in range(3)]
    engine.close(timeout=0.2)
    gate.release()
    engine = make_engine(store, jobs={})
    for ex in queued:
        assert engine.get_execution("t", ex.id).status == S.PENDING
    engine.delete_task("t")
    rec = Recorder()
    engine.register_job("late", rec)
    engine.create_task("other", job="late")
    assert engine.trigger("other", blocking=True, timeout=WAIT).status == S.SUCCESS
    assert rec.ids() == [engine.list_executions("other")[0].id], "work of a deleted task ran"
    make_engine.close(engine)
    assert task_keys_on_disk(store, "t") == []
    check_db(store, allow_live=False)


def test_delete_with_idempotency_keys_racing(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec}, workers=2)
    engine.create_task("t", job="rec")

    def work(i: int) -> Any:
        if i == 12:
            assert rec.wait_calls(2)  # only 4 keys: at most 4 executions per incarnation
            engine.delete_task("t")
            engine.create_task("t", job="rec")
            return None
        got = []
        for k in range(20):
            try:
                got.append(engine.trigger("t", idempotency_key=f"k{k % 4}", blocking=(i % 2 == 0), timeout=WAIT))
            except errors.TaskNotFound:
                pass
        return got

    out = run_threads(13, work)
    out.raise_unexpected()
    listed = assert_gap_free_api(engine, "t")
    assert len(listed) <= 4
    keys_seen = {e.idempotency_key for e in listed}
    assert len(keys_seen) == len(listed), "one idempotency key holds two executions of one incarnation"
    for e in listed:
        engine.wait("t", e.id, timeout=WAIT)
    make_engine.close(engine)
    t = check_db(store, allow_live=False)["t"]
    assert set(t.idempotency.values()) == {e.id for e in listed}


@pytest.mark.timeout(60)
def test_blocking_idempotent_repeat_racing_delete_gets_cancelled(make_engine, fresh_path):
    """A blocking repeat of an idempotency key follows the first execution; when a delete (and
    re-create) cancels that execution, the repeat's caller is a waiter like any other: it gets
    the CANCELLED execution (or TaskNotFound if its call reached the engine after the delete),
    never an ExecutionNotFound for an execution it did not name. Racy by nature: 15 rounds."""
    outcomes: collections.Counter[str] = collections.Counter()
    for round_ in range(15):
        gate = Gate()
        engine = make_engine(fresh_path(f"db{round_}"), jobs={"gate": gate}, workers=1)
        engine.create_task("t", job="gate")
        engine.trigger("t")  # holds the only worker
        assert gate.wait_calls(1)
        first = engine.trigger("t", idempotency_key="k")  # PENDING behind it
        box: list[Any] = []

        def repeat(engine: Any = engine, box: list[Any] = box) -> None:
            try:
                box.append(engine.trigger("t", idempotency_key="k", blocking=True, timeout=WAIT))
            except errors.EngineError as e:
                box.append(e)

        th = threading.Thread(target=repeat, daemon=True)
        th.start()
        engine.delete_task("t")
        engine.create_task("t", job="gate")
        th.join(WAIT)
        assert box, "the repeat never returned"
        got = box[0]
        if isinstance(got, errors.TaskNotFound):
            outcomes["TaskNotFound"] += 1
            continue
        assert not isinstance(got, Exception), f"round {round_}: blocking repeat raised {got!r}"
        assert got.id == first.id
        assert_cancelled_by_deletion(got)
        outcomes["CANCELLED"] += 1
        gate.release()
        make_engine.close(engine)
