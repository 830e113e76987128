"""A turn's write as one query (statements, notification, COMMIT: ``pg_query``) whose connection is
lost while the server is still at work on it: the query waits for a row lock another session
holds when the connection goes (cut by the network, ended by the server, the server killed), or
the server is killed between its COMMIT and its answer. Whichever way the query ended on the
server, the writer settles it by its write mark before it answers: the turn is written exactly
once, its claim that another node won is known as a miss, and the writer writes on."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import psycopg
import pytest

from engine_helpers import WAIT
from pg import PgServer, restart_server, running_server
from pg_proxy import CommitCutter
from taskengine import ExecutionStatus, storage
from taskengine.storage import Execution, Task
from test_pg_remote import until

pytestmark = pytest.mark.timeout(90)


def _pending(task_id: str, index: int) -> Execution:
    return Execution(id=f"01K{task_id}{index:021d}", task_id=task_id, index=index, status=ExecutionStatus.PENDING,
                     blocking=False, created_at=1.0)


def _started(ex: Execution) -> Execution:
    return attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=2.0)


class _Setup:
    """Node ``a`` (through ``url``) and node ``b`` on one database: tasks t0 and t1, each with a
    PENDING execution at index 0; ``b`` has claimed t0's. ``a``'s turn claims both (t0's misses),
    and triggers t1 again (an INSERT and a counter)."""

    def __init__(self, url: str, direct: str) -> None:
        self.direct = direct
        self.store = storage.open_store(url, create=True, node_id="a", node_lease=20.0)
        self.other = storage.open_store(direct, node_id="b", node_lease=20.0)
        ch = self.store.changes
        self.writer: Any = self.store.writer()
        self.theirs = self.other.writer()
        self.first = [_pending(t, 0) for t in ("t0", "t1")]
        self.writer.write([ch.create_task(Task(id=t, job="j", incarnation="i")) for t in ("t0", "t1")])
        self.writer.write([ch.assign(ex) for ex in self.first])
        assert list(self.theirs.write([self.other.changes.update(_started(self.first[0]))])) == []
        self.again = _pending("t1", 1)

    def turn(self) -> list[Any]:
        ch = self.store.changes
        assert [r.counter for r in self.writer.begin(lambda: ["t0", "t1"])] == [1, 1]
        return [ch.update(_started(self.first[0])), ch.update(_started(self.first[1])),
                ch.assign(self.again, with_counter=False), ch.counter("t1", 2, 1)]

    def check(self) -> None:
        """The turn written once: t1's claim and trigger are a's, t0's execution stays b's."""
        with psycopg.connect(self.direct, autocommit=True) as conn:
            rows = conn.execute("SELECT task_id, idx, status, runner FROM taskengine.executions "
                                "ORDER BY task_id, idx").fetchall()
            counters = conn.execute("SELECT id, counter FROM taskengine.tasks ORDER BY id").fetchall()
        assert rows == [("t0", 0, "R", "b"), ("t1", 0, "R", "a"), ("t1", 1, "P", None)]
        assert counters == [("t0", 1), ("t1", 2)]
        # and the writer writes on (its state is whole: no failure, its mark in step)
        ex = _pending("t0", 1)
        assert list(self.writer.write([self.store.changes.assign(ex)])) == []
        assert self.store.read_counter("t0") == 2

    def close(self) -> None:
        for closing in (self.theirs.close, self.writer.close, self.other.close, self.store.close):
            closing()


class _Blocker:
    """A session holding the row lock of t1's execution 0 (the turn's claim of it waits for it)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)
        self.conn.execute("SELECT 1 FROM taskengine.executions WHERE task_id = 't1' AND idx = 0 FOR UPDATE")

    def waiting(self, admin: Any) -> set[int]:
        """The server processes waiting for a lock held by this session."""
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                             (self.conn.info.backend_pid,)).fetchall()
        return {int(r[0]) for r in rows}

    def release(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


class _Write:
    """``writer.write(turn)`` on a thread of its own."""

    def __init__(self, writer: Any, turn: list[Any]) -> None:
        self.missed: list[int] | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.missed = sorted(writer.write(turn))
            except BaseException as e:  # noqa: BLE001  (the test asserts it)
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self) -> list[int] | None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the write did not return"
        if self.error is not None:
            raise self.error
        return self.missed


