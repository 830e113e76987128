"""Several nodes (engines) on one PostgreSQL database: every invariant across all of them.

Engines in this process share a URL (each its own node id), and node processes are killed
(SIGKILL) or paused past their lease (SIGSTOP) to watch the reaper and the fence.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Child, Gate, Recorder, check_db, poll_until, run_threads
from pg_other import OtherNode
from taskengine import ExecutionStatus, errors, storage
from taskengine.storage import codec, pg_nodes, pg_schema, postgres, records
from taskengine.storage.interface import Node
from taskengine.storage.pg_common import tcp_settings
from taskengine.storage.records import Execution, Task

pytestmark = pytest.mark.timeout(120)

LEASE = 1.0


def _stored(url: str, task_id: str) -> dict[str, Execution]:
    store = storage.open_store(url)
    try:
        return {ex.id: ex for ex in store.iter_executions(task_id)}
    finally:
        store.close()


def _node_rows(url: str) -> dict[str, tuple[int, bool]]:
    with psycopg.connect(url) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, epoch, alive FROM taskengine.nodes")}


def _started(child: Child, n: int = 4, running: int = 2) -> tuple[list[str], set[str]]:
    """Read node_child.py's lines up to READY and ``running`` RUNNING ones: (acked ids, running ids)."""
    acked: list[str] = []
    started: set[str] = set()
    ready = False
    while not ready or len(started) < running:
        line = child.readline()
        child.seen.append(line)
        word, *rest = line.split()
        if word == "ACK":
            acked.append(rest[0])
        elif word == "RUNNING":
            started.add(rest[0])
        elif word == "READY":
            ready = True
    assert len(acked) == n
    return acked, started


def test_nodes_hand_out_unique_gap_free_ordered_indexes(make_engine: Any, pg_url: str) -> None:
    """Three engines on one database, threads triggering one hot task and many tasks through all
    of them: every index once, none missing, each caller's increasing, each ack stored at its index."""
    nodes = [make_engine(pg_url, jobs={"rec": Recorder()}, node_id=f"n{i}", node_lease=LEASE) for i in range(3)]
    tasks = ["hot", *[f"t{i}" for i in range(12)]]
    for t in tasks:
        nodes[0].create_task(t, job="rec")
    acks: list[list[tuple[str, str, int]]] = [[] for _ in range(12)]

    def caller(c: int) -> None:
        engine = nodes[c % 3]
        for i in range(40):
            task = "hot" if i % 2 == 0 else tasks[1 + (c + i) % 12]
            ex = engine.trigger(task, data={"c": c, "i": i}, blocking=(i % 5 == 0), timeout=WAIT)
            assert ex.index is not None
            acks[c].append((task, ex.id, ex.index))

    run_threads(12, caller).raise_unexpected()
    for c, caller_acks in enumerate(acks):  # each runs on the node that triggered it
        for task, eid, _ in caller_acks:
            assert nodes[c % 3].wait(task, eid, timeout=WAIT).status is ExecutionStatus.SUCCESS
    for caller_acks in acks:
        for t in tasks:
            mine = [index for task, _, index in caller_acks if task == t]
            assert mine == sorted(mine) and len(set(mine)) == len(mine), (t, mine)
    for engine in nodes:
        engine.close()
    disk = check_db(pg_url, allow_live=False)
    total = 0
    for t in tasks:
        mine = [(eid, index) for caller_acks in acks for task, eid, index in caller_acks if task == t]
        assert disk[t].counter == len(mine)
        assert sorted(index for _, index in mine) == list(range(len(mine)))
        for eid, index in mine:
            assert disk[t].records[index].id == eid
            assert disk[t].records[index].status is ExecutionStatus.SUCCESS
        total += len(mine)
    assert total == 12 * 40


