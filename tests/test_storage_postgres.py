"""The PostgreSQL backend against a real server (tests/pg.py): its schema, what the database
itself enforces, hostile ids, passwords, and a commit whose outcome the client did not see.

The engine's contract tests run on this backend too (the ``store`` fixture); these are the
parts only PostgreSQL has."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from engine_helpers import HERE, WAIT, Recorder, check_db
from pg import PgServer
from pg_proxy import CommitCutter
from taskengine import ExecutionStatus, errors, storage
from taskengine.storage import Execution, Task
from taskengine.storage.interface import redact

pytestmark = pytest.mark.timeout(90)

HOSTILE_IDS = [
    "it's",
    'say "hi"',
    "back\\slash\\",
    "100%",
    "%s",
    "%(x)s",
    "'); DROP TABLE taskengine.tasks; --",
    "ünïcødé ✓ 日本",
    "a:b/c",
]


def _execution(task_id: str, index: int, key: str | None = None) -> Execution:
    return Execution(id=f"01J{index:023d}", task_id=task_id, index=index, status=ExecutionStatus.SUCCESS,
                     blocking=False, created_at=1.0, idempotency_key=key)


@contextlib.contextmanager
def _store(url: str, *, create: bool = True, **node: Any) -> Iterator[Any]:
    """The store at ``url`` (its schema made if missing, unless ``create`` is false) for the block;
    ``node``: ``node_id`` and ``node_lease``, as ``storage.open_store`` takes them."""
    store = storage.open_store(url, create=create, **node)
    try:
        yield store
    finally:
        store.close()


def _cut(cutter: CommitCutter, pg_server: PgServer, pg_url: str) -> str:
    """``pg_url``'s database reached through the commit cutter."""
    return cutter.url(pg_server.user, pg_url.rsplit("/", 1)[1])


def test_the_schema_version_is_stored_and_an_unknown_one_refused(make_engine: Any, pg_url: str) -> None:
    engine = make_engine(pg_url)
    make_engine.close(engine)
    version = "SELECT value FROM taskengine.meta WHERE name = 'schema_version'"
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(version).fetchone() == ("4",)
        conn.execute("UPDATE taskengine.meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(errors.UnknownSchema, match="schema version 99"):
        make_engine(pg_url)
    with pytest.raises(storage.UnknownSchema):
        storage.open_store(pg_url)


def test_a_tool_never_creates_the_schema(pg_url: str) -> None:
    with pytest.raises(storage.NotADatabase, match="no taskengine schema"):
        storage.open_store(pg_url, create=False)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regnamespace('taskengine')").fetchone() == (None,)


def test_a_nodes_connections_ask_for_tcp_settings_from_its_lease_unless_the_url_sets_them(pg_url: str) -> None:
    """Keepalives and a TCP user timeout from the lease (a dead peer found within about a lease;
    the cut-off node of test_pg_cluster shows what they are for), on the readers' connections and
    the feed's as on the writer's; a setting the URL gives itself is the URL's."""
    from taskengine.storage.pg_common import tcp_settings

    assert tcp_settings(pg_url, 10.0) == {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                                          "keepalives_count": 2, "tcp_user_timeout": 5000}
    assert tcp_settings(pg_url, 1.0) == {"keepalives": 1, "keepalives_idle": 1, "keepalives_interval": 1,
                                         "keepalives_count": 2, "tcp_user_timeout": 1000}
    own = pg_url + "?tcp_user_timeout=30000&keepalives_idle=7"
    assert tcp_settings(own, 10.0) == {"keepalives": 1, "keepalives_interval": 2, "keepalives_count": 2}
    db = storage.open_store(own, create=True, node_lease=10.0)
    try:
        with db._pool.connection() as conn:
            params = conn.info.get_parameters()
        assert (params["tcp_user_timeout"], params["keepalives_idle"], params["keepalives_interval"]) == \
            ("30000", "7", "2")
        feed = db.changes_feed()
        try:
            assert feed._conn is not None
            assert feed._conn.info.get_parameters()["keepalives_count"] == "2"
        finally:
            feed.release()
    finally:
        db.close()


def test_the_database_enforces_max_executions_and_unique_keys(pg_url: str) -> None:
    """What a writer asks beyond the limit, or a repeated idempotency key, is rolled back whole:
    no row of that write exists afterwards, and the writer refuses further writes."""
    with _store(pg_url) as store:
        ch = store.changes
        writer = store.writer()
        writer.write([ch.create_task(Task(id="t", job="j", max_executions=2, incarnation="i"))])
        writer.write([ch.assign(_execution("t", 0), with_counter=False), ch.counter("t", 1, 0)])
        with pytest.raises(storage.WriteFailed) as failed:  # the counter row's UPDATE refuses 3 > 2
            writer.write([ch.assign(_execution("t", 1), with_counter=False),
                          ch.assign(_execution("t", 2), with_counter=False), ch.counter("t", 3, 1)])
        assert failed.value.outcome_unknown is False
        assert store.read_counter("t") == 1 and store.last_index("t") == 0
        assert writer.refusal() is not None
        writer.close()  # a writer holds the database's writer lock until it is closed
        writer2 = store.writer()
        with pytest.raises(storage.WriteFailed):  # a counter moved from a value it no longer has
            writer2.write([ch.assign(_execution("t", 1), with_counter=False), ch.counter("t", 2, 0)])
        writer2.close()
        writer3 = store.writer()
        writer3.write([ch.assign(_execution("t", 1, key="k"), with_counter=False), ch.counter("t", 2, 1)])
        writer3.write([ch.create_task(Task(id="u", job="j", incarnation="i"))])
        writer3.write([ch.assign(_execution("u", 0, key="k"))])  # the same key on another task
        writer3.close()
        with pytest.raises(storage.WriteFailed, match="duplicate key"):
            store.writer().write([ch.assign(Execution(id="01K" + "0" * 23, task_id="u", index=1,
                                                      status=ExecutionStatus.SUCCESS, blocking=False,
                                                      idempotency_key="k"))])
        assert store.read_counter("u") == 1
    check_db(pg_url)


def test_hostile_task_ids_are_parameters_never_sql(make_engine: Any, pg_url: str) -> None:
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"rec": rec})
    for tid in HOSTILE_IDS:
        engine.create_task(tid, job="rec")
        assert engine.trigger(tid, {"id": tid}, blocking=True, timeout=WAIT).index == 0
        assert engine.trigger(tid, idempotency_key=tid + "'%").index == 1
    assert [t.id for t in engine.list_tasks(limit=100)] == sorted(HOSTILE_IDS)
    for tid in HOSTILE_IDS[::2]:
        engine.delete_task(tid)
    for tid in HOSTILE_IDS[1::2]:
        assert engine.get_task(tid).execution_count == 2
        assert [e.index for e in engine.list_executions(tid)] == [0, 1]
    make_engine.close(engine)
    disk = check_db(pg_url, allow_live=False)
    assert sorted(disk) == sorted(HOSTILE_IDS[1::2])


