"""The PostgreSQL server killed (``pg_ctl stop -m immediate``: no checkpoint, every client cut) and
started again while callers trigger: the engine reconnects, settles the commit that was in doubt,
and no acknowledged execution is lost or doubled; the indexes stay gap-free."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine_helpers import WAIT, Recorder, check_db
from pg import PgServer, restart_server, running_server
from taskengine import errors

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A server of this test's own: it is killed and restarted."""
    with running_server() as server:
        yield server


def test_a_server_restart_loses_and_doubles_nothing(make_engine: Any, own_server: PgServer) -> None:
    url = own_server.create_database()
    engine = make_engine(url, jobs={"rec": Recorder()})
    tasks = ["a", "b"]
    for t in tasks:
        engine.create_task(t, job="rec")
    acked: dict[str, tuple[str, int]] = {}
    failed: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()
    restarted = threading.Event()

    def caller(i: int) -> None:
        n = 0
        while not stop.is_set():
            task = tasks[i % 2]
            try:
                ex = engine.trigger(task, {"i": i, "n": n})
            except errors.EngineError as e:  # only StorageError may come, and only while the server is away
                failed.append(e)
                return
            with lock:
                acked[ex.id] = (task, ex.index)
            n += 1
            if n == 30 and i == 0:
                restarted.wait(WAIT)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        while len(acked) < 100 and not failed:
            stop.wait(0.01)
        restart_server(own_server)
        restarted.set()
        before = len(acked)
        while len(acked) < before + 100 and not failed:
            stop.wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
    assert not failed, failed[:3]
    for task in tasks:
        listed = [e.index for e in engine.list_executions(task, limit=10_000)]
        assert listed == list(range(len(listed)))
    make_engine.close(engine)
    disk = check_db(url)
    for eid, (task, index) in acked.items():
        assert disk[task].records[index].id == eid, f"acknowledged {eid} at {task}/{index} is not there"


def test_a_wait_across_nodes_returns_after_a_server_restart(make_engine: Any, own_server: PgServer) -> None:
    """The listening connection goes with the server; the engine listens again once it is back,
    and a finish another node commits then reaches the waiter by its notification."""
    from pg_other import OtherNode
    from test_pg_remote import NEVER, remote_wait, until

    url = own_server.create_database()
    engine = make_engine(url, poll_interval=NEVER)
    other = OtherNode(url)
    other.create_task("t", job="elsewhere")
    ex = other.trigger("t")
    other.close()
    waiter = remote_wait(engine, "t", ex.id)
    feed = engine._remote._feed
    restart_server(own_server)
    until(lambda: feed.reconnects >= 1, "the engine to listen again")
    assert waiter.pending()
    other = OtherNode(url)
    try:
        done = other.finish(ex)
    finally:
        other.close()
    assert waiter.result() == done


def test_reads_after_a_server_restart_reconnect(own_server: PgServer) -> None:
    """Every connection the readers' pool holds is cut by a restart: a read after it gets them one
    after another, discards them and reads on a new one (it once gave up after two)."""
    from taskengine.storage.postgres import PostgresStore

    store = PostgresStore.open(own_server.create_database(), create=True)
    try:
        pool = store._pool
        with pool.connection(), pool.connection(), pool.connection():
            pass  # three connections in the pool, idle, all to be cut
        restart_server(own_server)
        assert store.get_task("t") is None
        assert list(store.iter_task_ids()) == []
    finally:
        store.close()


@pytest.mark.parametrize("write", ["assign", "delete"])
def test_a_commit_in_doubt_is_not_taken_for_the_transaction_that_reused_its_id(own_server: PgServer,
                                                                               write: str) -> None:
    """A server killed while a write's transaction is open, none of its WAL on disk, gives that
    transaction's id to the next transaction after the restart; ``txid_status`` then says
    "committed" of a write that never was. The writer settles by its write mark instead: it
    writes again. Without that, the execution of ``assign`` would be acknowledged without existing
    (and its index given again by another node), and ``delete`` (a write that makes no row of its
    own) would be taken as done with the task still there."""
    import psycopg

    from taskengine import ExecutionStatus, storage
    from taskengine.storage import Execution, Task
    from test_pg_remote import until

    url = own_server.create_database()
    with psycopg.connect(url, autocommit=True) as conn:  # nothing flushes the WAL of the open transaction
        for setting in ("wal_writer_delay = '10s'", "bgwriter_lru_maxpages = 0", "autovacuum = off"):
            conn.execute(f"ALTER SYSTEM SET {setting}")
        conn.execute("SELECT pg_reload_conf()")
    store = storage.open_store(url, create=True, node_id="n", node_lease=20.0)
    try:
        ch = store.changes
        writer = store.writer()
        writer.write([ch.create_task(Task(id="t", job="j", incarnation="i"))])
        with psycopg.connect(url, autocommit=True) as conn:  # the heartbeat's first renewal is over:
            lease = "SELECT lease_until FROM taskengine.nodes WHERE id = 'n'"  # the next is 5 s away
            joined = conn.execute(lease).fetchone()
            until(lambda: conn.execute(lease).fetchone() != joined, "the heartbeat's first renewal")
        writer.begin(lambda: ["t"])  # the turn's transaction: an id, nothing of it on disk yet
        with psycopg.connect(url, autocommit=True) as conn:
            (xid,) = conn.execute("SELECT backend_xid::text::bigint FROM pg_stat_activity "
                                  "WHERE backend_xid IS NOT NULL AND datname = current_database()").fetchone()
        restart_server(own_server)
        with psycopg.connect(url) as other:  # ids are handed out again up to and past the lost one
            while int(other.execute("SELECT txid_current()").fetchone()[0]) < xid:
                other.commit()
            other.commit()
            reused = other.execute("SELECT txid_status(%s)", (xid,)).fetchone()[0]
        ex = Execution(id="01J" + "7" * 23, task_id="t", index=0, status=ExecutionStatus.PENDING, blocking=False,
                       created_at=1.0)
        # (also ends the open turn, whatever the checks below say)
        writer.write([ch.assign(ex) if write == "assign" else ch.delete_task("t")])
        assert reused == "committed"  # the lost write's id now names another, committed, transaction
        if write == "assign":
            assert store.get_execution("t", ex.id) is not None
            assert store.read_counter("t") == 1
        else:
            assert store.get_task("t") is None
        writer.close()
    finally:
        store.close()
