"""The tools on a PostgreSQL database (a real server, tests/pg.py): replay and inspect take a URL,
replay finds what is wrong in the tables, and ``taskengine copy`` moves a database between the
backends in both directions with every id, index, counter and prune mark kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine_helpers import WAIT, Recorder, check_db
from pg import PgServer
from taskengine import ExecutionStatus, storage
from taskengine.tools import replay
from taskengine.tools.cli import main
from tools_dbs import DbBuilder, standard_db

pytestmark = pytest.mark.timeout(120)


def _contents(target: str) -> dict[str, tuple[Any, list[dict[str, Any]]]]:
    """Every task and its executions, as the storage interface reads them."""
    store = storage.open_store(target)
    try:
        return {t.id: (t, [e.to_json() for e in store.iter_executions(t.id)]) for t in store.list_tasks(limit=1000)}
    finally:
        store.close()


def test_replay_and_inspect_read_a_url(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(pg_url)
    assert main(["replay", pg_url]) == 0
    out = capsys.readouterr().out
    assert "OK: 3 task(s), 8 execution(s) (1 pending, 1 running, 4 success, 1 failed, 1 cancelled)" in out
    assert main(["inspect", pg_url]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert lines["alpha"] == ["alpha", "job", "5", "0", "-", "ACTIVE", "0", "0"]
    assert lines["beta"] == ["beta", "job", "3", "0", "10", "ACTIVE", "1", "1"]
    assert main(["inspect", pg_url, "--task", "alpha", "--index", "2"]) == 0
    assert '"status": "FAILED"' in capsys.readouterr().out


def test_replay_finds_what_is_wrong_in_the_tables(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(pg_url)
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM taskengine.executions WHERE task_id = 'alpha' AND idx = 2")
        conn.execute("UPDATE taskengine.executions SET status = 'S' WHERE task_id = 'beta' AND idx = 1")
        conn.execute("DELETE FROM taskengine.live WHERE task_id = 'beta' AND idx = 1")
        conn.execute("INSERT INTO taskengine.live VALUES ('gone', 0)")
        conn.execute("UPDATE taskengine.tasks SET counter = 1 WHERE id = 'beta'")
    assert main(["replay", pg_url]) == 1
    err = capsys.readouterr().err
    assert "task 'alpha': gap at index 2" in err
    assert "task 'beta': execution at index 1 has status 'S' in its row, but its record is PENDING" in err
    assert "task 'beta': PENDING execution at index 1" in err and "has no live key" in err
    assert "task 'gone': 1 live row(s) of a task that does not exist" in err
    assert "task 'beta': counter 1 is behind its records" in err


def test_replay_asks_the_tables_where_a_record_is(pg_url: str) -> None:
    """A record holding another execution's id: the check asks the PostgreSQL reader which
    record the other id is at (TaskInvariants.record_holds), and names a duplicate id."""
    made = standard_db(pg_url)
    a0, a1 = made["alpha"][0].id, made["alpha"][1].id
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE taskengine.executions SET record = (SELECT record FROM taskengine.executions "
                     "WHERE task_id = 'alpha' AND idx = 0) WHERE task_id = 'alpha' AND idx = 1")
    store = storage.open_store(pg_url)
    try:
        found = [str(v) for v in replay.check(store).violations]
    finally:
        store.close()
    assert found == [
        f"task 'alpha': id key of execution {a1} points at index 1, which holds {a0}",
        f"task 'alpha': execution id {a0} appears twice: at index 0 and at index 1",
    ]


def test_copy_moves_a_database_both_ways(
    tmp_path: Path, pg_url: str, make_engine: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src, back = str(tmp_path / "src"), str(tmp_path / "back")
    standard_db(src)
    with DbBuilder(src) as b:
        b.executions("alpha", ExecutionStatus.SUCCESS, ExecutionStatus.SUCCESS)
        b.prune("alpha", 3)
    before = _contents(src)
    assert before["alpha"][0].prune_mark == 3
    assert main(["copy", src, pg_url]) == 0
    assert "copied 3 task(s) and 7 execution(s)" in capsys.readouterr().out
    assert _contents(pg_url) == before
    assert main(["copy", pg_url, back]) == 0
    assert _contents(back) == before
    assert main(["replay", back]) == 0
    check_db(pg_url)
    # an engine on the copy carries on: the next index, the pending execution recovered and run
    rec = Recorder()
    engine = make_engine(pg_url, jobs={"job": rec})
    assert engine.trigger("alpha").index == 7
    pending = before["beta"][1][1]
    assert engine.wait("beta", pending["id"], timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.get_execution("beta", before["beta"][1][2]["id"]).error.startswith("interrupted")


def test_copy_refuses_a_destination_that_holds_tasks(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(tmp_path / "src")
    standard_db(src)
    standard_db(pg_url)
    assert main(["copy", src, pg_url]) == 2
    assert "already holds tasks" in capsys.readouterr().err
    assert main(["copy", pg_url, src]) == 2
    assert "is not empty" in capsys.readouterr().err


def test_a_tool_never_shows_a_password(
    pg_server: PgServer, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "tool-s3cret"
    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:{secret}@")
    standard_db(pg_url)
    assert main(["inspect", url]) == 0
    assert main(["replay", url, "--task", "nope"]) == 1
    assert main(["inspect", url, "--task", "nope"]) == 1
    assert main(["replay", f"postgresql://u:{secret}@127.0.0.1:1/none?connect_timeout=2"]) == 2
    out, err = capsys.readouterr()
    assert secret not in out + err
    assert "***" in out + err


def test_stress_with_crashes_on_a_url(pg_server: PgServer, pg_url: str) -> None:
    """The stress tool's SIGKILL-and-restart run on PostgreSQL: every acknowledged execution is
    found again, the replay check (after each kill and at the end) finds nothing, and the report
    names the database without its password."""
    from taskengine.tools.stress.driver import StressConfig, execute

    url = pg_url.replace(f"{pg_server.user}@", f"{pg_server.user}:stress-pw@")
    # each kill is followed by a replay and a new open: on a loaded machine 5 s held only one kill
    cfg = StressConfig(db=url, clients=8, tasks=4, count=None, duration=8.0, crash_every=1.0, seed=5)
    report = execute(cfg)
    assert report.violations == []
    assert report.crashes >= 2 and report.crash_replays >= 1
    assert report.acknowledged > 0 and report.final.checked == report.acknowledged
    assert report.replay["ok"]
    assert "stress-pw" not in report.db
