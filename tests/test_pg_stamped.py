"""Stamped turns: a turn that only hands out indexes (keyless, non-blocking triggers of tasks the
node has cached) locks and reads nothing before its write; its one query moves each counter from
the value the row holds then, and every index the turn assumed moves by as much (its *shift*).

Each test makes the assumption wrong on purpose: node A caches a task, node B hands out indexes of
it, then A triggers. A's answer, the stored record, the run's ``ctx.index`` and the hooks must all
carry the index the write decided, and the indexes stay unique and gap-free. A commit in doubt
(``pg_proxy.CommitCutter``) is settled as any other: by the write mark, then by where its
executions went.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Gate, Recorder, check_db, poll_until
from pg import PgServer
from pg_proxy import CommitCutter
from taskengine import Execution, ExecutionStatus, Hooks
from taskengine.storage import Task, open_store
from taskengine.storage.pg_changes import stamped
from taskengine.storage.pg_writer import _PLANNER
from test_pg_plan import NOW, _id, _pending

pytestmark = pytest.mark.timeout(90)


def _stamped(engine: Any) -> int:
    """Stamped writes the engine's writer (every lane) has made."""
    return int(engine._committer.stamped)


def test_a_stamped_trigger_gets_the_index_its_write_decided(make_engine: Any, pg_url: str) -> None:
    """A assumes index 1 (its cached counter); B has handed out 1 and 2 meanwhile: A's execution is
    index 3 in its answer, its record, its run (started by its trigger, on an idle executor: the
    RUNNING row moved too, or its finish would miss it) and its hooks' events."""
    rec = Recorder()
    seen: list[tuple[str, int | None]] = []

    class Seen(Hooks):
        def on_trigger(self, execution: Execution) -> None:
            seen.append(("trigger", execution.index))

        def on_start(self, execution: Execution) -> None:
            seen.append(("start", execution.index))

    a = make_engine(pg_url, jobs={"rec": rec}, node_id="a", hooks=[Seen()])
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    first = a.trigger("t")
    by_b = [b.trigger("t"), b.trigger("t")]
    before = _stamped(a)
    by_a = a.trigger("t")
    assert _stamped(a) == before + 1, "A's trigger was not a stamped turn"
    assert [first.index, *(ex.index for ex in by_b), by_a.index] == [0, 1, 2, 3]
    done = a.wait("t", by_a.id, timeout=WAIT)
    assert done.status is ExecutionStatus.SUCCESS and done.index == 3
    assert (by_a.id, 3) in [(c[0], c[1]) for c in rec.calls]
    assert ("trigger", 3) in seen and ("start", 3) in seen
    assert a.trigger("t").index == 4
    for engine in (a, b):
        engine.close()
    check_db(pg_url)


def test_a_stamped_trigger_of_a_task_made_again_elsewhere_is_decided_again(
        make_engine: Any, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """B deletes A's cached task and creates it again (another incarnation, counter 0): A's stamped
    write finds the incarnation changed, writes nothing, and the turn is decided again against the
    row as it stands: index 0 of the new task, not an index of the old one."""
    caplog.set_level(logging.INFO, logger="taskengine")
    rec = Recorder()
    a = make_engine(pg_url, jobs={"rec": rec}, node_id="a")
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    for ex in [a.trigger("t") for _ in range(3)]:  # finished: A's next message about t is its trigger
        assert a.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    b.delete_task("t")
    b.create_task("t", job="rec")
    again = a.trigger("t")
    assert again.index == 0
    assert "deleted, made again or limited by another node before its write" in caplog.text
    assert a.wait("t", again.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert b.trigger("t").index == 1
    for engine in (a, b):
        engine.close()
    check_db(pg_url)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_stamped_write_in_doubt_is_settled_with_its_shift(
        make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter, when: str) -> None:
    """A's stamped write is cut at COMMIT, B having handed out indexes since A's last turn.
    ``after``: it committed; A reads where its execution went and answers that index. ``before``:
    it did not; B hands out one more while A cannot reconnect, and A's write sent again is given
    the index after it."""
    dbname = pg_url.rsplit("/", 1)[1]
    rec = Recorder()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"rec": rec}, node_id="a")
    b = make_engine(pg_url, jobs={"rec": rec}, node_id="b")
    a.create_task("t", job="rec")
    a.trigger("t")
    b.trigger("t")
    b.trigger("t")
    by_b: list[Any] = []
    if when == "before":
        cutter.arm("before", meanwhile=lambda: by_b.append(b.trigger("t")))
    else:
        cutter.arm("after")
    out: list[Any] = []
    caller = threading.Thread(target=lambda: out.append(a.trigger("t")))
    caller.start()
    caller.join(WAIT)
    assert not caller.is_alive() and cutter.cut.is_set() and not cutter.failures
    assert out[0].index == (4 if when == "before" else 3)
    assert [ex.index for ex in by_b] == ([3] if when == "before" else [])
    assert a.wait("t", out[0].id, timeout=WAIT).index == out[0].index
    assert a.trigger("t").index == out[0].index + 1
    for engine in (a, b):
        engine.close()
    check_db(pg_url)


