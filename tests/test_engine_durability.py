"""Durable: restart continuity; nothing lost: recovery of unfinished work at open (without a
real crash: states crafted through ``storage``), close() leaving queued work PENDING,
a counter behind its records repaired, idempotency persisted, backup while running."""

from __future__ import annotations

import threading
import time

import pytest
import ulid

from engine_helpers import (
    WAIT,
    Gate,
    Recorder,
    apply_ops,
    assert_gap_free_api,
    assert_indexes_exact,
    check_db,
    check_raw,
)
from taskengine import ExecutionStatus, errors, storage
from taskengine.storage import changes

S = ExecutionStatus


def craft(path: str, task_id: str, job: str, statuses: list[S], counter: int | None = None) -> list[str]:
    """A database written through ``storage`` only, as a crashed engine would leave it: one
    execution per status at indexes 0.. (non-blocking), optionally a counter forced to a value."""
    db = storage.Database.open(path, create=True)
    ids = []
    try:
        task = storage.Task(id=task_id, job=job, created_at=time.time(), incarnation="inc-1")
        apply_ops(db.raw, changes.create_task(task))
        for i, st in enumerate(statuses):
            eid = str(ulid.ULID())
            ids.append(eid)
            now = time.time()
            ex = storage.Execution(
                id=eid, task_id=task_id, index=i, status=st, blocking=False, data={"i": i}, created_at=now,
                started_at=now if st != S.PENDING else None,
                finished_at=now if st.is_finished else None,
                result={"old": i} if st == S.SUCCESS else None,
            )
            apply_ops(db.raw, changes.assign(ex))
        if counter is not None:
            from taskengine.storage import codec, keys

            db.raw.put(keys.counter_key(task_id), codec.encode_int(counter), sync=True)
    finally:
        db.close()
    return ids


@pytest.mark.timeout(60)
def test_counter_continues_across_reopen_cycles(make_engine, store):
    rec = Recorder()
    seen: dict[str, int] = {}
    total = 0
    for cycle in range(6):
        engine = make_engine(store, jobs={"rec": rec}, workers=2)
        if cycle == 0:
            engine.create_task("t", job="rec")
        assert engine.next_index("t") == total, f"cycle {cycle}: counter {engine.next_index('t')} != {total}"
        got = []
        for k in range(12):
            ex = engine.trigger("t", data={"cycle": cycle, "k": k}, blocking=(k % 3 == 0), timeout=WAIT)
            got.append(ex)
        idx = [ex.index for ex in got]
        assert idx == list(range(total, total + 12)), f"cycle {cycle}: {idx}"
        for ex in got:
            assert ex.id not in seen
            seen[ex.id] = ex.index
        total += 12
        if cycle % 2 == 0:  # every other cycle, let them finish before close
            for ex in got:
                engine.wait("t", ex.id, timeout=WAIT)
        make_engine.close(engine)
        on_disk = check_db(store)["t"]
        assert on_disk.counter == total
        assert {r.id: r.index for r in on_disk.records.values()} == seen  # nothing re-issued
    engine = make_engine(store, jobs={"rec": rec})
    listed = assert_gap_free_api(engine, "t")
    assert {e.id: e.index for e in listed} == seen
    for e in listed:
        assert engine.wait("t", e.id, timeout=WAIT).status == S.SUCCESS
    assert_indexes_exact(seen.values(), total)