def _pending_rows(url: str, task_id: str, n: int) -> list[str]:
    """A database holding ``n`` PENDING executions of ``task_id`` (job ``rec``), written directly."""
    store = postgres.PostgresStore.open(url, create=True, node_id="writer")
    try:
        ch = store.changes
        writer = store.writer()
        writer.write([ch.create_task(Task(id=task_id, job="rec", incarnation="inc-1"))])
        ids = [f"01J{i:023d}" for i in range(n)]
        writer.write([ch.assign(Execution(id=eid, task_id=task_id, index=i, status=ExecutionStatus.PENDING,
                                          blocking=False, created_at=1.0), with_counter=False)
                      for i, eid in enumerate(ids)] + [ch.counter(task_id, n, 0)])
    finally:
        store.close()
    return ids


def test_pending_executions_two_nodes_loaded_run_once(make_engine: Any, pg_url: str) -> None:
    """Both nodes recover the same PENDING executions at open; each runs exactly once (a start is a
    claim: the loser's is refused, and it runs nothing)."""
    n = 300
    ids = _pending_rows(pg_url, "t", n)
    a = make_engine(pg_url, workers=4, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, workers=4, node_id="b", node_lease=LEASE)
    assert a.stats().pending == n and b.stats().pending == n  # both hold every one

    # each node's jobs hold on until the other node has started one too, so both nodes are at
    # work on the same rows at once however the threads are scheduled (each holds all 300)
    began = {"a": threading.Event(), "b": threading.Event()}

    def work(me: str, other: str) -> Any:
        def job(ctx: Any) -> None:
            began[me].set()
            if not began[other].wait(WAIT):
                raise RuntimeError(f"node {other} never started an execution")

        return job

    rec_a, rec_b = Recorder(work("a", "b")), Recorder(work("b", "a"))
    both = threading.Barrier(2)

    def register(engine: Any, rec: Recorder) -> None:
        both.wait(WAIT)
        engine.register_job("rec", rec)

    threads = [threading.Thread(target=register, args=args) for args in ((a, rec_a), (b, rec_b))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT)
    poll_until("every execution ran", lambda: rec_a.count() + rec_b.count() >= n)
    poll_until("both nodes let go of every entry", lambda: a.stats().pending == 0 and b.stats().pending == 0)
    ran = rec_a.ids() + rec_b.ids()
    assert sorted(ran) == sorted(ids), "an execution ran twice or not at all"
    assert rec_a.count() and rec_b.count(), "one node ran them all: the test did not race"
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert all(r.status is ExecutionStatus.SUCCESS for r in disk.records.values())


def test_a_killed_node_is_reaped_after_its_lease(make_engine: Any, pg_url: str) -> None:
    """SIGKILL a node with RUNNING and PENDING executions: once its lease has run out another node's
    reaper finishes the RUNNING ones as FAILED "interrupted: node … lost"; the PENDING ones run
    on the surviving node; nothing runs twice."""
    child = Child("node_child.py", pg_url, "child-1", "t", "4")
    try:
        acked, running = _started(child)
        child.kill9()
    finally:
        child.finish()
    rec = Recorder()
    survivor = make_engine(pg_url, jobs={"hold": rec}, node_id="survivor", node_lease=LEASE)
    lost = "interrupted: node child-1 lost"

    def reaped() -> bool:
        stored = _stored(pg_url, "t")
        return all(stored[eid].status is ExecutionStatus.FAILED and stored[eid].error == lost for eid in running)

    poll_until("the reaper finished the killed node's running executions", reaped)
    pending = [eid for eid in acked if eid not in running]
    poll_until("the survivor ran the pending ones", lambda: rec.count() >= 2)
    assert sorted(rec.ids()) == sorted(pending)
    assert _node_rows(pg_url)["child-1"] == (1, False)
    survivor.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert [disk.records[i].id for i in range(4)] == acked


