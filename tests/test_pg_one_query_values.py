"""Values in a turn's write sent as one query (``pg_query``: bound by the client, as SQL literals
and array literals) on a database whose sessions have ``standard_conforming_strings`` off (a
backslash escapes in a plain string literal there): ids, keys, data, results and error texts that
quote, escape, format, hold the text of the writer's own conflict error, or are long, arrive as
they were; none is taken for a conflict, and a real conflict among them is still one."""

from __future__ import annotations

from typing import Any

import attrs
import psycopg
import pytest

from engine_helpers import WAIT, Recorder, check_db
from pg import PgServer
from taskengine import ExecutionStatus, storage
from taskengine.storage import Execution, Task

pytestmark = pytest.mark.timeout(60)

#: what the writer's conflict check says (pg_query), and what would break a literal out
CONFLICT = "taskengine: a change did not apply as expected (0 rows, not 1)"
HOSTILE = ["it's", "back\\slash\\", "\\'; DROP TABLE taskengine.tasks; --", "E'\\x00'", "$$ $x$ %s %(x)s 100%",
           'say "hi" {a,b} NULL', CONFLICT, f'"{CONFLICT}"', "ünïcødé ✓ 日本"]


@pytest.fixture
def off_url(pg_server: PgServer) -> str:
    url = pg_server.create_database()
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET standard_conforming_strings = off')
        conn.execute(f'ALTER DATABASE "{dbname}" SET escape_string_warning = off')
    with psycopg.connect(url) as conn:
        assert conn.info.parameter_status("standard_conforming_strings") == "off"
    return url


def _fails(ctx: Any) -> Any:
    raise RuntimeError(ctx.data["say"])


def test_hostile_values_with_standard_conforming_strings_off(make_engine: Any, off_url: str) -> None:
    rec = Recorder(lambda ctx: {"said": ctx.data["say"], "task": ctx.task_id})
    engine = make_engine(off_url, jobs={"rec": rec, "fails": _fails})
    long = "\\'" * 20_000
    for tid in HOSTILE:
        engine.create_task(tid, job="rec", config={"id": tid})
        engine.create_task(tid + "!", job="fails")
    done: list[Any] = []
    for tid in HOSTILE:
        for say in (*HOSTILE, long):
            done.append(engine.trigger(tid, {"say": say}, idempotency_key=tid + say[:500] + "\x00'"))
            done.append(engine.trigger(tid + "!", {"say": say}))
    for ex in done:
        finished = engine.wait(ex.task_id, ex.id, timeout=WAIT)
        say = ex.data["say"]
        if ex.task_id.endswith("!"):
            assert finished.status is ExecutionStatus.FAILED
            assert say in finished.error
        else:
            assert finished.result == {"said": say, "task": ex.task_id}
    for tid in HOSTILE:
        assert engine.trigger(tid, {"say": "again"}, idempotency_key=tid + HOSTILE[0] + "\x00'").index == 0
        assert engine.get_task(tid).config == {"id": tid}
    assert engine.stats().write_failure is None
    make_engine.close(engine)
    disk = check_db(off_url, allow_live=False)
    assert sorted(disk) == sorted(HOSTILE + [t + "!" for t in HOSTILE])
    assert all(t.counter == len(HOSTILE) + 1 for t in disk.values())


def test_a_conflict_among_hostile_values_is_one(off_url: str) -> None:
    """A counter moved under the writer, in a write of hostile ids and data: rolled back as the
    conflict it is, whatever the values say."""
    store = storage.open_store(off_url, create=True)
    try:
        ch, writer = store.changes, store.writer()
        writer.write([ch.create_task(Task(id=t, job="j", incarnation=t)) for t in HOSTILE])
        made = [Execution(id=f"01J{i:023d}", task_id=t, index=0, status=ExecutionStatus.PENDING, blocking=False,
                          data={"say": t + "\u2028"}, created_at=1.0, idempotency_key=t) for i, t in enumerate(HOSTILE)]
        turn = [ch.assign(ex, with_counter=False) for ex in made] + [ch.counter(t, 1, 0) for t in HOSTILE]
        turn[-1] = ch.counter(HOSTILE[-1], 1, 5)  # not where the writer believes it is
        with pytest.raises(storage.WriteFailed) as failed:
            writer.write(turn)
        assert failed.value.outcome_unknown is False
        assert "a change did not apply as expected (8 rows, not 9)" in str(failed.value)
        assert [store.read_counter(t) for t in HOSTILE] == [0] * len(HOSTILE)
        assert all(store.last_index(t) is None for t in HOSTILE)
        writer.close()
    finally:
        store.close()


