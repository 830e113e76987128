"""``pg_changes.plan``: a write's statements sent as groups of one kind leave the database as the
changes applied one after another, in their order, would (hypothesis, against a real server).

Random sequences of changes of a few tasks (create, assign with and without its counter, counter
moves and raises, start, cancel, finish, prune, delete, and again create; now and then a start and
an assign as one change, whose assign must be left out when the start misses), drawn from a model of
the rows so that most apply and some miss (a start of a row no longer PENDING), fail (a counter
moved from a value it no longer has, a limit passed, a key twice) or touch a task deleted earlier
in the same write. Each sequence runs twice from the same rows, in a transaction rolled back
after: through the writer's own ``_statements`` (``plan``'s groups, set-based statements, sent as
one query with their checks; group by group when a change goes on after a start), and
statement by statement in the changes' order, with the writer's rules (a soft statement that
changes no row is a miss and ends its change; another row count than expected rolls it all
back). Both must end alike: rolled back, or the same misses and the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pg import PgServer
from taskengine.storage import Execution, ExecutionStatus, Task, open_store, records
from taskengine.storage.interface import Change
from taskengine.storage.pg_writer import _Conflict

pytestmark = pytest.mark.timeout(120)

TASKS = ("a", "b", "c")
NOW = 1_700_000_000.0


class _Rollback(Exception):
    """The reference run's transaction fails (a row count not as expected)."""


@attrs.define
class _Task:
    """What the model believes of a task's rows (it follows each change as if it applied)."""

    exists: bool
    counter: int = 0  # the counter on disk
    next: int = 0  # the next index handed out
    mark: int = 0
    rows: dict[int, Execution] = attrs.Factory(dict)
    incarnation: int = 0
    limit: int | None = None


@attrs.define
class _Setup:
    store: Any
    writer: Any
    url: str


@pytest.fixture(scope="module")
def setup(pg_server: PgServer) -> Iterator[_Setup]:
    """A database whose tasks a and b have rows in every state (a has max_executions 7); c is
    absent. Made by the writer itself, as a node."""
    url = pg_server.create_database()
    store = open_store(url, create=True, node_id="planner")
    writer = store.writer(sync=True)
    try:
        changes = store.changes
        writes: list[Change] = []
        for task_id, t in _initial().items():
            if t.exists:
                writes.append(changes.create_task(Task(id=task_id, job="j", created_at=NOW,
                                                       incarnation=f"{task_id}0", max_executions=t.limit)))
                writes += [changes.assign(ex, started=ex.status is ExecutionStatus.RUNNING) for ex in t.rows.values()]
        writer.write(writes)
        yield _Setup(store, writer, url)
    finally:
        writer.close()
        store.close()


def _initial() -> dict[str, _Task]:
    def rows(task_id: str, statuses: str) -> dict[int, Execution]:
        out = {}
        for index, code in enumerate(statuses):
            ex = _pending(task_id, index, _id(1000 * ord(task_id) + index), key=f"k{index}" if index % 2 else None)
            if code != "P":
                ex = records.started(ex, NOW)
            if code == "S":
                ex = records.finished(ex, ExecutionStatus.SUCCESS, NOW)
            out[index] = ex
        return out

    return {
        "a": _Task(True, 4, 4, rows=rows("a", "SRPP"), limit=7),
        "b": _Task(True, 4, 4, rows=rows("b", "SSPR")),
        "c": _Task(False),
    }


def _id(n: int) -> str:
    """An execution id (a record holds a 26-character ULID)."""
    return f"{n:026d}"


def _pending(task_id: str, index: int, execution_id: str, key: str | None = None) -> Execution:
    return Execution(id=execution_id, task_id=task_id, index=index, status=ExecutionStatus.PENDING,
                     blocking=False, data={"i": index}, created_at=NOW, idempotency_key=key)


#: a change as the test draws it (made into statements by the store's PostgresChanges)
Spec = tuple[Any, ...]