def test_hostile_values_in_set_based_statements_arrive_as_they_were(pg_url: str) -> None:
    """A turn's statements of one kind go as one statement with one array per column
    (storage/pgarrays.py), binary or a literal the client binds: hostile ids, idempotency keys,
    NULLs, empty and large values arrive as they were (a NUL is refused, never cut off), a whole
    turn of them is written as three statements, and claims of them that miss are known by id."""
    import attrs

    from taskengine.storage import pgarrays

    with psycopg.connect(pg_url) as conn:
        texts = [*HOSTILE_IDS, "", None, "\\x00", "{a,b}", '"', "NULL"]
        ints = [0, -1, 2**63 - 1, -(2**63), None, 7]
        blobs = [b"", b"\x00\xff", None, b"\\", "ünï".encode(), bytes(range(256))]
        got = conn.execute("SELECT array_agg(t ORDER BY n) FROM unnest(%s::text[]) WITH ORDINALITY AS v (t, n)",
                           [pgarrays.TextArray(texts)]).fetchone()
        assert got == (texts,)
        got = conn.execute("SELECT i, b FROM unnest(%s::bigint[], %s::bytea[]) AS v (i, b)",
                           [pgarrays.BigintArray(ints), pgarrays.ByteaArray(blobs)]).fetchall()
        assert got == list(zip(ints, blobs, strict=True))
        # the same as array literals the client binds (a write sent as one query: pg_query)
        texts += ["a,b", " padded ", "{", "}", "\\", '\\"', "x\ty", "é\u2028"]
        with psycopg.ClientCursor(conn) as cur:
            cur.execute("SELECT array_agg(t ORDER BY n) FROM unnest(%s::text[]) WITH ORDINALITY AS v (t, n); "
                        "SELECT i, b FROM unnest(%s::bigint[], %s::bytea[]) AS v (i, b)",
                        [pgarrays.TextArray(texts), pgarrays.BigintArray(ints), pgarrays.ByteaArray(blobs)])
            assert cur.fetchone() == (texts,)
            cur.nextset()
            assert cur.fetchall() == list(zip(ints, blobs, strict=True))
            full = [t for t in texts if t is not None]  # no NULL: quoted all at once (pgarrays._quoted_all)
            assert cur.execute("SELECT %s::text[], %s::bigint[]",
                               [pgarrays.TextArray(full), pgarrays.BigintArray([7, -1, 2**63 - 1])]).fetchone() == (
                full, [7, -1, 2**63 - 1])
            assert cur.execute("SELECT %s::text[], %s::text[]", [pgarrays.TextArray([]),
                                                                 pgarrays.TextArray([""])]).fetchone() == ([], [""])
            with pytest.raises(psycopg.DataError, match="NUL"):  # libpq's quoting would end the value there
                cur.execute("SELECT %s::text[]", [pgarrays.TextArray(["a", "b\x00c"])])
            with pytest.raises(psycopg.DataError, match="NUL"):
                cur.execute("SELECT %s::text[]", [pgarrays.TextArray(["a", "b\x00c", None])])
    with _store(pg_url) as store:
        ch, writer = store.changes, store.writer()
        writer.write([ch.create_task(Task(id=t, job="j", incarnation="i")) for t in HOSTILE_IDS])
        made = [attrs.evolve(_pending(t, 0), data={"id": t}, idempotency_key=t + "'%") for t in HOSTILE_IDS]
        turn = [ch.assign(ex, with_counter=False) for ex in made] + [ch.counter(t, 1, 0) for t in HOSTILE_IDS]
        turn += [ch.update(attrs.evolve(ex, status=ExecutionStatus.CANCELLED, finished_at=2.0)) for ex in made[:3]]
        assert _sent(writer, turn) == ([], 3)
        for ex in made:
            stored = store.get_execution(ex.task_id, ex.id)
            assert stored is not None
            assert (stored.data, stored.idempotency_key) == ({"id": ex.task_id}, ex.idempotency_key)
            assert store.find_idempotent(ex.task_id, ex.task_id + "'%") == ex.id
        assert _statuses(store, made[:4]) == ["CANCELLED"] * 3 + ["PENDING"]
        assert [store.read_counter(t) for t in HOSTILE_IDS] == [1] * len(HOSTILE_IDS)
        # claims of every id, one of them twice: the misses come back by the ids the server returns
        again = [ch.update(attrs.evolve(ex, status=ExecutionStatus.CANCELLED, finished_at=3.0)) for ex in made[2:]]
        assert _sent(writer, again + again[-1:]) == ([0, len(again)], 2)  # made[2] was cancelled already
        assert _statuses(store, made) == ["CANCELLED"] * len(made)
        writer.close()


