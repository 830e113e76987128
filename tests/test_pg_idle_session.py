"""A session the server ends for sitting idle inside a transaction (SQLSTATE 25P03,
``idle_in_transaction_session_timeout``), against a real server: the proxy of ``pg_proxy`` holds
back one message of the client, so the server sees the session idle in its transaction.

The writer sets the timeout to its node's lease on its own connection (README): when its session
is ended so, the turn was not written (an idle session had not received its COMMIT), and the
writer settles it as it settles a lost connection and writes it again. A tool's snapshot
transaction takes the server's setting: a session it loses so is a ``StorageError`` that names
the setting (one line from the command, no traceback)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Recorder, check_db
from pg import PgServer
from pg_proxy import CommitCutter
from taskengine import ExecutionStatus

pytestmark = pytest.mark.timeout(60)

SETTING = "idle_in_transaction_session_timeout"


def test_a_writer_whose_session_the_server_ends_as_idle_writes_its_turn_again(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter, caplog: pytest.LogCaptureFixture,
) -> None:
    """The trigger's INSERT is held back: the writer's session sits idle in the turn's
    transaction past the lease (1 s), and the server ends it. (The trigger has a key: its turn
    begins its transaction a round trip before its INSERT. A stamped turn sends its transaction
    whole, so one held back has begun nothing.) The trigger is answered, once,
    with index 0, the writer goes on, and the log names the setting."""
    caplog.set_level(logging.WARNING, logger="taskengine")
    dbname = pg_url.rsplit("/", 1)[1]
    rec = Recorder()
    a = make_engine(cutter.url(pg_server.user, dbname), jobs={"rec": rec}, node_id="a", node_lease=1.0)
    a.create_task("t", job="rec")
    cutter.stall(b"INSERT INTO taskengine.executions")
    ex = a.trigger("t", idempotency_key="k")
    assert cutter.stalled.is_set(), "the INSERT was not held back"
    assert ex.index == 0
    assert a.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert a.trigger("t").index == 1
    assert a.stats().write_failure is None
    assert SETTING in caplog.text
    make_engine.close(a)
    disk = check_db(pg_url, allow_live=False)["t"]
    assert disk.counter == 2 and [disk.records[i].id for i in range(1)] == [ex.id]


def test_a_tool_whose_session_the_server_ends_as_idle_says_so(
    make_engine: Any, pg_server: PgServer, pg_url: str, cutter: CommitCutter, capsys: pytest.CaptureFixture[str],
) -> None:
    """replay's snapshot transaction, with the setting at 100 ms for the database and its next
    statement held back: one line on stderr naming the setting, exit status 1."""
    from taskengine.tools.cli import main

    dbname = pg_url.rsplit("/", 1)[1]
    engine = make_engine(pg_url, jobs={"rec": Recorder()}, node_id="n")
    engine.create_task("t", job="rec")
    engine.trigger("t", blocking=True, timeout=WAIT)
    make_engine.close(engine)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET {SETTING} = 100')
    cutter.stall(b"SET TRANSACTION ISOLATION LEVEL")
    assert main(["replay", cutter.url(pg_server.user, dbname)]) == 1
    assert cutter.stalled.is_set()
    out, err = capsys.readouterr()
    assert SETTING in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