def _gone(admin: Any, pid: int) -> bool:
    return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 0


@pytest.mark.parametrize("how", ["cut, not committed", "cut, committed", "ended by the server"])
def test_a_connection_lost_while_the_query_waits_for_a_lock(pg_server: PgServer, pg_url: str,
                                                            cutter: CommitCutter, how: str) -> None:
    """``cut``: the network drops the connection once the query reached the server (the old server
    process then waits for the lock, as the test sees, before the writer can connect again;
    ``committed``: the lock is let go meanwhile, so that process commits the query, then finds
    nobody to answer); ``ended by the server``: an administrator ends the
    session (pg_terminate_backend) while the query waits."""
    dbname = pg_url.rsplit("/", 1)[1]
    setup = _Setup(cutter.url(pg_server.user, dbname), pg_url)
    blocker = _Blocker(pg_url)
    admin = psycopg.connect(pg_url, autocommit=True)
    try:
        turn = setup.turn()
        old = setup.writer.backend_pid()
        if how.startswith("cut"):
            cutter.arm("during")
            cutter.hold()  # the writer cannot connect again until the test has seen the old query wait
        write = _Write(setup.writer, turn)
        if how.startswith("cut"):
            until(cutter.cut.is_set, "the cut")
        until(lambda: old in blocker.waiting(admin), "the query to wait for the row lock")
        if how == "ended by the server":
            admin.execute("SELECT pg_terminate_backend(%s)", (old,))
        if how == "cut, committed":
            blocker.release()
            until(lambda: _gone(admin, old), "the old server process to commit and go")
            cutter.admit()
        else:  # the write is made again on a new connection, which waits for the lock in turn
            cutter.admit()
            until(lambda: bool(blocker.waiting(admin) - {old}), "the write made again")
            assert _gone(admin, old)
            blocker.release()
        assert write.result() == [0]  # t0's claim is b's
        assert setup.writer.backend_pid() != old
        setup.check()
    finally:
        cutter.admit()
        blocker.close()
        admin.close()
        setup.close()


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own: it is killed and restarted."""
    with running_server() as server:
        yield server


@pytest.mark.parametrize("when", ["while the query waits", "between its COMMIT and its answer"])
def test_the_server_killed_during_the_query(own_server: PgServer, when: str) -> None:
    """``pg_ctl stop -m immediate`` and a start: the query's transaction is lost with the server
    (it waited for a lock), or its COMMIT is on disk and only the answer is lost."""
    url = own_server.create_database()
    proxy = CommitCutter(own_server.port)
    dbname = url.rsplit("/", 1)[1]
    setup = _Setup(proxy.url(own_server.user, dbname), url)
    blocker = _Blocker(url) if when == "while the query waits" else None
    try:
        turn = setup.turn()
        old = setup.writer.backend_pid()
        if blocker is None:
            proxy.arm("after", meanwhile=lambda: restart_server(own_server))
        write = _Write(setup.writer, turn)
        if blocker is not None:
            with psycopg.connect(url, autocommit=True) as admin:
                until(lambda: old in blocker.waiting(admin), "the query to wait for the row lock")
            restart_server(own_server)
        else:
            until(proxy.cut.is_set, "the cut")
        assert write.result() == [0]
        assert not proxy.failures
        setup.check()
    finally:
        if blocker is not None:
            blocker.close()
        setup.close()
        proxy.close()


def test_a_commit_in_doubt_settled_when_the_server_answers_only_at_the_deadline(
        pg_server: PgServer, pg_url: str, cutter: CommitCutter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to a COMMIT is lost, and the writer's new connection gets through only once the
    time it has to connect again (RECONNECT_SECONDS, here 1 s) is over: the outcome is read all
    the same (it was taken for unknown, without a look, and the writer stopped)."""
    from taskengine.storage import pg_writer

    monkeypatch.setattr(pg_writer, "RECONNECT_SECONDS", 1.0)
    dbname = pg_url.rsplit("/", 1)[1]
    setup = _Setup(cutter.url(pg_server.user, dbname), pg_url)
    try:
        turn = setup.turn()
        cutter.arm("after")
        cutter.hold()
        began = time.monotonic()
        write = _Write(setup.writer, turn)
        until(lambda: time.monotonic() > began + 1.5, "the time to connect again to be over")
        cutter.admit()
        assert write.result() == [0]
        assert cutter.cut.is_set()
        setup.check()
    finally:
        cutter.admit()
        setup.close()


NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def _session_with_pid(url: str, pid: int) -> Any:
    """A new session of the server whose process has ``pid`` (free now): the kernel hands out the
    pid after the one ``ns_last_pid`` holds, so that is set just before the server forks the
    session's process (again, should another process take the pid first)."""
    for _ in range(200):
        with open(NS_LAST_PID, "w", encoding="ascii") as f:
            f.write(str(pid - 1))
        conn = psycopg.connect(url, autocommit=True)
        if conn.info.backend_pid == pid:
            return conn
        conn.close()
    raise AssertionError(f"no session got pid {pid}")


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs root to choose a pid (ns_last_pid)")
def test_a_commit_in_doubt_spares_a_session_that_took_the_lost_ones_pid(
        pg_server: PgServer, pg_url: str, cutter: CommitCutter) -> None:
    """Process ids come round again (pid_max is 32768 on many machines): by the time the writer
    connects again to settle a commit in doubt, the lost connection's server process may be gone
    and its pid another session's, another node's writer, say. The writer ended that session
    (pg_terminate_backend of the pid); it tells them apart by the process's start time."""
    dbname = pg_url.rsplit("/", 1)[1]
    setup = _Setup(cutter.url(pg_server.user, dbname), pg_url)
    admin = psycopg.connect(pg_url, autocommit=True)
    stranger = None
    try:
        turn = setup.turn()
        old = setup.writer.backend_pid()
        cutter.arm("after")
        cutter.hold()
        write = _Write(setup.writer, turn)
        until(cutter.cut.is_set, "the cut")
        until(lambda: _gone(admin, old), "the lost connection's server process to go")
        stranger = _session_with_pid(pg_url, old)
        cutter.admit()
        assert write.result() == [0]
        assert stranger.execute("SELECT 1").fetchone() == (1,)  # not ended
        setup.check()
    finally:
        cutter.admit()
        if stranger is not None:
            stranger.close()
        admin.close()
        setup.close()


@pytest.mark.parametrize("keyed", [False, True], ids=["stamped turn", "turn locked first"])
def test_a_hang_up_psycopg_reports_before_libpq_knows_is_settled(make_engine: Any, pg_url: str, keyed: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg raises OperationalError("connection socket closed") when the socket reports a
    hang-up while libpq still counts the connection as open (seen in CI: the server process ended
    just as a turn's query went out). That is a lost connection, not a statement the server
    refused: the writer settles the write by its mark and sends it again; it does not stop."""
    engine = make_engine(pg_url, jobs={"j": lambda ctx: None}, counter_actors=1, node_id="a")
    engine.create_task("t", job="j")
    first = engine.trigger("t", idempotency_key="k0" if keyed else None)
    writer = engine._committer
    execute = psycopg.ClientCursor.execute
    cut: list[int] = []

    def hung_up(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        conn = cur.connection
        if not cut and conn is writer._conn and "COMMIT" in str(query):  # the turn's write, as it goes out
            cut.append(conn.info.backend_pid)
            with psycopg.connect(pg_url, autocommit=True) as side:
                side.execute("SELECT pg_terminate_backend(%s)", (cut[0],))
            assert not conn.broken  # psycopg noticed before libpq did
            raise psycopg.OperationalError("connection socket closed")
        return execute(cur, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.ClientCursor, "execute", hung_up)
    second = engine.trigger("t", idempotency_key="k1" if keyed else None)
    assert cut and writer.failure is None
    assert (first.index, second.index) == (0, 1)
    assert engine.wait("t", second.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.trigger("t").index == 2