def test_a_password_is_never_logged_or_shown(
    make_engine: Any, pg_server: PgServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-pw"
    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{secret}@")
    assert redact(url) == pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:***@")
    caplog.set_level(logging.DEBUG)
    engine = make_engine(url, jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    assert secret not in engine.path
    make_engine.close(engine)
    with pytest.raises(errors.StorageError) as refused:  # nothing listens there
        make_engine(f"postgresql://u:{secret}@127.0.0.1:1/none?connect_timeout=2")
    assert secret not in str(refused.value)
    assert "***" in str(refused.value)
    assert secret not in caplog.text


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_commit_in_doubt_is_settled_before_the_answer(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter, when: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connection is cut at COMMIT: before it reaches the server (rolled back) or after the
    server committed (the answer lost). Either way the trigger is answered with its index once,
    the execution exists exactly once, and no index is issued twice or skipped."""
    caplog.set_level(logging.WARNING, logger="taskengine.storage.pg_writer")
    engine = make_engine(_cut(cutter, pg_server, pg_url), jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    first = engine.trigger("t")
    cutter.arm(when)
    began = time.monotonic()
    second = engine.trigger("t")
    assert cutter.cut.is_set()
    assert (first.index, second.index) == (0, 1)
    third = engine.trigger("t")
    assert third.index == 2
    for ex in (first, second, third):
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert time.monotonic() - began < WAIT
    settled = "had committed" if when == "after" else "had not committed; writing it again"
    assert settled in caplog.text
    make_engine.close(engine)
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 3
    assert [disk.records[i].id for i in range(3)] == [first.id, second.id, third.id]


def test_statements_sent_together_are_each_checked(pg_url: str) -> None:
    """A turn's statements of one kind go to the server together (one set-based statement: its row
    count is their total); one of them that does not apply (a counter moved from a value it no longer
    has, among others that apply) still rolls the whole write back."""
    with _store(pg_url) as store:
        ch, writer, tasks = _with_tasks(store, 5)
        turn = [ch.assign(_execution(t, 0), with_counter=False) for t in tasks]
        turn += [ch.counter(t, 1, 0) for t in tasks]
        assert _group_sizes(turn) == [5, 5]  # the INSERTs, then the counters' UPDATEs
        writer.write(turn)
        assert [store.read_counter(t) for t in tasks] == [1] * 5
        bad = [ch.assign(_execution(t, 1), with_counter=False) for t in tasks]
        bad += [ch.counter(t, 2, 1 if t != "t3" else 0) for t in tasks]  # t3's counter is not at 0
        with pytest.raises(storage.WriteFailed) as failed:
            writer.write(bad)
        assert failed.value.outcome_unknown is False
        assert "a change did not apply as expected (4 rows, not 5)" in str(failed.value)
        assert [store.read_counter(t) for t in tasks] == [1] * 5
        assert [store.last_index(t) for t in tasks] == [0] * 5
        writer.close()
    check_db(pg_url)


@pytest.mark.timeout(60)
def test_starts_and_finishes_sent_as_one_report_exactly_their_misses(pg_url: str) -> None:
    """A turn's starts (and its finishes) go to the server as one statement; the keys it returns
    say which applied: the writer reports exactly the changes whose claim missed, the others are
    written, and only finishes that applied notify other nodes."""
    import attrs

    from taskengine.storage.pgfeed import CHANNEL

    with _store(pg_url) as store, psycopg.connect(pg_url, autocommit=True) as listener:
        ch, writer, tasks = _with_tasks(store, 8)
        pending = {t: attrs.evolve(_execution(t, 0), status=ExecutionStatus.PENDING) for t in tasks}
        writer.write([ch.assign(ex, with_counter=False) for ex in pending.values()])

        def start(t: str) -> list[Any]:
            return ch.update(attrs.evolve(pending[t], status=ExecutionStatus.RUNNING, started_at=2.0))

        def finish(t: str) -> list[Any]:
            return ch.update(attrs.evolve(pending[t], status=ExecutionStatus.SUCCESS, started_at=2.0,
                                          finished_at=3.0))

        assert list(writer.write([start("t1"), start("t3")])) == []
        starts = [start(t) for t in tasks[:5]]
        assert _group_sizes(starts) == [5]  # one statement for the five
        assert sorted(writer.write(starts)) == [1, 3]  # t1's and t3's were claimed already
        statuses = {t: store.get_execution(t, pending[t].id).status for t in tasks}  # type: ignore[union-attr]
        assert statuses == {"t0": ExecutionStatus.RUNNING, "t1": ExecutionStatus.RUNNING,
                            "t2": ExecutionStatus.RUNNING, "t3": ExecutionStatus.RUNNING,
                            "t4": ExecutionStatus.RUNNING, "t5": ExecutionStatus.PENDING,
                            "t6": ExecutionStatus.PENDING, "t7": ExecutionStatus.PENDING}
        # one execution started twice in a turn: the first claims it, the second misses (one
        # set-based statement would change the row once and return its key once: not one group)
        assert list(writer.write([start("t7"), start("t7")])) == [1]

        listener.execute(f"LISTEN {CHANNEL}")
        assert sorted(writer.write([finish("t5"), finish("t4")])) == [0]  # t5 never started
        assert store.get_execution("t5", pending["t5"].id).status is ExecutionStatus.PENDING  # type: ignore[union-attr]
        assert sorted(writer.write([finish("t5"), finish("t6")])) == [0, 1]  # both miss: no notice
        assert list(writer.write([ch.assign(_pending("t5", 1), with_counter=False)])) == []
        got = [n.payload for n in listener.notifies(timeout=WAIT, stop_after=2)]
        assert got == ["f", "p"]  # the finish that applied, then the next write's; none between
        writer.close()


def _pending(task_id: str, index: int) -> Execution:
    return Execution(id=f"01K{index:023d}", task_id=task_id, index=index, status=ExecutionStatus.PENDING,
                     blocking=False, created_at=1.0)


def _with_tasks(store: Any, n: int) -> tuple[Any, Any, list[str]]:
    """The store's changes and its writer, and ``n`` new tasks t0, t1, ... it wrote."""
    ch, writer = store.changes, store.writer()
    tasks = [f"t{i}" for i in range(n)]
    writer.write([ch.create_task(Task(id=t, job="j", incarnation="i")) for t in tasks])
    return ch, writer, tasks


def _plan(turn: list[Any]) -> list[list[int]]:
    """The turn's statements as the writer sends them: each statement it sends, as the positions
    of the changes it holds."""
    from taskengine.storage.pg_changes import plan

    return [[position for position, _ in group]
            for group in plan([(position, stmt) for position, change in enumerate(turn) for stmt in change])]


def _group_sizes(turn: list[Any]) -> list[int]:
    """How many statements the writer sends as one, statement by statement."""
    return [len(group) for group in _plan(turn)]


def _sent(writer: Any, turn: list[Any]) -> tuple[list[int], int]:
    """``writer.write(turn)``: its misses, and how many statements it sent."""
    before = writer.sent
    missed = sorted(writer.write(turn))
    return missed, writer.sent - before


def _statuses(store: Any, executions: list[Execution]) -> list[str]:
    out = []
    for ex in executions:
        got = store.get_execution(ex.task_id, ex.id)
        out.append("-" if got is None else got.status.value)
    return out


@pytest.mark.timeout(60)
def test_a_turns_statements_are_sent_by_kind_whatever_their_order(pg_url: str) -> None:
    """A turn as executors and callers make it: triggers' INSERTs, finishes and starts of other
    executions, interleaved, over several tasks, then the counters. Each kind is one statement,
    every change applies (or misses) as it would have one statement at a time, in order."""
    import attrs

    with _store(pg_url) as store:
        ch, writer, tasks = _with_tasks(store, 4)
        old = [_pending(t, 0) for t in tasks] + [_pending(t, 1) for t in tasks]
        writer.write([ch.assign(ex, with_counter=False) for ex in old] + [ch.counter(t, 2, 0) for t in tasks])
        writer.write([ch.update(attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=2.0)) for ex in old[:4]])
        new = [_pending(t, 2) for t in tasks]
        turn: list[Any] = []
        for ran, waiting, fresh in zip(old[:4], old[4:], new, strict=True):
            turn.append(ch.assign(fresh, with_counter=False))
            turn.append(ch.update(attrs.evolve(ran, status=ExecutionStatus.SUCCESS, started_at=2.0, finished_at=3.0)))
            turn.append(ch.update(attrs.evolve(waiting, status=ExecutionStatus.RUNNING, started_at=4.0)))
        turn.append(ch.update(attrs.evolve(old[5], status=ExecutionStatus.RUNNING, started_at=4.0)))  # twice
        turn += [ch.counter(t, 3, 2) for t in tasks]
        assert _sent(writer, turn) == ([12], 5)  # the second start of one execution misses
        assert _statuses(store, old + new) == ["SUCCESS"] * 4 + ["RUNNING"] * 4 + ["PENDING"] * 4
        assert [store.read_counter(t) for t in tasks] == [3] * 4
        assert _group_sizes(turn) == [4, 4, 4, 1, 4]  # INSERTs, finishes, starts, the second start, counters
        writer.close()
    check_db(pg_url)


@pytest.mark.timeout(60)
def test_statements_that_touch_one_row_or_task_keep_their_order(pg_url: str) -> None:
    """What the order by kind must not reorder: two statements of one execution (a cancel after a
    start of it misses, not the other way round), a deletion of a task between its statements
    (before it: gone with it; after: on the task made again), and the rest of a change whose soft
    statement missed (left out, though statements of its kind were sent before)."""
    import attrs

    with _store(pg_url) as store:
        ch, writer, tasks = _with_tasks(store, 4)
        a, b = _pending("t0", 0), _pending("t1", 0)
        writer.write([ch.assign(a), ch.assign(b)])
        cancel_b = ch.update(attrs.evolve(b, status=ExecutionStatus.CANCELLED, finished_at=2.0))
        start_a = ch.update(attrs.evolve(a, status=ExecutionStatus.RUNNING, started_at=2.0))
        cancel_a = ch.update(attrs.evolve(a, status=ExecutionStatus.CANCELLED, finished_at=2.0))
        assert _sent(writer, [cancel_b, start_a, cancel_a]) == ([2], 3)  # a started, then its cancel missed
        assert _statuses(store, [a, b]) == ["RUNNING", "CANCELLED"]
        assert _plan([cancel_b, start_a, cancel_a]) == [[0], [1], [2]]

        # t3 deleted; t2: an old execution, the task deleted and made again, its new first
        # execution; t1's next execution by the way. Sent by kind, a deletion of t2 must still come
        # after t2's INSERT before it (not with t3's), and the new INSERT after t2 is made again
        gone, again, other = _pending("t2", 3), _pending("t2", 0), _pending("t1", 1)
        turn = [ch.delete_task("t3"), ch.assign(gone, with_counter=False), ch.delete_task("t2"),
                ch.assign(other, with_counter=False), ch.create_task(Task(id="t2", job="j", incarnation="i2")),
                ch.assign(again, with_counter=False)]
        assert _sent(writer, turn) == ([], 5)
        assert _statuses(store, [gone, again, other]) == ["-", "PENDING", "PENDING"]
        assert store.get_task("t3") is None
        assert _plan(turn) == [[0], [1, 3], [2], [4], [5]]

        # a change of two statements whose first (soft) misses: its second is left out, though the
        # INSERTs of the changes around it went first, as one statement
        started_b = ch.update(attrs.evolve(b, status=ExecutionStatus.RUNNING, started_at=3.0))  # b is CANCELLED
        held = _pending("t0", 1)
        around = [_pending("t1", 2), _pending("t2", 1)]
        turn = [ch.assign(around[0], with_counter=False), started_b + ch.assign(held, with_counter=False),
                ch.assign(around[1], with_counter=False)]
        assert _sent(writer, turn) == ([1], 2)  # the INSERTs, the start that missed; not the INSERT after it
        assert _statuses(store, [*around, held]) == ["PENDING", "PENDING", "-"]
        assert _plan(turn) == [[0, 2], [1], [1]]
        writer.close()


@pytest.mark.timeout(60)
def test_a_commit_in_doubt_that_committed_reports_its_misses(pg_server: PgServer, pg_url: str,
                                                             cutter: CommitCutter) -> None:
    """A turn's claim that another node won misses; if the turn's COMMIT then goes through and its
    answer is lost, the writer knows the miss again (it is stored with the write mark): the node
    must not run an execution another node runs."""
    import attrs

    with _store(_cut(cutter, pg_server, pg_url), node_id="a") as store, \
            _store(pg_url, create=False, node_id="b") as other:
        ch, writer, tasks = _with_tasks(store, 2)
        pending = [attrs.evolve(_execution(t, 0), status=ExecutionStatus.PENDING) for t in tasks]
        writer.write([ch.assign(ex) for ex in pending])
        theirs = other.writer()
        started = [attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=2.0) for ex in pending]
        assert list(theirs.write([other.changes.update(started[0])])) == []  # b claims t0's first
        cutter.arm("after")
        missed = writer.write([store.changes.update(ex) for ex in started])
        assert cutter.cut.is_set()
        assert list(missed) == [0]  # t0's claim missed, t1's applied
        assert store.get_execution("t1", started[1].id).status is ExecutionStatus.RUNNING  # type: ignore[union-attr]
        # misses of two statements (finishes and cancels), among changes that apply, known again
        done = [attrs.evolve(ex, status=ExecutionStatus.SUCCESS, finished_at=3.0) for ex in started]
        fresh = [attrs.evolve(_execution(t, 1), status=ExecutionStatus.PENDING) for t in tasks]
        cancelled = attrs.evolve(fresh[1], status=ExecutionStatus.CANCELLED, finished_at=3.0)
        gone = attrs.evolve(pending[0], status=ExecutionStatus.CANCELLED, finished_at=3.0)  # b runs it
        turn = [ch.update(done[0]), ch.assign(fresh[0]), ch.update(done[1]), ch.update(gone),
                ch.assign(fresh[1]), ch.update(cancelled), ch.update(gone)]
        cutter.arm("after")
        assert sorted(writer.write(turn)) == [0, 3, 6]  # t0's finish and cancels are b's to make
        assert cutter.cut.is_set()
        assert _statuses(store, [started[0], started[1], fresh[0], fresh[1]]) == [
            "RUNNING", "SUCCESS", "PENDING", "CANCELLED"]
        theirs.close()
        writer.close()


