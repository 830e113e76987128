"""Values in a turn's write sent as one query (``pg_query``: bound by the client, as SQL literals
and array literals) on a database whose sessions have ``standard_conforming_strings`` off (a
backslash escapes in a plain string literal there): ids, keys, data, results and error texts that
quote, escape, format, hold the text of the writer's own conflict error, or are long, arrive as
they were; none is taken for a conflict, and a real conflict among them is still one."""

from __future__ import annotations

from typing import Any

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