def test_a_stamped_turn_too_big_for_one_query_is_written_group_by_group(
        make_engine: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stamped turn whose values are more bytes than one query takes (``pg_query.MAX_VALUES``,
    made small here) is decided again, locked first, and written group by group: answered, stored."""
    from taskengine.storage import pg_query

    monkeypatch.setattr(pg_query, "MAX_VALUES", 1000)
    rec = Recorder()
    a = make_engine(pg_url, jobs={"rec": rec}, node_id="a")
    a.create_task("t", job="rec")
    before = _stamped(a)
    big = a.trigger("t", {"blob": "x" * 4000})
    assert _stamped(a) == before
    assert big.index == 0 and a.wait("t", big.id, timeout=WAIT).data == {"blob": "x" * 4000}
    assert a.trigger("t").index == 1 and _stamped(a) == before + 1
    a.close()
    check_db(pg_url)


def test_after_another_node_moved_its_task_a_turn_waits_for_as_many_triggers_as_it_answered(
        make_engine: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's stamped turn of three triggers finds that B moved the counter: A's next turn waits for
    three triggers (up to GATHER_SECONDS, made long here so that the test does not race it) and
    writes them together. Without that wait the first of them is written alone."""
    from taskengine.actors import turn as turn_module

    monkeypatch.setattr(turn_module, "GATHER_SECONDS", WAIT)
    gate = Gate()  # the executions run until the test ends: no finish reaches A's counter actor meanwhile
    a = make_engine(pg_url, jobs={"rec": gate}, node_id="a", counter_actors=1)
    b = make_engine(pg_url, jobs={"rec": gate}, node_id="b")
    a.create_task("t", job="rec")
    a.trigger("t")
    b.trigger("t")
    writer, actor = a._committer, a._refs.counters[0]._actor_weakref()
    begin, release, entered = writer.begin_stamped, threading.Event(), threading.Event()

    def held(tasks: Any) -> Any:  # A's next turn is held until two more triggers wait behind it
        entered.set()
        assert release.wait(WAIT)
        return begin(tasks)

    monkeypatch.setattr(writer, "begin_stamped", held)
    answers: list[Any] = []

    def trigger() -> threading.Thread:
        thread = threading.Thread(target=lambda: answers.append(a.trigger("t")), daemon=True)
        thread.start()
        return thread

    threads = [trigger()]
    assert entered.wait(WAIT), "the first trigger's turn did not begin"
    threads += [trigger(), trigger()]
    poll_until("two triggers wait behind the held turn", lambda: actor.actor_inbox.qsize() >= 2)
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(ex.index for ex in answers) == [2, 3, 4]  # one turn, after B's index 1
    monkeypatch.setattr(writer, "begin_stamped", begin)
    gather, gathering = actor._gather_more, threading.Event()

    def watched(batch: Any) -> None:
        gathering.set()
        gather(batch)

    monkeypatch.setattr(actor, "_gather_more", watched)
    before = _stamped(a)
    threads = [trigger()]
    assert gathering.wait(WAIT), "the next turn did not wait for more triggers"
    assert _stamped(a) == before, "the first trigger was written alone"
    threads += [trigger(), trigger()]
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert _stamped(a) == before + 1
    assert sorted(ex.index for ex in answers[3:]) == [5, 6, 7]
    gate.release()
    for engine in (a, b):
        engine.close()
    check_db(pg_url)


def test_a_stamped_write_of_a_node_whose_lease_ended_writes_nothing(make_engine: Any, pg_url: str) -> None:
    """The fence is in the stamped query itself: a node whose lease ended before its heartbeat could
    tell (here the heartbeat is stopped, and the lease made past in the database) writes nothing,
    and its caller is told that it lost its lease."""
    import psycopg

    from taskengine import errors

    a = make_engine(pg_url, jobs={"rec": Recorder()}, node_id="a")
    a.create_task("t", job="rec")
    a.trigger("t")
    before = _stamped(a)
    a._committer._heartbeat.stop()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE taskengine.nodes SET lease_until = clock_timestamp() - interval '1 second' "
                      "WHERE id = 'a'")
    with pytest.raises(errors.StorageError, match="lost its lease"):
        a.trigger("t")
    assert _stamped(a) == before
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT counter FROM taskengine.tasks WHERE id = 't'").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM taskengine.executions").fetchone() == (1,)