@pytest.mark.timeout(60)
def test_a_turn_is_two_round_trips(pg_server: PgServer, pg_url: str, cutter: CommitCutter) -> None:
    """A turn's start (BEGIN, the fence, the tasks' locks and rows) is one query, and its write
    (INSERTs, counters, starts, finishes, the notification, COMMIT) one more, whatever its kinds;
    other nodes are told once, of what applied (a finish that missed counts for nothing)."""
    import attrs

    from taskengine.storage.pgfeed import CHANNEL

    with _store(_cut(cutter, pg_server, pg_url), node_id="a") as store, \
            psycopg.connect(pg_url, autocommit=True) as listener:
        ch, writer, tasks = _with_tasks(store, 3)
        old = [_pending(t, 0) for t in tasks]
        writer.write([ch.assign(ex, with_counter=False) for ex in old] + [ch.counter(t, 1, 0) for t in tasks])
        writer.write([ch.update(attrs.evolve(old[0], status=ExecutionStatus.RUNNING, started_at=2.0))])
        listener.execute(f"LISTEN {CHANNEL}")
        port = listener.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s",
                                (writer.backend_pid(),)).fetchone()[0]

        def queries() -> int:  # the writer's
            return cutter.queries.get(port, 0)

        before = queries()
        assert [row.counter for row in writer.begin(lambda: tasks)] == [1, 1, 1]
        new = [_pending(t, 1) for t in tasks]
        turn = [ch.assign(ex, with_counter=False) for ex in new] + [ch.counter(t, 2, 1) for t in tasks]
        turn.append(ch.update(attrs.evolve(old[0], status=ExecutionStatus.SUCCESS, started_at=2.0, finished_at=3.0)))
        turn.append(ch.update(attrs.evolve(old[1], status=ExecutionStatus.SUCCESS, started_at=2.0, finished_at=3.0)))
        turn.append(ch.update(attrs.evolve(old[2], status=ExecutionStatus.RUNNING, started_at=2.0)))
        assert sorted(writer.write(turn)) == [7]  # old[1] never started: its finish misses
        assert queries() - before == 2
        assert [n.payload for n in listener.notifies(timeout=WAIT, stop_after=1)] == ["fp"]
        assert _statuses(store, old + new) == ["SUCCESS", "PENDING", "RUNNING"] + ["PENDING"] * 3
        before = queries()
        writer.begin(lambda: tasks[1:])
        assert sorted(writer.write([turn[7], ch.update(attrs.evolve(old[2], status=ExecutionStatus.RUNNING,
                                                                    started_at=4.0))])) == [0, 1]
        assert queries() - before == 2
        writer.write([ch.assign(_pending("t0", 2))])
        # nothing for the turn whose claims all missed; the next write's
        assert [n.payload for n in listener.notifies(timeout=WAIT, stop_after=1)] == ["p"]
        writer.close()
    check_db(pg_url)


