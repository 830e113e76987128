"""Nothing lost and durable, with a REAL process killed by SIGKILL (tests/crash_child.py)."""

from __future__ import annotations

from typing import Any

import pytest

from engine_helpers import WAIT, Child, Recorder, assert_gap_free_api, check_db
from taskengine import ExecutionStatus, errors

#: the node id crash_child.py opens as: a reopen under it is a restart of the same node
CHILD_NODE = "crash-child"

S = ExecutionStatus


def read_acks(child: Child, n: int) -> list[tuple[str, int, str, bool]]:
    child.expect("READY")
    acks = []
    while len(acks) < n:
        line = child.readline()
        if not line.startswith("ACK "):
            continue
        _, eid, idx, kind, blocking, *_tid = line.split(" ")
        acks.append((eid, int(idx), kind, blocking == "1"))
    return acks


def crash_after(path: str, task_id: str, mode: str, n: int) -> list[tuple[str, int, str, bool]]:
    child = Child("crash_child.py", path, task_id, mode)
    try:
        acks = read_acks(child, n)
    finally:
        child.kill9()
    assert child.proc.returncode == -9
    return acks


def check_acks_on_disk(path: str, task_id: str, acks: list[tuple[str, int, str, bool]]) -> Any:
    """Right after the kill: the invariants hold on disk and every ack is there at its index."""
    t = check_db(path, allow_live=True)[task_id]
    by_id = t.by_id()
    for eid, idx, _kind, blocking in acks:
        assert eid in by_id, f"acknowledged execution {eid} (index {idx}) lost by the crash"
        assert by_id[eid].index == idx, f"{eid}: acknowledged index {idx}, {by_id[eid].index} on disk"
        if blocking:  # a blocking trigger answers once the execution finished
            assert by_id[eid].status == S.SUCCESS, (eid, by_id[eid].status)
    assert len({a[1] for a in acks}) == len(acks), "two acks with one index"
    return t


@pytest.mark.timeout(90)
def test_sigkill_with_pending_and_running_work_loses_nothing(make_engine, store):
    acks = crash_after(store, "t", "nonblocking", 60)
    at_kill = check_acks_on_disk(store, "t", acks)
    status_at_kill = {r.id: r.status for r in at_kill.records.values()}
    n = at_kill.counter
    assert n >= 60
    running = [eid for eid, st in status_at_kill.items() if st == S.RUNNING]
    pending = [eid for eid, st in status_at_kill.items() if st == S.PENDING]
    assert running and pending, f"scenario did not leave RUNNING and PENDING work: {status_at_kill}"

    rec = Recorder()
    engine = make_engine(store, jobs={"crashjob": rec}, workers=2, node_id=CHILD_NODE)
    for i in range(n):
        r = at_kill.records[i]
        fin = engine.wait("t", r.id, timeout=WAIT)
        assert (fin.id, fin.index) == (r.id, i)
        if r.status == S.RUNNING:
            assert fin.status == S.FAILED, (i, fin.status)
            assert "interrupt" in (fin.error or "").lower(), fin.error
        elif r.status == S.PENDING:
            assert fin.status == S.SUCCESS and fin.result == {"index": i}, (i, fin.status, fin.error)
        else:
            assert fin.status == r.status == S.SUCCESS and fin.result == {"ran": "child", "index": i}
    assert sorted(rec.ids()) == sorted(pending), "recovered PENDING work must run exactly once, and only it"
    assert_gap_free_api(engine, "t")
    assert engine.next_index("t") == n
    new = engine.trigger("t", data={"kind": "fast"}, blocking=True, timeout=WAIT)
    assert new.index == n
    make_engine.close(engine)
    final = check_db(store, allow_live=False)["t"]
    assert final.counter == n + 1


