"""Stable (reads never assign, the index never changes while running),
failing jobs keep their index and record, the executor pool survives anything, job_timeout,
JSON data and results."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pykka
import pytest

from engine_helpers import WAIT, Gate, Recorder, assert_gap_free_api, check_db
from taskengine import ExecutionStatus, errors

S = ExecutionStatus


def test_nonblocking_index_is_stable_from_answer_to_restart(make_engine, db_path):
    """The original reported a non-blocking execution as index 0 when triggered and index 1
    when finished; here the answer, every poll, ctx.index, completion, list and a restart agree."""
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    running = engine.trigger("t", blocking=False)
    queued = engine.trigger("t", blocking=False)
    assert (running.status, queued.status) == (S.PENDING, S.PENDING)
    assert (running.index, queued.index) == (0, 1)
    assert gate.wait_calls(1)
    assert gate.index_of(running.id) == 0  # the job saw the index the caller was given
    for _ in range(50):
        r = engine.get_execution("t", running.id)
        q = engine.get_execution("t", queued.id)
        assert (r.id, r.index) == (running.id, 0)
        assert r.status in (S.PENDING, S.RUNNING)
        assert (q.id, q.index, q.status) == (queued.id, 1, S.PENDING)
    assert engine.get_execution("t", running.id).status == S.RUNNING
    listed = engine.list_executions("t")
    assert [(e.id, e.index) for e in listed] == [(running.id, 0), (queued.id, 1)]
    assert engine.next_index("t") == 2
    gate.release()
    fr = engine.wait("t", running.id, timeout=WAIT)
    fq = engine.wait("t", queued.id, timeout=WAIT)
    assert (fr.index, fr.status, fr.result) == (0, S.SUCCESS, {"index": 0})
    assert (fq.index, fq.status, fq.result) == (1, S.SUCCESS, {"index": 1})
    assert gate.index_of(queued.id) == 1
    assert fr.started_at is not None and fr.finished_at is not None
    make_engine.close(engine)
    engine = make_engine(db_path, jobs={"gate": gate})
    after = engine.get_execution("t", running.id)
    assert (after.id, after.index, after.status, after.result) == (running.id, 0, S.SUCCESS, {"index": 0})
    assert [(e.id, e.index) for e in engine.list_executions("t")] == [(running.id, 0), (queued.id, 1)]
    assert engine.next_index("t") == 2


def test_blocking_index_is_stable_after_the_answer(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    ex = engine.trigger("t", blocking=True, timeout=WAIT)
    assert (ex.index, ex.status, ex.blocking) == (0, S.SUCCESS, True)
    assert rec.calls[0][:2] == (ex.id, 0)
    for _ in range(20):
        assert engine.get_execution("t", ex.id).index == 0
    make_engine.close(engine)
    engine = make_engine(db_path, jobs={"rec": rec})
    assert engine.get_execution("t", ex.id).index == 0
    assert engine.next_index("t") == 1


def test_reads_never_assign(make_engine, db_path):
    """Reading a pending execution must not move the counter."""
    gate = Gate()
    rec = Recorder()
    engine = make_engine(db_path, jobs={"gate": gate, "rec": rec}, workers=1)
    engine.create_task("t", job="gate")
    engine.create_task("other", job="rec")
    running = engine.trigger("t")
    pending = engine.trigger("t")
    assert gate.wait_calls(1)
    before = engine.next_index("t")
    assert before == 2
    for k in range(100):
        assert engine.get_execution("t", pending.id).index == 1
        assert engine.get_execution("t", running.id).index == 0
        engine.list_executions("t")
        engine.list_executions("t", after=0, limit=1)
        engine.list_executions("t", newest_first=True)
        engine.get_task("t")
        engine.next_index("t")
        engine.stats()
        if k % 10 == 0:
            with pytest.raises(errors.ExecutionNotFound):
                engine.get_execution("t", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
            with pytest.raises(errors.ExecutionTimeout):
                engine.wait("t", pending.id, timeout=0.01)
    assert engine.next_index("t") == before
    assert engine.get_task("t").execution_count == before
    assert engine.next_index("other") == 0
    assert gate.count() == 1  # polling never started anything
    gate.release()
    assert engine.wait("t", pending.id, timeout=WAIT).index == 1
    assert engine.next_index("t") == before
    make_engine.close(engine)
    tasks = check_db(db_path, allow_live=False)
    assert tasks["t"].counter == before
    assert tasks["other"].counter == 0


class CustomBase(BaseException):
    pass


def _raiser(ctx: Any) -> Any:
    kind = ctx.data["kind"]
    if kind == "value":
        raise ValueError(f"bad thing {ctx.index}")
    if kind == "exit":
        raise SystemExit(f"bye {ctx.index}")
    if kind == "base":
        raise CustomBase(f"custom {ctx.index}")
    return "fine"


@pytest.mark.parametrize("blocking", [True, False])
def test_failing_jobs_keep_index_and_record_and_pool_carries_on(make_engine, db_path, blocking):
    engine = make_engine(db_path, jobs={"raiser": _raiser}, workers=2)
    engine.create_task("t", job="raiser")
    results = []
    for kind, type_name in [("value", "ValueError"), ("exit", "SystemExit"), ("base", "CustomBase"), ("ok", None)]:
        ex = engine.trigger("t", data={"kind": kind}, blocking=blocking, timeout=WAIT)
        fin = engine.wait("t", ex.id, timeout=WAIT) if not blocking else ex
        assert fin.index == len(results)
        if type_name is None:
            assert fin.status == S.SUCCESS and fin.result == "fine"
        else:
            assert fin.status == S.FAILED, (kind, fin.status, fin.error)
            assert type_name in fin.error, fin.error
            assert str(fin.index) in fin.error and fin.error.split(":")[0].strip() == type_name, fin.error
            assert fin.result is None
        results.append(fin)
    assert engine.next_index("t") == 4
    assert_gap_free_api(engine, "t", results)
    make_engine.close(engine)
    on_disk = check_db(db_path, allow_live=False)["t"]
    assert [on_disk.records[i].status for i in range(4)] == [S.FAILED, S.FAILED, S.FAILED, S.SUCCESS]


@pytest.mark.timeout(60)
def test_pool_survives_50_failing_jobs(make_engine, db_path):
    def boom(ctx: Any) -> Any:
        raise RuntimeError(f"boom {ctx.index}")

    rec = Recorder()
    engine = make_engine(db_path, jobs={"boom": boom, "rec": rec}, workers=2)
    engine.create_task("bad", job="boom")
    engine.create_task("good", job="rec")
    failing = [engine.trigger("bad", blocking=(k % 5 == 0), timeout=WAIT) for k in range(50)]
    good = engine.trigger("good", blocking=True, timeout=WAIT)
    assert good.status == S.SUCCESS
    for ex in failing:
        fin = engine.wait("bad", ex.id, timeout=WAIT)
        assert fin.status == S.FAILED
        assert fin.error.startswith("RuntimeError") and f"boom {fin.index}" in fin.error, fin.error
    assert sorted(engine.wait("bad", ex.id, timeout=WAIT).index for ex in failing) == list(range(50))
    more = [engine.trigger("good") for _ in range(4)]
    for ex in more:
        assert engine.wait("good", ex.id, timeout=WAIT).status == S.SUCCESS
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


@pytest.mark.parametrize("blocking", [False, True])
def test_job_timeout_fails_a_hung_job_and_frees_its_slot(make_engine, db_path, blocking):
    hung = Gate(result="late")
    rec = Recorder()
    engine = make_engine(db_path, jobs={"hung": hung, "rec": rec}, workers=1, job_timeout=0.5)
    engine.create_task("h", job="hung")
    engine.create_task("ok", job="rec")
    ex = engine.trigger("h", blocking=blocking, timeout=WAIT)
    fin = engine.wait("h", ex.id, timeout=WAIT) if not blocking else ex
    assert fin.status == S.FAILED, (fin.status, fin.error)
    assert fin.index == 0
    assert "time" in fin.error.lower(), fin.error
    # the only worker slot is free again although the hung function has not returned
    assert hung.count() == 1 and not hung.returned
    good = engine.trigger("ok", blocking=True, timeout=WAIT)
    assert good.status == S.SUCCESS
    second = engine.trigger("ok", blocking=False)
    assert engine.wait("ok", second.id, timeout=WAIT).status == S.SUCCESS
    # the hung job finally returns: its late result must not overwrite the FAILED record
    hung.release()
    assert hung.wait_returned(1)
    engine.trigger("ok", blocking=True, timeout=WAIT)
    assert engine.get_execution("h", ex.id).status == S.FAILED
    make_engine.close(engine)
    rec0 = check_db(db_path, allow_live=False)["h"].records[0]
    assert rec0.status == S.FAILED and rec0.result is None


def test_json_data_config_and_result_round_trip(make_engine, db_path):
    data = {"a": [1, 2.5, "x", None, True, False], "u": "ünï – 日本", "nested": {"k": [], "e": {}}, "big": 2**53}
    config = {"retries": 3, "names": ["a", "b"], "f": 0.25}
    seen: list[Any] = []

    def echo(ctx: Any) -> Any:
        seen.append((ctx.task_id, ctx.data, ctx.config))
        return {"data": ctx.data, "config": ctx.config}

    engine = make_engine(db_path, jobs={"echo": echo})
    task = engine.create_task("t", job="echo", config=config)
    assert task.config == config and task.job == "echo"
    b = engine.trigger("t", data=data, blocking=True, timeout=WAIT)
    nb = engine.trigger("t", data=[1, "two"], blocking=False)
    scalar = engine.trigger("t", data="just a string", blocking=True, timeout=WAIT)
    none = engine.trigger("t", blocking=True, timeout=WAIT)
    assert b.data == data and b.result == {"data": data, "config": config}
    assert nb.data == [1, "two"]
    assert engine.wait("t", nb.id, timeout=WAIT).result == {"data": [1, "two"], "config": config}
    assert scalar.result["data"] == "just a string"
    assert none.data is None
    assert seen[0] == ("t", data, config)
    make_engine.close(engine)
    engine = make_engine(db_path, jobs={"echo": echo})
    again = engine.get_execution("t", b.id)
    assert again.data == data and again.result == {"data": data, "config": config}
    assert engine.get_task("t").config == config


@pytest.mark.parametrize(
    "bad",
    [lambda: object(), lambda: {1, 2}, lambda: float("nan"), lambda: {"x": float("inf")}, lambda: b"bytes"],
    ids=["object", "set", "nan", "inf", "bytes"],
)
def test_job_returning_non_json_is_failed(make_engine, db_path, bad):
    def job(ctx: Any) -> Any:
        return bad() if ctx.data == "bad" else "ok"

    engine = make_engine(db_path, jobs={"job": job}, workers=1)
    engine.create_task("t", job="job")
    ex = engine.trigger("t", data="bad", blocking=True, timeout=WAIT)
    assert ex.status == S.FAILED and ex.index == 0 and ex.error
    nb = engine.trigger("t", data="bad")
    assert engine.wait("t", nb.id, timeout=WAIT).status == S.FAILED
    good = engine.trigger("t", data="good", blocking=True, timeout=WAIT)
    assert good.status == S.SUCCESS and good.index == 2
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_execution_timeout_carries_id_and_index_and_execution_goes_on(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    # started by the executor before the timeout: the exception carries its index
    running = engine.trigger_future("t", blocking=True)
    assert gate.wait_calls(1)  # the job has started: wait for that, not for a guessed time
    with pytest.raises(errors.ExecutionTimeout) as running_exc:
        running.get(timeout=0.2)
    assert gate.count() == 1
    running_id, running_index = running_exc.value.execution_id, running_exc.value.index
    assert running_index == 0 and gate.index_of(running_id) == 0
    # queued behind it (one worker): not started, so no index yet
    with pytest.raises(errors.ExecutionTimeout) as queued_exc:
        engine.trigger("t", blocking=True, timeout=0.3)
    queued_id = queued_exc.value.execution_id
    assert queued_exc.value.index is None
    assert queued_id and queued_id != running_id
    assert engine.next_index("t") == 1  # a queued blocking execution holds no index yet
    with pytest.raises(errors.ExecutionTimeout) as wait_exc:
        engine.wait("t", running_id, timeout=0.2)
    assert (wait_exc.value.execution_id, wait_exc.value.index) == (running_id, 0)
    gate.release()
    fin = engine.wait("t", running_id, timeout=WAIT)
    assert (fin.status, fin.index) == (S.SUCCESS, 0)
    fq = engine.wait("t", queued_id, timeout=WAIT)
    assert (fq.status, fq.index) == (S.SUCCESS, 1)
    assert engine.next_index("t") == 2
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_an_idempotent_repeats_timeout_names_the_execution_that_runs(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    first = engine.trigger_future("t", blocking=True, idempotency_key="k")
    assert gate.wait_calls(1)
    first_id = gate.calls[0][0]
    with pytest.raises(errors.ExecutionTimeout) as repeat_exc:
        engine.trigger("t", blocking=True, idempotency_key="k", timeout=0.2)
    assert (repeat_exc.value.execution_id, repeat_exc.value.index) == (first_id, 0)
    assert first_id in str(repeat_exc.value)

    async def repeat() -> None:
        await engine.atrigger("t", blocking=True, idempotency_key="k", timeout=0.2)

    with pytest.raises(errors.ExecutionTimeout) as async_exc:
        asyncio.run(repeat())
    assert (async_exc.value.execution_id, async_exc.value.index) == (first_id, 0)
    gate.release()
    assert first.get(timeout=WAIT).index == 0
    assert engine.next_index("t") == 1
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_wait_from_many_threads_sees_one_result(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    ex = engine.trigger("t")
    assert gate.wait_calls(1)
    got: list[Any] = []
    lock = threading.Lock()

    def waiter() -> None:
        r = engine.wait("t", ex.id, timeout=WAIT)
        with lock:
            got.append(r)

    ts = [threading.Thread(target=waiter, daemon=True) for _ in range(10)]
    for t in ts:
        t.start()
    gate.release()
    for t in ts:
        t.join(WAIT)
    assert len(got) == 10
    assert {(r.id, r.index, r.status) for r in got} == {(ex.id, 0, S.SUCCESS)}


def test_reading_a_queued_blocking_execution_never_assigns(make_engine, db_path):
    """A blocking execution gets its index when an executor starts it; reading it while it is
    still queued must not hand one out."""
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    engine.trigger("t")
    assert gate.wait_calls(1)
    fut = engine.trigger_future("t", {"b": 1}, blocking=True)
    with pytest.raises((errors.ExecutionTimeout, pykka.Timeout)):
        fut.get(timeout=0.2)
    with pytest.raises(errors.ExecutionTimeout) as exc:
        engine.trigger("t", blocking=True, timeout=0.2)
    queued_id = exc.value.execution_id
    for _ in range(30):
        q = engine.get_execution("t", queued_id)
        assert (q.id, q.index, q.status, q.blocking) == (queued_id, None, S.PENDING, True)
    assert engine.next_index("t") == 1
    gate.release()
    done = fut.get(timeout=WAIT)  # a pykka future that timed out can still be read later
    assert (done.status, done.index) == (S.SUCCESS, 1)
    fin = engine.wait("t", queued_id, timeout=WAIT)
    assert (fin.status, fin.index) == (S.SUCCESS, 2)
    assert engine.next_index("t") == 3


def test_job_sees_its_own_execution_running_with_its_index(make_engine, db_path):
    """The pre-assigned index must not vanish when the run starts. From inside the
    job the execution reads RUNNING with the index the trigger answered; a job may trigger
    another task (non-blocking) itself."""
    seen: list[Any] = []
    engine_box: list[Any] = []
    rec = Recorder()

    def introspect(ctx: Any) -> Any:
        eng = engine_box[0]
        me = eng.get_execution(ctx.task_id, ctx.execution_id)
        child = eng.trigger("child", data={"parent": ctx.index})
        seen.append((ctx.index, me.index, me.status, me.started_at is not None, child.index))
        return ctx.index

    engine = make_engine(db_path, jobs={"introspect": introspect, "rec": rec}, workers=2)
    engine_box.append(engine)
    engine.create_task("t", job="introspect")
    engine.create_task("child", job="rec")
    answers = [engine.trigger("t", blocking=k % 2 == 0, timeout=WAIT) for k in range(6)]
    for ex in answers:
        assert engine.wait("t", ex.id, timeout=WAIT).result == ex.index
    assert [(i, i, S.RUNNING, True) for i in range(6)] == sorted(s[:4] for s in seen)
    assert sorted(s[4] for s in seen) == list(range(6))
    assert rec.wait_calls(6)


def test_execution_fields(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    nb = engine.trigger("t", data={"x": 1}, idempotency_key="key-1")
    assert (nb.task_id, nb.blocking, nb.idempotency_key, nb.started_at, nb.finished_at) == ("t", False, "key-1",
                                                                                          None, None)
    assert nb.result is None and nb.error is None and nb.created_at > 0
    fin = engine.wait("t", nb.id, timeout=WAIT)
    assert fin.created_at <= fin.started_at <= fin.finished_at
    assert (fin.task_id, fin.data, fin.idempotency_key, fin.blocking) == ("t", {"x": 1}, "key-1", False)
    b = engine.trigger("t", blocking=True, timeout=WAIT)
    assert b.blocking and b.created_at <= b.started_at <= b.finished_at and b.idempotency_key is None
    assert S.SUCCESS.is_finished and S.FAILED.is_finished and S.CANCELLED.is_finished
    assert not S.PENDING.is_finished and not S.RUNNING.is_finished


def test_list_executions_paging(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    exs = [engine.trigger("t") for _ in range(120)]
    assert [e.index for e in engine.list_executions("t")] == list(range(50))  # default limit 50
    assert [e.index for e in engine.list_executions("t", after=49, limit=50)] == list(range(50, 100))
    assert [e.index for e in engine.list_executions("t", after=99, limit=50)] == list(range(100, 120))
    assert engine.list_executions("t", after=119) == []
    assert [e.index for e in engine.list_executions("t", newest_first=True, limit=3)] == [119, 118, 117]
    assert [e.index for e in engine.list_executions("t", newest_first=True, after=60, limit=3)] == [59, 58, 57]
    assert [e.id for e in engine.list_executions("t", limit=1000)] == [e.id for e in exs]


def test_cancel_pending_keeps_index_and_record_and_never_runs(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    running = engine.trigger("t")
    assert gate.wait_calls(1)
    pending = engine.trigger("t")
    after = engine.trigger("t")
    c = engine.cancel("t", pending.id)
    assert (c.id, c.index, c.status) == (pending.id, 1, S.CANCELLED)
    assert engine.wait("t", pending.id, timeout=WAIT).status == S.CANCELLED
    r = engine.cancel("t", running.id)  # running: returned unchanged
    assert (r.index, r.status) == (0, S.RUNNING)
    gate.release()
    assert engine.wait("t", after.id, timeout=WAIT).status == S.SUCCESS
    assert engine.wait("t", running.id, timeout=WAIT).status == S.SUCCESS
    assert [eid for eid, _ in gate.calls] == [running.id, after.id]
    assert engine.cancel("t", after.id).status == S.SUCCESS  # finished: unchanged
    assert engine.next_index("t") == 3
    make_engine.close(engine)
    t = check_db(db_path, allow_live=False)["t"]
    assert [t.records[i].status for i in range(3)] == [S.SUCCESS, S.CANCELLED, S.SUCCESS]