@pytest.mark.timeout(60)
def test_an_open_in_a_process_out_of_threads_is_refused_and_leaves_nothing(pg_url: str) -> None:
    """A child process opens an engine with room for 0, 1, 2, ... more threads
    (thread_budget_child.py) until it opens: each refusal is a taskengine.errors exception that
    names what could not start (the store's connection pool, then its node's heartbeat, then the
    engine's actors), not threading's RuntimeError, and leaves no thread, no open file or
    connection and no lease (the node left: its row is not alive)."""
    done = subprocess.run([sys.executable, str(HERE / "thread_budget_child.py"), pg_url], capture_output=True,
                          text=True, timeout=50, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    attempts = [json.loads(line) for line in done.stdout.splitlines()]
    *refused, opened = attempts
    assert opened["outcome"] == "opened" and opened["result"] == 0 and opened["alive"] is False, attempts
    kinds = []
    for a in refused:
        assert "can't start new thread" in a["outcome"] and "(the process is at its limit of threads)" in a["outcome"]
        assert (a["threads"], a["fds"]) == (0, 0) and a["alive"] is not True, a
        if a["outcome"].startswith("StorageError: cannot open") and "connection pool" in a["outcome"]:
            kind = "pool"
        elif a["outcome"].startswith("StorageError: cannot open") and "heartbeat thread of node" in a["outcome"]:
            kind = "heartbeat"
        else:
            assert a["outcome"].startswith("InvalidArgument: cannot start "), a
            kind = "engine"
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    assert kinds == ["pool", "heartbeat", "engine"], attempts


@pytest.mark.timeout(60)
def test_a_writers_statements_are_prepared_once_per_connection(pg_url: str) -> None:
    """The writer sends its statements as ``EXECUTE`` of what it prepared on its session, in the
    query that first sent each (pg_query.Prepared); a connection lost between turns leaves a new
    session that has none, and the next turn prepares them again and writes as before."""
    with _store(pg_url, node_id="a") as store, psycopg.connect(pg_url, autocommit=True) as side:
        ch, writer, tasks = _with_tasks(store, 2)

        def turn(index: int) -> str:
            """A turn of one trigger per task at ``index``; the text of its write's query."""
            writer.begin(lambda: tasks)
            writer.write([ch.assign(_pending(t, index), with_counter=False) for t in tasks]
                         + [ch.counter(t, index + 1, index) for t in tasks])
            row = side.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (writer.backend_pid(),)).fetchone()
            return str(row[0])

        sent = [turn(i) for i in range(3)]
        assert sent[0].startswith("PREPARE taskengine_")  # (the server keeps the first 1024 characters)
        assert all(s.startswith("EXECUTE taskengine_") and "PREPARE" not in s for s in sent[1:])
        lost = writer.backend_pid()
        side.execute("SELECT pg_terminate_backend(%s)", (lost,))
        again = turn(3)
        assert writer.backend_pid() != lost
        assert again.startswith("PREPARE taskengine_")
        assert turn(4).startswith("EXECUTE taskengine_")
        assert [store.read_counter(t) for t in tasks] == [5, 5]
        assert _statuses(store, [_pending(t, i) for t in tasks for i in range(5)]) == ["PENDING"] * 10
        writer.close()
    check_db(pg_url)