def test_a_node_paused_past_its_lease_writes_nothing_after(make_engine: Any, pg_url: str) -> None:
    """SIGSTOP a node past its lease: the reaper finishes its RUNNING executions; SIGCONT: its late
    completions are refused (the stored records stay the reaper's), it writes nothing more, and it
    reports that it lost its lease. Its PENDING executions then run once, on the other node."""
    watcher = make_engine(pg_url, node_id="watcher", node_lease=LEASE)  # "hold" comes later
    child = Child("node_child.py", pg_url, "child-2", "t", "4")
    try:
        acked, running = _started(child)
        os.kill(child.proc.pid, signal.SIGSTOP)
        lost = "interrupted: node child-2 lost"
        try:
            poll_until("the reaper finished the paused node's running executions", lambda: all(
                _stored(pg_url, "t")[eid].error == lost for eid in running))
            before = _stored(pg_url, "t")
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
        assert child.proc.stdin is not None
        child.proc.stdin.write("GO\n")
        child.proc.stdin.flush()
        waits = dict(child.expect("WAIT").split()[1:] for _ in range(4))
        stats = child.expect("STATS")
        trigger = child.expect("TRIGGER")
        child.expect("DONE")
    finally:
        child.finish()
    after = _stored(pg_url, "t")
    assert after == before, "the paused node wrote after it lost its lease"
    assert "lost its lease" in stats, stats
    assert trigger.startswith("TRIGGER WriteFailed: refused") and "lost its lease" in trigger, trigger
    for eid in running:
        assert waits[eid] != "SUCCESS", waits
    pending = sorted(eid for eid in acked if eid not in running)
    assert {after[eid].status for eid in running} == {ExecutionStatus.FAILED}
    assert {after[eid].status for eid in pending} == {ExecutionStatus.PENDING}
    rec = Recorder()
    watcher.register_job("hold", rec)
    for eid in pending:
        assert watcher.wait("t", eid, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert sorted(rec.ids()) == pending
    watcher.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 4


def test_a_node_id_taken_over_fences_its_previous_life(make_engine: Any, pg_url: str) -> None:
    """A second engine under the same node id (a restarted node) gets the next epoch, finishes the
    earlier one's RUNNING executions as interrupted, and the earlier one can write nothing more."""
    gate = Gate()
    first = make_engine(pg_url, jobs={"g": gate}, node_id="same", node_lease=LEASE)
    first.create_task("t", job="g")
    ex = first.trigger("t")
    assert gate.wait_calls(1)
    assert first.stats().node_epoch == 1
    second = make_engine(pg_url, jobs={"g": Recorder()}, node_id="same", node_lease=LEASE)
    stats = second.stats()
    assert (stats.node_id, stats.node_epoch) == ("same", 2)
    stored = second.get_execution("t", ex.id)
    assert stored.status is ExecutionStatus.FAILED and stored.error.startswith("interrupted")
    with pytest.raises(errors.StorageError, match="lost its lease"):
        first.trigger("t")
    gate.release()
    assert gate.wait_returned(1)
    assert second.get_execution("t", ex.id) == stored  # the late completion changed nothing
    assert second.trigger("t").index == 1
    assert "lost its lease" in (first.stats().write_failure or "")


def test_a_task_deleted_and_created_again_by_another_node(make_engine: Any, pg_url: str) -> None:
    """Node B holds the task cached (one of its executions running, one PENDING with a waiter);
    node A deletes it and creates it again. B's next turn finds another incarnation: its running
    execution is cancelled (its completion stores nothing), the waiter of the PENDING one is
    answered CANCELLED too, and B's trigger gets index 0 of the new task."""
    gate = Gate()
    a = make_engine(pg_url, jobs={"g": gate}, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, jobs={"g": gate}, workers=1, node_id="b", node_lease=LEASE)
    a.create_task("t", job="g")
    held = b.trigger_future("t", blocking=True)
    assert gate.wait_calls(1)
    pending = b.trigger("t")  # waits for B's one worker
    waited: list[Any] = []

    def wait_pending() -> None:
        try:
            waited.append(b.wait("t", pending.id, timeout=WAIT))
        except errors.EngineError as e:
            waited.append(e)

    waiter = threading.Thread(target=wait_pending)
    waiter.start()
    poll_until("the waiter waits", lambda: b.stats().waiters >= 2)
    for _ in range(3):
        a.trigger("t")
    a.delete_task("t")
    a.create_task("t", job="g")
    assert b.get_task("t").execution_count == 0  # B's turn saw the new incarnation
    outcome = held.get(timeout=WAIT)
    assert outcome.status is ExecutionStatus.CANCELLED and outcome.error == "cancelled: the task was deleted"
    waiter.join(WAIT)
    assert [(w.id, w.status, w.error) for w in waited] == [
        (pending.id, ExecutionStatus.CANCELLED, "cancelled: the task was deleted")]
    gate.release()
    assert gate.wait_returned(1)
    ex = b.trigger("t")
    assert ex.index == 0
    assert b.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 1 and disk.records[0].id == ex.id


def test_two_nodes_create_one_task_id_at_once(make_engine: Any, pg_url: str) -> None:
    """Each id is created once: the other node gets TaskAlreadyExists (exist_ok: the same task)."""
    nodes = [make_engine(pg_url, jobs={"j": Recorder()}, node_id=f"n{i}", node_lease=LEASE) for i in range(2)]

    def create(i: int) -> list[Any]:
        out: list[Any] = []
        for k in range(40):
            try:
                out.append(nodes[i].create_task(f"x{k}", job="j", exist_ok=k % 2 == 1).incarnation)
            except errors.TaskAlreadyExists:
                out.append(None)
        return out

    results = run_threads(2, create)
    results.raise_unexpected()
    first, second = results.results
    for k in range(40):
        if k % 2 == 0:
            assert (first[k] is None) != (second[k] is None), k  # one created it, one was refused
        else:
            assert first[k] == second[k] is not None, k  # get-or-create: both have the same task
    for engine in nodes:
        assert engine.stats().write_failure is None


def test_schema_1_is_upgraded_at_open(make_engine: Any, pg_url: str) -> None:
    """A version-1 database (no node columns): the tools read it as it is; an engine upgrades it to
    version 4 (by way of 2 and 3), fills each task's job and incarnation, finishes its RUNNING ones as
    interrupted and runs its PENDING ones."""
    task = Task(id="old", job="rec", incarnation="inc-old", created_at=1.0)
    with psycopg.connect(pg_url) as conn:
        _schema_at(conn, 1)
        conn.execute("INSERT INTO taskengine.tasks (id, record, counter) VALUES ('old', %s, 2)",
                     (codec.encode_task(task),))
        for i, status in enumerate((ExecutionStatus.RUNNING, ExecutionStatus.PENDING)):
            ex = Execution(id=f"01J{i:023d}", task_id="old", index=i, status=status, blocking=False,
                           created_at=1.0, started_at=2.0 if status is ExecutionStatus.RUNNING else None)
            conn.execute("INSERT INTO taskengine.executions (task_id, idx, id, status, record) "
                         "VALUES ('old', %s, %s, %s, %s)", (i, ex.id, status.code.decode(), codec.encode_execution(ex)))
    tool = storage.open_store(pg_url)  # a tool reads version 1 and changes nothing
    assert tool.schema == 1 and tool.get_task("old") is not None
    tool.close()
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"rec": rec}, node_id="n", node_lease=LEASE)
    assert rec.wait_calls(1)
    assert engine.get_execution("old", "01J" + "0" * 23).error.startswith("interrupted")
    engine.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("4",)
        assert conn.execute("SELECT node, epoch FROM taskengine.write_marks").fetchall() == [("n", 1)]
        assert conn.execute("SELECT job, incarnation FROM taskengine.tasks").fetchone() == ("rec", "inc-old")
    check_db(pg_url, allow_live=False)