def test_close_leaves_queued_work_pending_and_it_runs_after_reopen(make_engine, store):
    gate = Gate()
    engine = make_engine(store, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    first = engine.trigger("t")
    assert gate.wait_calls(1)
    queued = [engine.trigger("t", data={"q": k}) for k in range(5)]
    engine.close(timeout=0.5)  # the running job is left; queued ones must not start
    assert gate.count() == 1
    tasks = check_db(store, allow_live=True)
    recs = tasks["t"].by_id()
    for ex in queued:
        assert recs[ex.id].status == S.PENDING, (ex.index, recs[ex.id].status)
        assert recs[ex.id].index == ex.index
    assert recs[first.id].status in (S.RUNNING, S.FAILED)
    gate.release()  # the abandoned job returns into a closed engine
    assert gate.wait_returned(1)
    rec = Recorder()
    engine = make_engine(store, jobs={"gate": rec}, workers=2)
    for ex in queued:
        fin = engine.wait("t", ex.id, timeout=WAIT)
        assert (fin.status, fin.index) == (S.SUCCESS, ex.index)
    f0 = engine.wait("t", first.id, timeout=WAIT)
    assert f0.index == 0 and f0.status == S.FAILED and "interrupt" in f0.error.lower(), f0.error
    assert sorted(rec.ids()) == sorted(ex.id for ex in queued)  # each ran once, the interrupted one never again
    assert engine.trigger("t").index == 6
    make_engine.close(engine)
    check_db(store)


def test_close_waits_for_running_jobs_without_timeout(make_engine, store):
    gate = Gate()
    engine = make_engine(store, jobs={"gate": gate}, workers=2)
    engine.create_task("t", job="gate")
    ex = engine.trigger("t")
    assert gate.wait_calls(1)
    closer = threading.Thread(target=engine.close, daemon=True)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close() returned while a job was running and no timeout was given"
    gate.release()
    closer.join(WAIT)
    assert not closer.is_alive()
    rec0 = check_db(store, allow_live=False)["t"].records[0]
    assert (rec0.id, rec0.status) == (ex.id, S.SUCCESS)


def test_recovery_running_is_interrupted_pending_is_run(make_engine, db_path):
    """Queued executions are run again at open, and ones in progress are finished as interrupted
    (not left in progress)."""
    statuses = [S.SUCCESS, S.RUNNING, S.PENDING, S.FAILED, S.PENDING, S.RUNNING, S.PENDING]
    ids = craft(db_path, "t", "rec", statuses)
    check_db(db_path)  # the crafted state itself is consistent
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec}, workers=2)
    for i, (eid, st) in enumerate(zip(ids, statuses, strict=True)):
        fin = engine.wait("t", eid, timeout=WAIT)
        assert fin.index == i
        if st == S.RUNNING:
            assert fin.status == S.FAILED and "interrupt" in fin.error.lower(), fin.error
        elif st == S.PENDING:
            assert fin.status == S.SUCCESS and fin.result == {"index": i}
        else:
            assert fin.status == st
    assert sorted(rec.ids()) == sorted(eid for eid, st in zip(ids, statuses, strict=True) if st == S.PENDING)
    assert engine.next_index("t") == len(statuses)
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == len(statuses)
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_recovered_pending_waits_for_its_job_then_runs_on_register_job(make_engine, db_path):
    statuses = [S.SUCCESS, S.PENDING, S.PENDING]
    ids = craft(db_path, "t", "late", statuses)
    engine = make_engine(db_path, jobs={})
    for eid in ids[1:]:
        assert engine.get_execution("t", eid).status == S.PENDING
    with pytest.raises(errors.ExecutionTimeout):
        engine.wait("t", ids[1], timeout=0.3)
    with pytest.raises(errors.UnknownJob):  # a new trigger of a job not registered is refused
        engine.trigger("t")
    assert engine.next_index("t") == 3
    rec = Recorder()
    engine.register_job("late", rec)
    for i, eid in enumerate(ids[1:], start=1):
        fin = engine.wait("t", eid, timeout=WAIT)
        assert (fin.status, fin.index) == (S.SUCCESS, i)
    assert sorted(rec.ids()) == sorted(ids[1:])
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 3
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_counter_behind_its_records_never_reissues(make_engine, db_path):
    """A counter behind the stored records must not restart at a used index."""
    ids = craft(db_path, "t", "rec", [S.SUCCESS] * 5, counter=2)
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    assert engine.next_index("t") == 5
    new = [engine.trigger("t", blocking=(k % 2 == 0), timeout=WAIT) for k in range(3)]
    assert [ex.index for ex in new] == [5, 6, 7]
    for i, eid in enumerate(ids):
        assert engine.get_execution("t", eid).index == i
        assert engine.get_execution("t", eid).result == {"old": i}
    for ex in new:
        engine.wait("t", ex.id, timeout=WAIT)
    make_engine.close(engine)
    on_disk = check_db(db_path, allow_live=False)["t"]
    assert on_disk.counter == 8


def test_idempotency_key_survives_reopen(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    a = engine.trigger("t", idempotency_key="k1")
    b = engine.trigger("t", idempotency_key="k2", blocking=True, timeout=WAIT)
    assert engine.trigger("t", idempotency_key="k1").id == a.id
    engine.wait("t", a.id, timeout=WAIT)
    make_engine.close(engine)
    engine = make_engine(store, jobs={"rec": rec})
    for key, ex in (("k1", a), ("k2", b)):
        for blocking in (False, True):
            again = engine.trigger("t", idempotency_key=key, blocking=blocking, timeout=WAIT)
            assert (again.id, again.index) == (ex.id, ex.index)
    assert engine.next_index("t") == 2
    c = engine.trigger("t", idempotency_key="k3")
    assert c.index == 2
    engine.wait("t", c.id, timeout=WAIT)
    assert sorted(rec.ids()) == sorted([a.id, b.id, c.id])  # the repeats never ran anything


@pytest.mark.timeout(90)
def test_backup_while_triggering_is_consistent(make_engine, db_path, fresh_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec}, workers=3)
    for tid in ("t1", "t2", "t3"):
        engine.create_task(tid, job="rec")
    stop = threading.Event()
    acked: dict[str, dict[str, int]] = {"t1": {}, "t2": {}, "t3": {}}
    lock = threading.Lock()
    errs: list[BaseException] = []

    def client(i: int) -> None:
        tid = f"t{i % 3 + 1}"
        k = 0
        try:
            while not stop.is_set() and k < 3000:
                ex = engine.trigger(tid, blocking=(k % 2 == 0), timeout=WAIT)
                with lock:
                    acked[tid][ex.id] = ex.index
                k += 1
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    copies = []
    try:
        for n in range(3):
            assert rec.wait_calls(40 * (n + 1))  # triggers are really flowing during the backup
            dest = fresh_path(f"backup{n}")
            copied = engine.backup(dest)
            assert isinstance(copied, int) and copied > 0
            copies.append(dest)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert not errs, errs[:3]
    make_engine.close(engine)
    final = check_db(db_path)
    for tid in acked:
        assert {r.id: r.index for r in final[tid].records.values()} == acked[tid]
    for dest in copies:
        db = storage.Database.open(dest)
        try:
            snap = check_raw(db.raw, allow_live=True)
        finally:
            db.close()
        for tid, t in snap.items():
            assert t.counter <= final[tid].counter
            for i, r in t.records.items():
                assert final[tid].records[i].id == r.id  # the copy is a prefix of history