@pytest.mark.timeout(60)
def test_a_writers_lanes_write_at_once_each_with_its_own_write_mark(pg_url: str) -> None:
    """Lane 1 of a node's writer (the second counter actor's: a connection of its own) writes and
    commits while lane 0's turn holds its transaction open on another task: each lane's
    transaction sets a write mark of its own (one shared row would hold lane 1 at its first
    statement until lane 0 commits). Both are fenced as the node; the other lanes' marks go when
    the node leaves."""
    import threading

    with _store(pg_url, node_id="a") as store, psycopg.connect(pg_url, autocommit=True) as side:
        ch, writer, tasks = _with_tasks(store, 2)
        lane = writer.lane(1)
        assert writer.lane(1) is lane and writer.lane(0) is writer and lane.node == writer.node
        assert lane.backend_pid() not in (None, writer.backend_pid())
        writer.begin(lambda: ["t0"])
        wrote = threading.Event()

        def other_lane() -> None:
            lane.begin(lambda: ["t1"])
            lane.write([ch.assign(_pending("t1", 0))])
            wrote.set()

        thread = threading.Thread(target=other_lane)
        thread.start()
        assert wrote.wait(WAIT), "lane 1 waited for lane 0's open transaction"
        thread.join(WAIT)
        writer.write([ch.assign(_pending("t0", 0))])
        marks = side.execute("SELECT node, epoch, seq FROM taskengine.write_marks ORDER BY node").fetchall()
        assert marks == [("a", 1, 2), ("a\x1f1", 1, 1)]
        assert (writer.writes, writer.changes) == (3, 4)  # every lane's
        writer.close()
        assert lane.closed and lane.backend_pid() is None
        assert side.execute("SELECT node, epoch FROM taskengine.write_marks").fetchall() == [("a", 1)]
    disk = check_db(pg_url)
    assert [disk[t].counter for t in tasks] == [1, 1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_lanes_commit_in_doubt_is_settled_by_its_own_write_mark(
    pg_server: PgServer, pg_url: str, cutter: CommitCutter, when: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Lane 1's second transaction is cut at COMMIT (before the server has it, or after it
    committed) while lane 0's mark holds the same number (each lane has written two): the
    settlement reads lane 1's own mark, so the write is made again exactly when it did not commit,
    and the execution exists once."""
    caplog.set_level(logging.WARNING, logger="taskengine.storage.pg_writer")
    with _store(_cut(cutter, pg_server, pg_url), node_id="a") as store:
        ch, writer, tasks = _with_tasks(store, 2)
        lane = writer.lane(1)
        lane.write([ch.assign(_pending("t1", 0))])
        writer.write([ch.assign(_pending("t0", 0))])
        cutter.arm("after" if when == "after" else "before")
        assert list(lane.write([ch.assign(_pending("t1", 1))])) == []
        assert cutter.cut.is_set()
        settled = "had committed" if when == "after" else "had not committed; writing it again"
        assert settled in caplog.text
        assert list(lane.write([ch.assign(_pending("t1", 2))])) == []
        assert _statuses(store, [_pending("t1", i) for i in range(3)]) == ["PENDING"] * 3
        writer.close()
    disk = check_db(pg_url)
    assert disk["t1"].counter == 3 and sorted(disk["t1"].records) == [0, 1, 2]


@pytest.mark.timeout(60)
def test_a_node_that_lost_its_lease_opens_no_lane_and_writes_nothing(pg_url: str) -> None:
    """The fence (pg_nodes.FENCE) of the two statements that carry it: once the node's row no longer
    shows its lease (the reaper marked it not alive; its heartbeat, every quarter of a long lease,
    has not noticed yet), a new lane makes no write mark and a turn is refused, writing nothing."""
    with _store(pg_url, node_id="a", node_lease=60.0) as store, psycopg.connect(pg_url, autocommit=True) as side:
        ch, writer, tasks = _with_tasks(store, 1)
        side.execute("UPDATE taskengine.nodes SET alive = false WHERE id = 'a'")
        with pytest.raises(storage.StorageError, match="lost its lease"):
            writer.lane(1)
        assert side.execute("SELECT node FROM taskengine.write_marks").fetchall() == [("a",)]
        with pytest.raises(storage.StorageError, match="lost its lease") as refused:
            writer.write([ch.assign(_pending("t0", 0))])
        assert getattr(refused.value, "outcome_unknown", False) is False
        assert store.read_counter("t0") == 0 and _statuses(store, [_pending("t0", 0)]) == ["-"]
        writer.close()


#: a new database's executions table, never analysed while a test runs (autovacuum would replan)
_NO_AUTOVACUUM = "ALTER TABLE taskengine.executions SET (autovacuum_enabled = false)"
#: 20,000 rows more in it (of a task of their own), after statements were planned on a few
_GROW = ("INSERT INTO taskengine.executions (task_id, idx, id, status, record) "
         "SELECT 'other', g, 'x' || g, 'S', '\\x00' FROM generate_series(0, 19999) AS g")


def _scans(side: Any, conn: Any) -> tuple[int, int]:
    """The executions table's sequential scans and the rows its index scans fetched, so far,
    ``conn``'s included: its server process flushes its statistics before it answers
    ``pg_stat_force_next_flush``."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    side.execute("SELECT pg_stat_clear_snapshot()")
    row = side.execute("SELECT seq_scan, coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables "
                       "WHERE relid = 'taskengine.executions'::regclass").fetchone()
    return int(row[0]), int(row[1])


@pytest.mark.timeout(60)
def test_starts_and_finishes_find_their_rows_by_key_whatever_the_statistics(pg_url: str) -> None:
    """A writer plans its statements once per session, on a table that may be empty then and
    never analysed since (a new database, autovacuum not yet round): the plan of a start or a
    finish must still find its rows through the key, not read the whole table at every turn as
    the table grows."""
    import attrs

    with _store(pg_url) as store, psycopg.connect(pg_url, autocommit=True) as side:
        side.execute(_NO_AUTOVACUUM)
        ch, writer, tasks = _with_tasks(store, 4)

        def turn(index: int) -> None:
            fresh = [_pending(t, index) for t in tasks]
            writer.write([ch.assign(ex, with_counter=False) for ex in fresh])
            started = [attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=2.0) for ex in fresh]
            writer.write([ch.update(ex) for ex in started])
            writer.write([ch.update(attrs.evolve(ex, status=ExecutionStatus.SUCCESS, finished_at=3.0))
                          for ex in started])

        for index in range(3):  # the statements prepared (and planned) on a table of a few rows
            turn(index)
        side.execute(_GROW)
        seq, fetched = _scans(side, writer._conn)
        turn(3)
        seq_after, fetched_after = _scans(side, writer._conn)
        assert _statuses(store, [_pending(t, 3) for t in tasks]) == ["SUCCESS"] * 4
        assert seq_after == seq, "a start or a finish read the whole executions table"
        # each finds its row through the key (an index read whole would fetch every row)
        assert 0 < fetched_after - fetched <= 100
        writer.close()


@pytest.mark.timeout(60)
def test_reads_by_key_are_planned_for_the_table_as_it_now_is(pg_url: str) -> None:
    """The readers' connections prepare what they read often (psycopg, after a few times), and a
    plan PostgreSQL keeps for a statement made on a table of a few rows would go on reading the
    whole table once it has grown (until autovacuum analyses it): every read is planned for the
    table as it now is."""
    with _store(pg_url) as store, psycopg.connect(pg_url, autocommit=True) as side:
        side.execute(_NO_AUTOVACUUM)
        ch, writer, tasks = _with_tasks(store, 2)
        fresh = [_pending(t, 0) for t in tasks]
        writer.write([ch.assign(ex, with_counter=False) for ex in fresh])
        keys = [(ex.task_id, ex.id) for ex in fresh]
        for _ in range(20):  # prepared, and planned again and again, on a table of two rows
            assert len(store.read_executions(keys)) == 2
        side.execute(_GROW)

        def scans() -> int:
            with store._pool.connection() as conn:  # the pool's one connection: a single reader
                return _scans(side, conn)[0]

        before = scans()
        assert len(store.read_executions(keys)) == 2
        assert scans() == before, "a read by key read the whole executions table"
        writer.close()
