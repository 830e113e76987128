"""Schema version 4 and the one-round-trip turn start, attacked against a real server: the live
table against the execution rows under races between nodes and deletions, a copy, a turn's first
query cut or failing while it waits for a task's lock, ids an array literal could misread, two
engines upgrading one version-3 database at once, an upgrade racing an old engine's join, and one
refused while a version-1 engine writes."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Recorder, check_db, poll_until, run_threads
from taskengine import ExecutionStatus, errors
from taskengine.storage import codec, pg_schema
from taskengine.storage.pg_writer import TASK_LOCKS
from taskengine.storage.records import Execution, Task

pytestmark = pytest.mark.timeout(60)

LEASE = 1.0

#: live rows that name no PENDING/RUNNING execution, and PENDING/RUNNING rows without a live row,
#: and rows of either table whose task is gone
_DISAGREEMENTS = (
    "SELECT 'live without a live row' AS what, l.task_id, l.idx FROM taskengine.live l "
    "LEFT JOIN taskengine.executions e ON e.task_id = l.task_id AND e.idx = l.idx "
    "WHERE e.task_id IS NULL OR e.status NOT IN ('P', 'R') "
    "UNION ALL SELECT 'unfinished row not live', e.task_id, e.idx FROM taskengine.executions e "
    "LEFT JOIN taskengine.live l ON e.task_id = l.task_id AND e.idx = l.idx "
    "WHERE e.status IN ('P', 'R') AND l.task_id IS NULL "
    "UNION ALL SELECT 'orphan execution', e.task_id, e.idx FROM taskengine.executions e "
    "LEFT JOIN taskengine.tasks t ON t.id = e.task_id WHERE t.id IS NULL "
    "UNION ALL SELECT 'orphan live', l.task_id, l.idx FROM taskengine.live l "
    "LEFT JOIN taskengine.tasks t ON t.id = l.task_id WHERE t.id IS NULL"
)


def _disagreements(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(_DISAGREEMENTS).fetchall()]


def _unfinished_rows(conn: psycopg.Connection[Any], runner: str, *, live: bool) -> None:
    """Task 'old''s executions 0 (RUNNING, run by ``runner`` epoch 1) and 1 (PENDING), with their
    live rows if ``live`` (version 4)."""
    for i, status in enumerate((ExecutionStatus.RUNNING, ExecutionStatus.PENDING)):
        ex = Execution(id=f"01J{i:023d}", task_id="old", index=i, status=status, blocking=False,
                       created_at=1.0, started_at=2.0 if i == 0 else None)
        conn.execute("INSERT INTO taskengine.executions (task_id, idx, id, status, record, runner, "
                     "runner_epoch) VALUES ('old', %s, %s, %s, %s, %s, %s)",
                     (i, ex.id, status.code.decode(), codec.encode_execution(ex),
                      *((runner, 1) if i == 0 else (None, None))))
        if live:
            conn.execute("INSERT INTO taskengine.live VALUES ('old', %s)", (i,))


def test_triggers_on_one_node_racing_deletes_and_re_creations_on_another(make_engine: Any, pg_url: str) -> None:
    """Node a triggers task t from two threads while node b deletes and re-creates t, over and
    over: no execution row or live row outlives its task, none is missing from the live set."""
    a = make_engine(pg_url, jobs={"j": Recorder()}, node_id="a", node_lease=LEASE)
    b = make_engine(pg_url, jobs={"j": Recorder()}, node_id="b", node_lease=LEASE)
    a.create_task("t", job="j")
    stop = time.monotonic() + 4.0

    def body(i: int) -> int:
        done = 0
        while time.monotonic() < stop:
            if i < 2:
                try:
                    a.trigger("t")
                    done += 1
                except errors.TaskNotFound:
                    pass
            else:
                b.delete_task("t")
                b.create_task("t", job="j", exist_ok=True)
                done += 1
        return done

    results = run_threads(3, body)
    results.raise_unexpected()
    assert all(results.results), results.results
    a.close()
    b.close()
    assert _disagreements(pg_url) == []
    check_db(pg_url, allow_live=False)


def _hold_task_lock(url: str, task_id: str) -> psycopg.Connection[Any]:
    side = psycopg.connect(url)
    side.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (TASK_LOCKS, task_id))
    return side


def _waiter(look: psycopg.Connection[Any]) -> int:
    """The server process waiting for a task's advisory lock (a turn's first query)."""
    pid: list[int] = []

    def found() -> bool:
        rows = look.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND wait_event = 'advisory' AND query LIKE 'BEGIN;%%'").fetchall()
        pid[:] = [r[0] for r in rows]
        return len(pid) == 1

    poll_until("a turn waits for the task's lock", found)
    return pid[0]


def test_a_turn_start_cut_while_it_waits_for_the_tasks_lock(make_engine: Any, pg_url: str) -> None:
    """The writer's server process is terminated while the turn's first query (BEGIN, fence,
    locks, rows) waits for the task's advisory lock: the writer connects again and the trigger is
    answered with index 0; nothing is left open in a transaction; the live set agrees."""
    engine = make_engine(pg_url, jobs={"j": Recorder()}, node_id="n", node_lease=5.0)
    engine.create_task("t", job="j")
    side = _hold_task_lock(pg_url, "t")
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(engine.trigger("t")))
    thread.start()
    with psycopg.connect(pg_url, autocommit=True) as look:
        pid = _waiter(look)
        look.execute("SELECT pg_terminate_backend(%s)", (pid,))
        side.rollback()
        thread.join(WAIT)
        assert out and out[0].index == 0
        assert engine.wait("t", out[0].id, timeout=WAIT).status is ExecutionStatus.SUCCESS
        assert look.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
                            "AND pid <> pg_backend_pid()").fetchone() == (0,)
    side.close()
    engine.close()
    assert _disagreements(pg_url) == []
    assert check_db(pg_url, allow_live=False)["t"].counter == 1


def test_a_turn_start_that_fails_with_a_lock_timeout(make_engine: Any, pg_url: str, pg_server: Any) -> None:
    """With the database's lock_timeout short, the turn's first query fails waiting for the task's
    lock: the trigger fails with WriteFailed (nothing written), the writer's transaction is rolled
    back (its session not left in a transaction), the counter has not moved; a new engine works."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{name}" SET lock_timeout = 300')
    engine = make_engine(pg_url, jobs={"j": Recorder()}, node_id="n", node_lease=5.0)
    engine.create_task("t", job="j")
    side = _hold_task_lock(pg_url, "t")
    with pytest.raises(errors.WriteFailed) as failed:
        engine.trigger("t")
    assert failed.value.outcome_unknown is False
    with psycopg.connect(pg_url, autocommit=True) as look:
        assert look.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
                            "AND pid <> pg_backend_pid() AND pid <> %s",
                            (side.info.backend_pid,)).fetchone() == (0,)
    side.rollback()
    side.close()
    engine.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" RESET lock_timeout')
    again = make_engine(pg_url, jobs={"j": Recorder()}, node_id="n", node_lease=5.0)
    assert again.trigger("t").index == 0
    again.close()
    assert _disagreements(pg_url) == []


