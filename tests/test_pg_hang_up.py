"""A hang-up psycopg reports before libpq knows of it: ``OperationalError("connection socket
closed")``, with no SQLSTATE, on a connection libpq still counts as open (``broken`` False). Its
socket has hung up, so every later statement on it fails too: the connection is lost, not a
statement refused (``pg_common.connection_lost``). A read is made again on another connection;
the heartbeat connects again at its next beat rather than beating once more on the dead one.
(The writer's own case: ``test_pg_one_query_doubt``.)

Each test ends the session's server process and raises that error in place of the statement,
as psycopg does when it sees the hang-up first."""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
import pytest

from engine_helpers import poll_until
from taskengine import storage

pytestmark = pytest.mark.timeout(60)


def _hang_up_once(monkeypatch: pytest.MonkeyPatch, url: str, which: Any) -> list[tuple[int, float]]:
    """The first statement on a connection ``which(conn, query)`` picks: its server process is
    ended, and the statement fails as psycopg fails it when it sees the hang-up first. Once it
    has been: the ended process's pid, and when (``time.monotonic``)."""
    execute = psycopg.Cursor.execute
    cut: list[tuple[int, float]] = []

    def hung_up(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        conn = cur.connection
        if not cut and which(conn, str(query)):
            cut.append((conn.info.backend_pid, time.monotonic()))
            with psycopg.connect(url, autocommit=True) as side:
                side.execute("SELECT pg_terminate_backend(%s)", (cut[0][0],))
            assert not conn.broken  # psycopg noticed before libpq did
            raise psycopg.OperationalError("connection socket closed")
        return execute(cur, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", hung_up)
    return cut


def test_a_read_whose_connection_hung_up_is_made_again(make_engine: Any, pg_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(pg_url, jobs={"j": lambda ctx: None}, node_id="a")
    engine.create_task("t", job="j")
    engine.close()
    store = storage.open_store(pg_url)
    try:
        assert store.get_task("t") is not None  # the pool holds a connection now
        cut = _hang_up_once(monkeypatch, pg_url, lambda conn, query: "FROM taskengine.tasks" in query)
        task = store.get_task("t")
        assert cut and task is not None and task.id == "t"
    finally:
        store.close()


def test_a_heartbeat_whose_connection_hung_up_connects_again_at_its_next_beat(
        make_engine: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """One beat fails; the next one renews the lease on a new connection (without the check, the
    next beat failed too, on the dead connection, before libpq marked it broken)."""
    caplog.set_level(logging.WARNING, logger="taskengine")
    engine = make_engine(pg_url, jobs={"j": lambda ctx: None}, node_id="a", node_lease=2.0)
    heartbeat = engine._committer._heartbeat
    cut = _hang_up_once(monkeypatch, pg_url, lambda conn, query: conn is heartbeat._conn)
    poll_until("the heartbeat renewed the lease after its connection hung up",
               lambda: cut and heartbeat._renewed > cut[0][1])
    failed = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert heartbeat._conn.info.backend_pid != cut[0][0]
    assert engine._committer.failure is None
    engine.close()