@pytest.mark.timeout(120)
def test_repeated_sigkill_during_concurrent_mixed_triggers(make_engine, store):
    """Four kills in the middle of 4 threads triggering (blocking and non-blocking); each
    restart recovers in the child. No index is re-issued and no ack is ever lost."""
    all_acks: dict[str, int] = {}
    for cycle in range(4):
        acks = crash_after(store, "t", "mixed", 200)
        for eid, idx, _k, _b in acks:
            assert eid not in all_acks
            all_acks[eid] = idx
        t = check_acks_on_disk(store, "t", acks)
        by_id = t.by_id()
        for eid, idx in all_acks.items():  # acks of earlier lives are still there, unchanged
            assert by_id[eid].index == idx, f"cycle {cycle}: {eid} moved from {idx}"
        assert len(set(all_acks.values())) == len(all_acks)
    rec = Recorder()
    engine = make_engine(store, jobs={"crashjob": rec}, workers=2, node_id=CHILD_NODE)
    listed = assert_gap_free_api(engine, "t")
    n = len(listed)
    for e in listed:
        fin = engine.wait("t", e.id, timeout=WAIT)
        assert fin.index == e.index and fin.status in (S.SUCCESS, S.FAILED)
        if fin.status == S.FAILED:
            assert "interrupt" in fin.error.lower(), fin.error
    assert {e.id: e.index for e in listed if e.id in all_acks} == all_acks
    assert engine.trigger("t", data={"kind": "fast"}).index == n
    make_engine.close(engine)
    check_db(store)


@pytest.mark.timeout(60)
def test_sigkill_then_reopen_without_the_job_waits_for_register_job(make_engine, db_path):
    acks = crash_after(db_path, "t", "nonblocking", 20)
    at_kill = check_acks_on_disk(db_path, "t", acks)
    pending = {r.id: r.index for r in at_kill.records.values() if r.status == S.PENDING}
    running = {r.id: r.index for r in at_kill.records.values() if r.status == S.RUNNING}
    assert pending
    engine = make_engine(db_path, jobs={})
    for eid, idx in running.items():  # interrupted work is finished without its job
        fin = engine.wait("t", eid, timeout=WAIT)
        assert (fin.index, fin.status) == (idx, S.FAILED)
    for eid, idx in pending.items():
        ex = engine.get_execution("t", eid)
        assert (ex.index, ex.status) == (idx, S.PENDING)
    some = next(iter(pending))
    with pytest.raises(errors.ExecutionTimeout) as exc:
        engine.wait("t", some, timeout=0.3)
    assert (exc.value.execution_id, exc.value.index) == (some, pending[some])
    assert engine.next_index("t") == at_kill.counter
    rec = Recorder()
    engine.register_job("crashjob", rec)
    for eid, idx in pending.items():
        fin = engine.wait("t", eid, timeout=WAIT)
        assert (fin.index, fin.status) == (idx, S.SUCCESS)
    assert sorted(rec.ids()) == sorted(pending)
    assert engine.next_index("t") == at_kill.counter
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


@pytest.mark.timeout(120)
def test_repeated_sigkill_with_deletions_over_prefix_sharing_tasks(make_engine, db_path):
    """Kills while four tasks whose ids share a prefix are triggered and deleted/re-created:
    after each kill the disk holds no orphan keys, no gaps, no live key without its record."""
    for _cycle in range(4):
        child = Child("crash_child.py", db_path, "m", "multi")
        try:
            child.expect("READY")
            dels = acks = 0
            while acks < 150 or dels < 2:
                line = child.readline()
                acks += line.startswith("ACK ")
                dels += line.startswith("DEL ")
        finally:
            child.kill9()
        check_db(db_path, allow_live=True)
    rec = Recorder()
    engine = make_engine(db_path, jobs={"crashjob": rec}, workers=2)
    tasks = ["m", "m:", "m:1", "m/x"]
    for tid in tasks:
        try:
            listed = assert_gap_free_api(engine, tid)
        except errors.TaskNotFound:  # killed between a delete and its re-create
            continue
        for e in listed:
            fin = engine.wait(tid, e.id, timeout=WAIT)
            assert fin.index == e.index and fin.status in (S.SUCCESS, S.FAILED)
        assert engine.trigger(tid, data={"kind": "fast"}, blocking=True, timeout=WAIT).index == len(listed)
    make_engine.close(engine)
    assert set(check_db(db_path, allow_live=False)) <= set(tasks)