def test_two_engines_upgrade_one_version_3_database_at_once(make_engine: Any, pg_url: str) -> None:
    """Two engines open a version-3 database with PENDING and RUNNING rows (of a node whose lease
    ran out) at the same moment: one upgrades it, the other opens version 4; the PENDING one runs
    once, the RUNNING one is reaped once, the live set agrees."""
    task = Task(id="old", job="rec", incarnation="inc-old", created_at=1.0)
    with psycopg.connect(pg_url) as conn:
        for step in range(1, 4):
            for ddl in pg_schema.STEPS[step]:
                conn.execute(ddl)
        conn.execute("INSERT INTO taskengine.meta VALUES ('schema_version', '3')")
        conn.execute("INSERT INTO taskengine.tasks (id, record, counter, job, incarnation) "
                     "VALUES ('old', %s, 2, 'rec', 'inc-old')", (codec.encode_task(task),))
        conn.execute("INSERT INTO taskengine.nodes (id, epoch, lease_until, alive) "
                     "VALUES ('gone', 1, clock_timestamp() - interval '1 second', true)")
        _unfinished_rows(conn, "gone", live=False)
    rec = Recorder()
    results = run_threads(2, lambda i: make_engine(pg_url, jobs={"rec": rec}, node_id=f"n{i}", node_lease=LEASE))
    results.raise_unexpected()
    first, second = results.results
    running, pending = (f"01J{i:023d}" for i in (0, 1))
    assert first.wait("old", pending, timeout=WAIT).status is ExecutionStatus.SUCCESS
    poll_until("the RUNNING one reaped", lambda: first.get_execution("old", running).status.is_finished)
    first.close()
    second.close()
    assert rec.count() == 1
    assert _disagreements(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("4",)
    check_db(pg_url, allow_live=False)


def test_a_copy_of_a_version_4_database_with_unfinished_rows(make_engine: Any, pg_url: str, pg_server: Any) -> None:
    """``taskengine copy`` of a database holding a PENDING and a RUNNING row (of a node gone)
    into another: the copy's live set holds both, and an engine on the copy runs the PENDING one
    and recovers the RUNNING one (copied with no runner) as interrupted."""
    from taskengine.tools.cli import main

    engine = make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n", node_lease=LEASE)
    engine.create_task("old", job="rec")
    engine.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE taskengine.tasks SET counter = 2")
        _unfinished_rows(conn, "n", live=True)
    dest = pg_server.create_database()
    assert main(["copy", pg_url, dest]) == 0
    assert _disagreements(dest) == []
    with psycopg.connect(dest) as conn:
        assert conn.execute("SELECT idx, status, runner FROM taskengine.executions ORDER BY idx").fetchall() == [
            (0, "R", None), (1, "P", None)]
    rec = Recorder()
    copy = make_engine(dest, jobs={"rec": rec}, node_id="m", node_lease=LEASE)
    running, pending = (f"01J{i:023d}" for i in (0, 1))
    assert copy.wait("old", pending, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert copy.wait("old", running, timeout=WAIT).status is ExecutionStatus.FAILED
    copy.close()
    assert rec.count() == 1
    assert _disagreements(dest) == []
    check_db(dest, allow_live=False)


def test_many_tasks_with_unfinished_executions_deleted_at_once(make_engine: Any, pg_url: str) -> None:
    """Forty tasks, each with a RUNNING and PENDING executions (a gate holds the runs), deleted
    from eight threads at once (so several deletions share a turn's statement): nothing of them is
    left in either table."""
    from engine_helpers import Gate

    gate = Gate()
    engine = make_engine(pg_url, jobs={"g": gate}, workers=2, node_id="n", node_lease=LEASE)
    for k in range(40):
        engine.create_task(f"t{k}", job="g")
        for _ in range(3):
            engine.trigger(f"t{k}")
    assert gate.wait_calls(2)
    results = run_threads(8, lambda i: [engine.delete_task(f"t{k}") for k in range(i, 40, 8)])
    results.raise_unexpected()
    gate.release()
    engine.close()
    assert _disagreements(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM taskengine.executions), "
                            "(SELECT count(*) FROM taskengine.live)").fetchone() == (0, 0)


@pytest.mark.parametrize("task_id", ["NULL", "null", 'a"b', "a\\b", "{x}", "a,b", " sp ", "a'b;--", "日本", "%s"])
def test_awkward_task_ids_through_the_one_query_turn_start(make_engine: Any, pg_url: str, task_id: str) -> None:
    """The turn's first query binds the task ids client side (an array literal): ids an array
    literal or a quote could misread still lock and read their own row."""
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"rec": rec}, node_id="n", node_lease=5.0)
    engine.create_task(task_id, job="rec")
    engine.create_task("other", job="rec")
    ex = engine.trigger(task_id)
    assert ex.index == 0 and engine.wait(task_id, ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.trigger(task_id).index == 1
    engine.delete_task(task_id)
    engine.close()
    assert _disagreements(pg_url) == []


@pytest.mark.parametrize("version", [2, 3])
def test_an_upgrade_racing_an_older_engine_joining_is_refused(make_engine: Any, pg_url: str, version: int) -> None:
    """An engine of version 2 or 3 joins (its INSERT of its node row not yet committed) while an
    engine opens the database of that version to upgrade it: the upgrade must see that join once
    it commits and refuse (that node holds a lease and writes rows without live rows), not go on
    and give the older node ``version = 3`` and a database of version 4. From version 2 the chain
    runs 2 -> 3 first: the lease look of 3 -> 4 still comes before anything is committed."""
    with psycopg.connect(pg_url) as conn:
        for step in range(1, version + 1):
            for ddl in pg_schema.STEPS[step]:
                conn.execute(ddl)
        conn.execute("INSERT INTO taskengine.meta VALUES ('schema_version', %s)", (str(version),))
    joining = psycopg.connect(pg_url)
    joining.execute("INSERT INTO taskengine.nodes AS n (id, epoch, lease_until, alive) VALUES ('old', 1, "
                    "clock_timestamp() + interval '1 hour', true) ON CONFLICT (id) DO UPDATE SET epoch = n.epoch + 1")
    out: list[Any] = []

    def open_engine() -> None:
        try:
            out.append(make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n", node_lease=LEASE))
        except errors.EngineError as e:
            out.append(e)

    thread = threading.Thread(target=open_engine)
    thread.start()
    with psycopg.connect(pg_url, autocommit=True) as look:
        poll_until("the upgrade waits for the join's transaction", lambda: look.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'relation' "
            "AND datname = current_database()").fetchone() == (1,))
    joining.commit()
    joining.close()
    thread.join(WAIT)
    assert len(out) == 1 and isinstance(out[0], errors.StorageLocked), out
    assert "'old' hold a lease" in str(out[0])
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == (str(version),)
        assert conn.execute("SELECT to_regclass('taskengine.live')").fetchone() == (None,)
        if version == 2:  # the 2 -> 3 step went with the refusal
            assert conn.execute("SELECT to_regclass('taskengine.write_marks')").fetchone() == (None,)


def test_an_upgrade_from_1_is_refused_while_a_version_1_engine_writes(make_engine: Any, pg_url: str) -> None:
    """A version-1 engine's writer holds its session advisory lock: the upgrade (taking that lock
    for its transaction) is refused and changes nothing; once that session ends, it upgrades. No
    join in flight can be missed here: an advisory lock is taken at once, outside any transaction,
    and there is no nodes table yet."""
    with psycopg.connect(pg_url) as conn:
        for ddl in pg_schema.STEPS[1]:
            conn.execute(ddl)
        conn.execute("INSERT INTO taskengine.meta VALUES ('schema_version', '1')")
    writer = psycopg.connect(pg_url, autocommit=True)
    writer.execute("SELECT pg_advisory_lock(%s)", (pg_schema.LEGACY_WRITER_LOCK,))
    with pytest.raises(errors.StorageLocked, match="earlier taskengine version writes to it"):
        make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n", node_lease=LEASE)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("1",)
        assert conn.execute("SELECT to_regclass('taskengine.nodes')").fetchone() == (None,)
    writer.close()
    make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n", node_lease=LEASE).close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM taskengine.meta").fetchone() == ("4",)