@st.composite
def _sequences(draw: st.DrawFn) -> list[Spec]:
    model = _initial()
    made = 0
    out: list[Spec] = []

    def rare() -> bool:  # a change that misses or fails: a few of them
        return draw(st.integers(0, 19)) == 0

    for _ in range(draw(st.integers(1, 24))):
        task_id = draw(st.sampled_from(TASKS))
        t = model[task_id]
        kind = draw(st.sampled_from(["create", "assign", "assign", "assign", "counter", "start", "start", "cancel",
                                     "finish", "finish", "prune", "delete"]))
        if kind == "create" and (not t.exists or rare()):
            t.incarnation += 1
            limit = draw(st.sampled_from([None, None, 3]))
            out.append(("create", Task(id=task_id, job="j", created_at=NOW, incarnation=f"{task_id}{t.incarnation}",
                                       max_executions=limit)))
            model[task_id] = _Task(True, incarnation=t.incarnation, limit=limit)
        elif kind == "assign" and (t.exists or rare()):
            made += 1
            key = draw(st.sampled_from([None, None, f"n{made}"])) if not rare() else "k1"  # k1: held already
            ex = _pending(task_id, t.next, _id(10**6 + made), key)
            started = draw(st.booleans())
            if started:
                ex = records.started(ex, NOW)
            with_counter = draw(st.booleans()) and (t.limit is None or t.next < t.limit or rare())
            out.append(("assign", ex, with_counter, started))
            t.rows[t.next] = ex
            t.next += 1
            if with_counter:
                t.counter = max(t.counter, t.next)
        elif kind == "counter" and (t.exists or rare()):
            was = t.counter + 1 if rare() else draw(st.sampled_from([t.counter, None]))  # +1: moved meanwhile
            out.append(("counter", task_id, t.next, was))
            t.counter = t.next if was is None else t.next if was == t.counter else t.counter
        elif kind in ("start", "cancel", "finish") and (t.rows or rare()):
            index = draw(st.sampled_from(sorted(t.rows))) if t.rows else draw(st.integers(0, 5))
            ex = t.rows.get(index) or _pending(task_id, index, _id(1000 * ord(task_id) + index))
            if kind == "start":
                changed, applies = records.started(ex, NOW), ex.status is ExecutionStatus.PENDING
            elif kind == "cancel":
                changed = records.finished(attrs.evolve(ex, started_at=None), ExecutionStatus.CANCELLED, NOW)
                applies = ex.status is ExecutionStatus.PENDING
            else:
                status = draw(st.sampled_from([ExecutionStatus.SUCCESS, ExecutionStatus.FAILED]))
                running = ex if ex.started_at is not None else records.started(ex, NOW)
                changed, applies = records.finished(running, status, NOW), ex.status is ExecutionStatus.RUNNING
            then = None
            if kind == "start" and t.exists and rare():  # and an assign in the same change
                made += 1
                then = _pending(task_id, t.next, _id(10**6 + made))
            out.append(("update", changed) if then is None else ("update+assign", changed, then))
            if applies:  # else it misses (the model follows the rows)
                t.rows[index] = changed
                if then is not None:
                    t.rows[t.next] = then
                    t.next += 1
        elif kind == "prune" and t.exists:
            run = []
            index = t.mark
            while index in t.rows and t.rows[index].status.is_finished and len(run) < draw(st.integers(1, 4)):
                run.append(t.rows[index])
                index += 1
            if run:
                out.append(("prune", task_id, run, index))
                for ex in run:
                    del t.rows[ex.index]
                t.mark = index
        elif kind == "delete" and (t.exists or rare()):
            out.append(("delete", task_id))
            model[task_id] = _Task(False, incarnation=t.incarnation)
    return out


def _changes(store: Any, specs: list[Spec]) -> list[Change]:
    changes = store.changes
    out: list[Change] = []
    for spec in specs:
        kind = spec[0]
        if kind == "create":
            out.append(changes.create_task(spec[1]))
        elif kind == "assign":
            out.append(changes.assign(spec[1], with_counter=spec[2], started=spec[3]))
        elif kind == "counter":
            out.append(changes.counter(spec[1], spec[2], spec[3]))
        elif kind == "update":
            out.append(changes.update(spec[1]))
        elif kind == "update+assign":
            out.append(changes.update(spec[1]) + changes.assign(spec[2], with_counter=False))
        elif kind == "prune":
            out.append(changes.prune(spec[1], spec[2], spec[3]))
        else:
            out.append(changes.delete_task(spec[1]))
    return out


def _rows(cur: Any) -> tuple[Any, ...]:
    tasks = cur.execute("SELECT id, record, counter, prune_mark, max_executions, incarnation FROM taskengine.tasks "
                        "ORDER BY id").fetchall()
    executions = cur.execute("SELECT task_id, idx, id, status, idempotency_key, record, runner, runner_epoch "
                             "FROM taskengine.executions ORDER BY task_id, idx").fetchall()
    live = cur.execute("SELECT task_id, idx FROM taskengine.live ORDER BY task_id, idx").fetchall()
    return tuple(tasks), tuple(executions), tuple(live)