@pytest.mark.timeout(120)
def test_a_turn_of_many_large_executions(pg_url: str) -> None:
    """A turn of 280 executions of a megabyte of data each (the most an execution may hold), with
    two claims, one of which another writer won. As one query its values went as hex text, and
    the server refused a literal of 560 MB ('invalid memory alloc request size'): the writer
    failed, and wrote nothing more until reopened. Written, group by group."""
    n = 280
    store = storage.open_store(pg_url, create=True)
    try:
        ch, writer = store.changes, store.writer()
        small = [_pending(t, 0) for t in ("a", "b")]
        writer.write([ch.create_task(Task(id=t, job="j", incarnation="i")) for t in ("t", "a", "b")])
        writer.write([ch.assign(ex) for ex in small])
        writer.write([ch.update(_started(small[0]))])
        made = [Execution(id=f"01J{i:023d}", task_id="t", index=i, status=ExecutionStatus.PENDING, blocking=False,
                          data={"x": "d" * 1_000_000}, created_at=1.0) for i in range(n)]
        writer.begin(lambda: ["t", "a", "b"])
        turn = [ch.update(_started(ex)) for ex in small]
        turn += [ch.assign(ex, with_counter=False) for ex in made] + [ch.counter("t", n, 0)]
        assert list(writer.write(turn)) == [0]
        assert store.read_counter("t") == n
        assert store.get_execution_at("t", n - 1) == made[-1]
        assert [store.get_execution_at(t, 0).status for t in ("a", "b")] == [  # type: ignore[union-attr]
            ExecutionStatus.RUNNING] * 2
        writer.write([ch.assign(_pending("a", 1))])  # and it writes on
        writer.close()
    finally:
        store.close()


def test_a_write_in_parts_reports_exactly_its_misses(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write group by group sends each group in parts of at most MAX_VALUES bytes of values:
    starts and finishes in parts of one or two statements, some of which miss, report exactly
    those, and their rows end as one statement each would leave them."""
    from taskengine.storage import pg_query

    store = storage.open_store(pg_url, create=True)
    try:
        ch, writer = store.changes, store.writer()
        tasks = [f"t{i}" for i in range(6)]
        writer.write([ch.create_task(Task(id=t, job="j", incarnation="i")) for t in tasks])
        made = [_pending(t, 0) for t in tasks]
        writer.write([ch.assign(ex) for ex in made])
        writer.write([ch.update(_started(made[1]))])
        monkeypatch.setattr(pg_query, "MAX_VALUES", 2 * ch.update(_started(made[0]))[0].size)
        assert not pg_query.fits([ch.update(_started(ex)) for ex in made])
        before = writer.sent
        assert sorted(writer.write([ch.update(_started(ex)) for ex in made[:5]])) == [1]
        assert writer.sent - before == 3  # five starts, two at a time
        done = [attrs.evolve(_started(ex), status=ExecutionStatus.SUCCESS, finished_at=3.0) for ex in made]
        assert sorted(writer.write([ch.update(ex) for ex in done])) == [5]  # never started
        assert [store.get_execution_at(t, 0).status for t in tasks] == [  # type: ignore[union-attr]
            ExecutionStatus.SUCCESS] * 5 + [ExecutionStatus.PENDING]
        writer.close()
    finally:
        store.close()


def _pending(task_id: str, index: int) -> Execution:
    return Execution(id=f"01K{task_id}{index:0{23 - len(task_id)}d}", task_id=task_id, index=index,
                     status=ExecutionStatus.PENDING, blocking=False, created_at=1.0)


def _started(ex: Execution) -> Execution:
    return attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=2.0)