def _schema_at(conn: Any, version: int) -> None:
    """The tables of ``version`` (empty), as that version's engine made them."""
    for step in range(1, version + 1):
        for ddl in pg_schema.STEPS[step]:
            conn.execute(ddl)
    conn.execute("INSERT INTO taskengine.meta VALUES ('schema_version', %s)", (str(version),))


#: how an engine of version 2 or 3 joined (it sets no nodes.version)
_OLD_JOIN = ("INSERT INTO taskengine.nodes AS n (id, epoch, lease_until, alive) VALUES (%s, 1, "
             "clock_timestamp() + interval '1 hour', true) ON CONFLICT (id) DO UPDATE SET epoch = n.epoch + 1")


@pytest.mark.timeout(60)
def test_schema_3_with_rows_is_upgraded_at_open_and_only_when_no_node_holds_a_lease(
        make_engine: Any, pg_url: str) -> None:
    """A version-3 database with a finished, a RUNNING (of a node that is gone) and a PENDING
    execution, two of them with idempotency keys. While a node holds a lease (an engine of version
    3 may write) an engine refuses to upgrade it and changes nothing; once the lease ran out it
    upgrades it: the live table holds the unfinished ones, so the RUNNING one is reaped as
    interrupted and the PENDING one runs; keys are still unique; an engine of version 3 can no
    longer join; and no index of executions names a column a start or a finish changes (HOT)."""
    task = Task(id="old", job="rec", incarnation="inc-old", created_at=1.0)
    statuses = (ExecutionStatus.SUCCESS, ExecutionStatus.RUNNING, ExecutionStatus.PENDING)
    with psycopg.connect(pg_url) as conn:
        _schema_at(conn, 3)
        conn.execute("INSERT INTO taskengine.tasks (id, record, counter, job, incarnation) "
                     "VALUES ('old', %s, 3, 'rec', 'inc-old')", (codec.encode_task(task),))
        conn.execute(_OLD_JOIN, ("gone",))
        for i, status in enumerate(statuses):
            key = None if i == 1 else f"k{i}"
            ex = Execution(id=f"01J{i:023d}", task_id="old", index=i, status=status, blocking=False,
                           created_at=1.0, started_at=None if status is ExecutionStatus.PENDING else 2.0,
                           finished_at=3.0 if status.is_finished else None, idempotency_key=key)
            conn.execute("INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record, "
                         "runner, runner_epoch) VALUES ('old', %s, %s, %s, %s, %s, %s, %s)",
                         (i, ex.id, status.code.decode(), None if key is None else key.encode(),
                          codec.encode_execution(ex), *(("gone", 1) if i == 1 else (None, None))))
    rec = Recorder()
    with pytest.raises(errors.StorageLocked, match="'gone' hold a lease") as refused:
        make_engine(pg_url, jobs={"rec": rec}, node_id="n", node_lease=LEASE)
    assert "backup" not in str(refused.value)  # no LevelDB remedy for a server's database
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("3",)
        assert conn.execute("SELECT to_regclass('taskengine.live')").fetchone() == (None,)
        conn.execute("UPDATE taskengine.nodes SET lease_until = clock_timestamp() - interval '1 second'")
    engine = make_engine(pg_url, jobs={"rec": rec}, node_id="n", node_lease=LEASE)
    running, pending = (f"01J{i:023d}" for i in (1, 2))
    assert rec.wait_calls(1) and rec.ids() == [pending]
    assert engine.wait("old", pending, timeout=WAIT).status is ExecutionStatus.SUCCESS
    poll_until("the RUNNING one reaped", lambda: engine.get_execution("old", running).status.is_finished)
    assert engine.get_execution("old", running).error == pg_nodes.lost_error("gone")
    assert engine.trigger("old", idempotency_key="k0").index == 0  # the keys are found as before
    assert engine.trigger("old", idempotency_key="k2").index == 2
    assert engine.trigger("old", idempotency_key="k3").index == 3
    assert engine.wait("old", engine.trigger("old").id, timeout=WAIT).index == 4
    engine.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("4",)
        for node_id in ("new", "gone"):  # an engine of version 3 joining, under a new id and an old one
            with pytest.raises(psycopg.errors.NotNullViolation), conn.transaction():
                conn.execute(_OLD_JOIN, (node_id,))
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO taskengine.executions (task_id, idx, id, status, idempotency_key, record) "
                         "VALUES ('old', 9, 'x', 'S', 'k0', '')")
        indexes = [r[0] for r in conn.execute("SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                                              "WHERE indrelid = 'taskengine.executions'::regclass")]
        assert len(indexes) == 3 and not [i for i in indexes if any(c in i for c in ("status", "record", "runner"))]
    check_db(pg_url, allow_live=False)


def test_schema_2_is_upgraded_at_open(make_engine: Any, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        _schema_at(conn, 2)
    engine = make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n", node_lease=LEASE)
    engine.create_task("t", job="rec")
    engine.wait("t", engine.trigger("t").id, timeout=WAIT)
    engine.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("4",)
        assert conn.execute("SELECT node, epoch FROM taskengine.write_marks").fetchall() == [("n", 1)]
    check_db(pg_url, allow_live=False)


def test_node_arguments_are_checked(make_engine: Any, store: str) -> None:
    for bad in ("", "a\nb", "x" * 129, 5, b"n"):
        with pytest.raises(errors.InvalidArgument, match="node_id"):
            make_engine(store, node_id=bad)
    for lease in (0, -1, 0.5, float("nan"), float("inf"), 7200, "10", True):
        with pytest.raises(errors.InvalidArgument, match="node_lease"):
            make_engine(store, node_lease=lease)
    engine = make_engine(store, node_id="node-7", node_lease=2.5)
    stats = engine.stats()
    assert stats.node_id == "node-7"
    assert stats.node_epoch == (None if not storage.is_url(store) else 1)
    make_engine.close(engine)
    default = make_engine(store)
    assert default.stats().node_id == f"{os.uname().nodename}-{os.getpid()}"


def test_a_key_queued_on_one_node_and_stored_by_another(make_engine: Any, pg_url: str) -> None:
    """A blocking trigger with an idempotency key waits in node A's queue (memory only); node B
    stores an execution with the same key. When A starts its queued one it finds the key on the
    database (under the task's lock) and answers its caller with B's execution: one execution."""
    gate = Gate()
    rec = Recorder()
    a = make_engine(pg_url, jobs={"g": gate}, workers=1, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, jobs={"g": rec}, node_id="b", node_lease=LEASE)
    a.create_task("t", job="g")
    a.trigger("t")  # occupies A's one worker
    assert gate.wait_calls(1)
    queued = a.trigger_future("t", blocking=True, idempotency_key="k")
    assert a.stats().queued_blocking == 1  # (stats() is answered after the trigger's turn)
    stored = b.trigger("t", idempotency_key="k")
    assert b.wait("t", stored.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    gate.release()
    answer = queued.get(timeout=WAIT)
    assert (answer.id, answer.index, answer.status) == (stored.id, 1, ExecutionStatus.SUCCESS)
    assert gate.count() == 1 and rec.ids() == [stored.id]
    a.close()
    b.close()
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 2 and disk.idempotency == {"k": stored.id}


def test_the_reaper_waits_for_a_lost_nodes_transaction_in_flight(make_engine: Any, pg_url: str) -> None:
    """A node whose lease runs out while one of its fenced transactions is still open (here: a
    claim, played by SQL): the reaper's FOR UPDATE on the node's row waits for it, and once it
    commits the reaper sees the claim and finishes that execution as lost. (Without the wait the
    reaper would mark the node dead first, and the claim committed after would stay RUNNING.)"""
    survivor = make_engine(pg_url, node_id="survivor", node_lease=LEASE)  # without the job: it reaps only
    other = OtherNode(pg_url)
    try:
        other.create_task("t", "elsewhere")
        pending = other.trigger("t")
    finally:
        other.close()
    with psycopg.connect(pg_url, autocommit=True) as ghost:
        ghost.execute("INSERT INTO taskengine.nodes (id, epoch, lease_until, alive, version) "
                      "VALUES ('ghost', 1, clock_timestamp() + interval '1 second', true, %s)",
                      (pg_schema.SCHEMA_VERSION,))
        with ghost.transaction():
            assert ghost.execute(pg_nodes.FENCE, ("ghost", 1)).fetchone() is not None
            running = records.started(pending, time.time())
            claimed = ghost.execute(
                "UPDATE taskengine.executions SET status = 'R', runner = 'ghost', runner_epoch = 1, record = %s "
                "WHERE task_id = 't' AND id = %s AND status = 'P'", (codec.encode_execution(running), pending.id))
            assert claimed.rowcount == 1

            def reaper_waits() -> bool:
                with psycopg.connect(pg_url, autocommit=True) as look:
                    row = look.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%%FROM taskengine.nodes%%FOR UPDATE%%'").fetchone()
                    return bool(row and row[0])

            poll_until("the reaper waits for the ghost's transaction", reaper_waits)
            assert _node_rows(pg_url)["ghost"] == (1, True)
    lost = "interrupted: node ghost lost"
    poll_until("the reaper finished the claim it waited for", lambda: _stored(pg_url, "t")[pending.id].error == lost)
    assert _node_rows(pg_url)["ghost"] == (1, False)
    survivor.close()
    check_db(pg_url, allow_live=False)


def _claimed_by_an_earlier_epoch(url: str) -> Execution:
    """A RUNNING execution of node "ghost" epoch 1 (played by SQL, its lease long), then "ghost"
    joined again (epoch 2, a lease of LEASE): a node restarted under its id that has not yet
    recovered its earlier life's executions."""
    other = OtherNode(url)
    try:
        other.create_task("t", "elsewhere")
        running = records.started(other.trigger("t"), time.time())
        other.conn.execute("INSERT INTO taskengine.nodes (id, epoch, lease_until, alive, version) "
                           "VALUES ('ghost', 1, clock_timestamp() + interval '1 hour', true, %s)",
                           (pg_schema.SCHEMA_VERSION,))
        claimed = other.conn.execute(
            "UPDATE taskengine.executions SET status = 'R', runner = 'ghost', runner_epoch = 1, record = %s "
            "WHERE task_id = 't' AND id = %s AND status = 'P'", (codec.encode_execution(running), running.id))
        assert claimed.rowcount == 1
        assert pg_nodes.join(other.conn, "ghost", LEASE).epoch == 2
    finally:
        other.close()
    return running


def test_the_reaper_finishes_what_an_earlier_epoch_of_the_node_left_running(make_engine: Any, pg_url: str) -> None:
    """A node restarted under its id (epoch 2) dies before its recovery has finished epoch 1's
    RUNNING executions (a SIGKILL during its start-up): when epoch 2's lease runs out, the reaper
    finishes epoch 1's too. (It finished epoch 2's only, and the row is then not alive: nobody
    looked at epoch 1's again, they stayed RUNNING for ever unless the id joined once more.)"""
    make_engine(pg_url, node_id="first").close()  # the schema
    running = _claimed_by_an_earlier_epoch(pg_url)
    survivor = make_engine(pg_url, node_id="survivor", node_lease=LEASE)  # without the job: it reaps only
    poll_until("the reaper took epoch 2's lease", lambda: _node_rows(pg_url)["ghost"] == (2, False))
    stored = _stored(pg_url, "t")[running.id]
    assert stored.status is ExecutionStatus.FAILED, stored
    assert stored.error == "interrupted: node ghost lost"
    survivor.close()
    check_db(pg_url, allow_live=False)


def test_a_clean_leave_finishes_what_an_earlier_epoch_of_the_node_left_running(make_engine: Any,
                                                                               pg_url: str) -> None:
    """The same through a clean stop: a node that leaves (its close) before its recovery finished
    an earlier epoch's RUNNING executions finishes them as it leaves, or nobody would."""
    make_engine(pg_url, node_id="first").close()  # the schema
    running = _claimed_by_an_earlier_epoch(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        left = pg_nodes.leave(conn, Node("ghost", 2), records.INTERRUPTED)
    assert [ex.id for ex in left] == [running.id]
    stored = _stored(pg_url, "t")[running.id]
    assert stored.status is ExecutionStatus.FAILED and stored.error == records.INTERRUPTED, stored
    assert _node_rows(pg_url)["ghost"] == (2, False)
    check_db(pg_url, allow_live=False)


def test_a_node_cut_off_inside_a_reaper_pass_does_not_stop_the_reaping(make_engine: Any, pg_url: str) -> None:
    """A node cut off from the network in the middle of a reaper pass: played by a heartbeat
    connection (pg_nodes.connect) that took the reaper's lock and then says nothing more, which is
    all the server sees of a client whose link went down. The server ends that session within a
    lease, and another node's reaper finishes a lost node's RUNNING execution. (The heartbeat's
    session had no idle timeout: the server kept it, and the reaper's lock, until TCP gave up on it,
    hours by default, and no node reaped any other meanwhile.)"""
    make_engine(pg_url, node_id="first").close()  # the schema
    other = OtherNode(pg_url)
    try:
        other.create_task("t", "elsewhere")
        running = records.started(other.trigger("t"), time.time())
        other.conn.execute("INSERT INTO taskengine.nodes (id, epoch, lease_until, alive, version) "
                           "VALUES ('ghost', 1, clock_timestamp(), true, %s)", (pg_schema.SCHEMA_VERSION,))
        other.conn.execute(
            "UPDATE taskengine.executions SET status = 'R', runner = 'ghost', runner_epoch = 1, record = %s "
            "WHERE task_id = 't' AND id = %s", (codec.encode_execution(running), running.id))
    finally:
        other.close()
    cut = pg_nodes.connect(pg_url, LEASE, tcp_settings(pg_url, LEASE))
    try:
        cut.execute("BEGIN")
        assert cut.execute("SELECT pg_try_advisory_xact_lock(%s)", (pg_nodes.REAPER_LOCK,)).fetchone() == (True,)
        survivor = make_engine(pg_url, node_id="survivor", node_lease=LEASE)  # without the job: it reaps only
        lost = "interrupted: node ghost lost"
        poll_until("another node reaped the lost one", lambda: _stored(pg_url, "t")[running.id].error == lost)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            cut.execute("SELECT 1")  # the server ended it
    finally:
        cut.close()
    assert _node_rows(pg_url)["ghost"] == (1, False)
    survivor.close()
    check_db(pg_url, allow_live=False)


def test_open_recovers_although_another_node_deletes_a_task_meanwhile(make_engine: Any, pg_url: str) -> None:
    """Recovery at open finds a RUNNING execution of a node that died (no runner: played by SQL),
    and another node deletes its task between the scan and the turn that would finish it as
    interrupted (held here by that node's lock on the task's row): the open goes on, the task is
    simply gone. (It raised TaskNotFound out of Engine.open, and a stress node ended so.)"""
    make_engine(pg_url, node_id="first").close()  # the schema
    other = OtherNode(pg_url)
    try:
        other.create_task("t", "elsewhere")
        running = records.started(other.trigger("t"), time.time())
        other.conn.execute("UPDATE taskengine.executions SET status = 'R', record = %s WHERE task_id = 't'",
                           (codec.encode_execution(running),))
        opened: list[Any] = []
        with other.conn.transaction():
            other.conn.execute("SELECT 1 FROM taskengine.tasks WHERE id = 't' FOR UPDATE")
            opener = threading.Thread(target=lambda: opened.append(_open_or_error(make_engine, pg_url)))
            opener.start()

            def turn_waits() -> bool:
                with psycopg.connect(pg_url, autocommit=True) as look:
                    row = look.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%%FROM taskengine.tasks%%FOR UPDATE%%' AND pid <> pg_backend_pid()"
                    ).fetchone()
                    return bool(row and row[0])

            poll_until("the recovery's turn waits for the task's row", turn_waits)
            other.delete_task("t")
        opener.join(WAIT)
        assert not opener.is_alive()
    finally:
        other.close()
    engine = opened[0]
    assert not isinstance(engine, BaseException), engine
    with pytest.raises(errors.TaskNotFound):
        engine.get_task("t")
    engine.close()
    check_db(pg_url, allow_live=False)


def _open_or_error(make_engine: Any, url: str) -> Any:
    try:
        return make_engine(url, node_id="second")
    except Exception as e:  # noqa: BLE001 - the test looks at it
        return e