def _planned(conn: Any, writer: Any, changes: list[Change]) -> Any:
    """Through the writer: plan's groups, each one statement."""
    try:
        missed = writer._statements(conn, changes)
        with conn.cursor() as cur:
            return "applied", missed, _rows(cur)
    except (_Conflict, psycopg.Error):
        return "rolled back"
    finally:
        conn.rollback()


def _one_by_one(conn: Any, changes: list[Change]) -> Any:
    """Each statement on its own, in the changes' order, with the writer's rules."""
    missed = []
    try:
        with conn.cursor() as cur:
            for position, change in enumerate(changes):
                for stmt in change:
                    cur.execute(stmt.sql, stmt.params)
                    if stmt.soft and cur.rowcount == 0:
                        missed.append(position)
                        break  # the rest of a change that missed is not written
                    if not stmt.soft and stmt.expect is not None and cur.rowcount != stmt.expect:
                        raise _Rollback()
            return "applied", missed, _rows(cur)
    except (_Rollback, psycopg.Error):
        return "rolled back"
    finally:
        conn.rollback()


_seen: dict[str, int] = {}
_grouped: list[str] = []  # the outcomes of the writes that went group by group


def _start_and_assign(index: int, made: int) -> Spec:
    """A start of task a's row ``index`` (from _initial) and an assign as one change."""
    row = _initial()["a"].rows[index]
    return ("update+assign", records.started(row, NOW), _pending("a", 4, _id(10**6 + made)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_sequences())
# a write that goes group by group, every run (random sequences draw one rarely): its start
# applies, then one whose start misses (a RUNNING row), so its assign must be left out
@example(specs=[_start_and_assign(2, 1), ("update", records.finished(records.started(_initial()["b"].rows[2], NOW),
                                                                   ExecutionStatus.SUCCESS, NOW))])
@example(specs=[_start_and_assign(1, 2), ("assign", _pending("b", 4, _id(10**6 + 3)), True, False)])
def test_plan_leaves_the_rows_as_the_changes_one_after_another(setup: _Setup, specs: list[Spec]) -> None:
    changes = _changes(setup.store, specs)
    with psycopg.connect(setup.url) as conn:
        reference = _one_by_one(conn, changes)
        planned = _planned(conn, setup.writer, changes)
    outcome = "rolled back" if reference == "rolled back" else "missed" if reference[1] else "applied"
    _seen[outcome] = _seen.get(outcome, 0) + 1
    if any(len(change) > 1 and change[0].soft for change in changes):
        _grouped.append(outcome)
    assert planned == reference


def test_the_sequences_mostly_apply() -> None:
    """The property above is not vacuous: most of its sequences applied (with misses too)."""
    if not _seen:
        pytest.skip("runs after the property test")
    assert _seen.get("applied", 0) + _seen.get("missed", 0) >= sum(_seen.values()) // 2, _seen
    assert _seen.get("missed", 0) > 0, _seen
    assert _grouped, "no write went group by group"


def test_every_statement_with_a_row_count_is_checked_as_made_at_import() -> None:
    """A write sent as one query checks each row count in SQL (pg_query._checked), each counted
    statement made so once, when the module is imported (pg_changes.COUNTED): every statement a
    change must change a number of rows with is among them, in each of its forms, and a statement
    that cannot be checked so is refused, never sent unchecked."""
    from taskengine.storage import pg_changes, pg_query

    class _Store:
        node = None

    changes = pg_changes.PostgresChanges(_Store())  # type: ignore[arg-type]
    task = Task(id="t", job="j", created_at=NOW, incarnation="i")
    ex = _pending("t", 0, _id(1))
    made = [changes.create_task(task), changes.assign(ex), changes.counter("t", 1, 0), changes.counter("t", 1),
            changes.prune("t", [records.finished(records.started(ex, NOW), ExecutionStatus.SUCCESS, NOW)], 1),
            changes.update(records.started(ex, NOW)), changes.delete_task("t")]
    counted = [stmt for change in made for stmt in change if stmt.expect is not None and not stmt.soft]
    assert len(counted) == 6
    for stmt in counted:
        assert stmt.sql in pg_changes.COUNTED
        assert not stmt.batch or stmt.batch in pg_changes.COUNTED
    assert set(pg_query._CHECKED) == set(pg_changes.COUNTED)
    for sql in ("WITH x AS (SELECT 1) UPDATE taskengine.tasks SET counter = 1",
                "UPDATE taskengine.tasks SET counter = 1 RETURNING id", " with x AS (SELECT 1) DELETE FROM t"):
        with pytest.raises(ValueError, match="cannot be checked"):
            pg_query._checked(sql)