def test_a_stamped_write_over_many_tasks_moves_each_by_its_own_shift_and_reads_its_rows_once(
        pg_server: PgServer) -> None:
    """One stamped write over twelve tasks, of which another node moved each by 0 to 3: every
    execution lands at its own task's shift, and the statement's plan (made as the writer makes it:
    generic, its planner settings) reads the write's rows once, not once per task (a join of the
    moved counters to the rows that rescans the rows for each task costs the server a read of
    every row per task)."""
    url = pg_server.create_database()
    mine, other = (open_store(url, create=True, node_id=n) for n in ("w1", "w2"))
    writers = [s.writer(sync=True) for s in (mine, other)]
    try:
        tasks = {f"t{k}": Task(id=f"t{k}", job="j", created_at=NOW, incarnation=f"i{k}") for k in range(12)}
        writers[0].write([mine.changes.create_task(t) for t in tasks.values()])
        moved = {task_id: k % 4 for k, task_id in enumerate(tasks)}
        ids = {task_id: 1000 * k for k, task_id in enumerate(tasks)}  # +0..: A's, +100..: B's, +200..: again
        writers[1].write([other.changes.assign(_pending(task_id, i, _id(ids[task_id] + 100 + i)))
                          for task_id, n in moved.items() for i in range(n)])
        changes = []
        for task_id in tasks:  # as a stamped turn makes them: two executions, then the counter
            changes += [mine.changes.assign(_pending(task_id, i, _id(ids[task_id] + i)), with_counter=False)
                        for i in range(2)]
            changes.append(mine.changes.counter(task_id, 2, 0))
        assert writers[0].begin_stamped({t.id: t.incarnation for t in tasks.values()})
        assert writers[0].write_stamped(changes) == moved
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT task_id, idx, id FROM taskengine.executions").fetchall()
            assert sorted(rows) == sorted([(t, moved[t] + i, _id(ids[t] + i)) for t in tasks for i in range(2)]
                                          + [(t, i, _id(ids[t] + 100 + i)) for t in tasks for i in range(moved[t])])
            for name, value in _PLANNER.items():
                conn.execute(f"SET {name} = '{value}'")
            again = [mine.changes.assign(_pending(t, moved[t] + 2 + i, _id(ids[t] + 200 + i)), with_counter=False)
                     for t in tasks for i in range(2)]
            stamp = stamped([*again, *(mine.changes.counter(t, moved[t] + 4, moved[t] + 2) for t in tasks)],
                            {t.id: t.incarnation for t in tasks.values()})
            (plan,), = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + stamp.sql, stamp.params).fetchall()
            conn.rollback()
        scans = list(_nodes(plan[0]["Plan"], "Function Scan"))
        assert len(scans) == 2 and all(s["Actual Loops"] == 1 for s in scans), scans
    finally:
        for w in writers:
            w.close()
        mine.close()
        other.close()


def _nodes(node: dict[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    """The nodes of an EXPLAIN (FORMAT JSON) plan of ``kind``."""
    if node["Node Type"] == kind:
        yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child, kind)
