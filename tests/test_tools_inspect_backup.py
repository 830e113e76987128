"""``taskengine inspect`` (three views, read-only) and ``taskengine backup`` (a copy that
replays clean; never onto a non-empty destination)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskengine.storage import Database, keys
from taskengine.tools.cli import main
from tools_dbs import DbBuilder, F, P, S, run_cli, standard_db


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def _raw_items(path: Path) -> list[tuple[bytes, bytes]]:
    db = Database.open(str(path))
    try:
        return list(db.raw.iterator())
    finally:
        db.close()


# -- inspect --------------------------------------------------------------------------------


def test_inspect_lists_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.task("done", max_executions=2)
        b.executions("done", S, P)
    before = _raw_items(tmp_path / "db")
    code, out, err = run(capsys, "inspect", str(tmp_path / "db"))
    assert code == 0 and err == []
    header = ["TASK", "JOB", "NEXT", "INDEX", "PRUNE", "MARK", "MAX", "STATUS", "PENDING", "RUNNING"]
    assert out.splitlines()[0].split() == header
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert list(lines) == ["alpha", "beta", "done", "empty"]
    assert lines["alpha"] == ["alpha", "job", "5", "0", "-", "ACTIVE", "0", "0"]
    assert lines["beta"] == ["beta", "job", "3", "0", "10", "ACTIVE", "1", "1"]
    assert lines["done"] == ["done", "job", "2", "0", "2", "COMPLETED", "1", "0"]
    assert lines["empty"] == ["empty", "job", "0", "0", "5", "ACTIVE", "0", "0"]
    assert out.splitlines()[-1] == f"4 task(s) in {tmp_path / 'db'}"
    assert _raw_items(tmp_path / "db") == before  # nothing written, nothing assigned


def test_inspect_shows_a_task_left_without_its_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.task_key("alpha"))
    code, out, _ = run(capsys, "inspect", str(tmp_path / "db"))
    assert code == 0
    assert "NO TASK RECORD" in [line for line in out.splitlines() if line.startswith("alpha ")][0]


def test_inspect_lists_executions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        made = [b.execution("t", s, error="RuntimeError: line one\nline two " + "x" * 100 if s is F else None)
                for s in (S, F, P, S)]  # fmt: skip
    code, out, err = run(capsys, "inspect", str(tmp_path / "db"), "--task", "t")
    assert code == 0 and err == []
    lines = out.splitlines()
    assert lines[0].startswith(
        "task 't': job 'job', ACTIVE, next index 4, prune mark 0, max_executions none, created 2001-09-09T"
    )
    assert lines[1].split() == ["INDEX", "ID", "STATUS", "CREATED", "FINISHED", "ERROR"]
    body = [line.split(None, 5) for line in lines[2:-1]]
    assert [(int(r[0]), r[1], r[2]) for r in body] == [(ex.index, ex.id, ex.status.value) for ex in made]
    assert body[1][5].startswith("RuntimeError: line one line two xxx") and body[1][5].endswith("...")
    assert len(body[1][5]) == 60
    assert body[2][4] == "-"  # a PENDING execution has not finished
    assert body[0][3] == "2001-09-09T01:46:40.000Z"
    assert lines[-1] == "4 execution(s)"


def test_inspect_limit_and_newest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.executions("t", *[S] * 7)
    code, out, _ = run(capsys, "inspect", str(tmp_path / "db"), "--task", "t", "--limit", "3", "--newest-first")
    assert code == 0
    lines = out.splitlines()
    assert [int(line.split()[0]) for line in lines[2:-1]] == [6, 5, 4]
    assert lines[-1] == "3 of 7 stored execution(s) shown; --after or --limit 0 shows more"
    code, out, _ = run(capsys, "inspect", str(tmp_path / "db"), "--task", "t", "--limit", "0")
    assert [int(line.split()[0]) for line in out.splitlines()[2:-1]] == list(range(7))


def test_inspect_pages_tasks_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Engine.list_tasks's paging on the command line: --limit tasks after the id --after."""
    ids = ["a", "a:", "a:b", "b", "ü"]  # a prefix of another id sorts first; code point order
    with DbBuilder(tmp_path / "db") as b:
        for tid in reversed(ids):
            b.task(tid)
    db = str(tmp_path / "db")
    code, out, _ = run(capsys, "inspect", db, "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["a", "a:"]
    assert out.splitlines()[-1] == f"2 task(s) in {db} shown; --after 'a:' shows the next page"
    code, out, _ = run(capsys, "inspect", db, "--limit", "2", "--after", "a:")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["a:b", "b"]
    code, out, _ = run(capsys, "inspect", db, "--limit", "2", "--after", "b")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["ü"]
    assert out.splitlines()[-1] == f"1 task(s) after 'b' in {db}"
    code, out, _ = run(capsys, "inspect", db, "--after", "ü")
    assert code == 0 and out.splitlines() == [f"0 task(s) after 'ü' in {db}"]


def test_inspect_shows_the_prune_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        made = b.executions("t", S, F, S, P, S)
        assert [ex.index for ex in b.prune("t", 5)] == [0, 1, 2]  # stops at the PENDING one
    db = str(tmp_path / "db")
    code, out, _ = run(capsys, "inspect", db)
    assert out.splitlines()[1].split() == ["t", "job", "5", "3", "-", "ACTIVE", "1", "0"]
    code, out, _ = run(capsys, "inspect", db, "--task", "t")
    assert "next index 5, prune mark 3," in out.splitlines()[0]
    assert [int(line.split()[0]) for line in out.splitlines()[2:-1]] == [3, 4]
    code, out, _ = run(capsys, "inspect", db, "--task", "t", "--after", "3")
    assert [line.split()[1] for line in out.splitlines()[2:-1]] == [made[4].id]
    code, out, err = run(capsys, "inspect", db, "--task", "t", "--index", "1")
    assert code == 1 and "no execution at index 1" in err[0]
    code, out, err = run(capsys, "inspect", db, "--task", "t", "--after", "x")
    assert code == 2 and "--after must be an index" in err[0]


def test_inspect_one_execution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = standard_db(tmp_path / "db")
    ex = made["beta"][0]
    code, out, err = run(capsys, "inspect", str(tmp_path / "db"), "--task", "beta", "--execution", ex.id)
    assert code == 0 and err == []
    assert json.loads(out) == ex.to_json()
    assert out.startswith("{\n  ") and "ünïcode" in out  # pretty, and readable
    code, out, _ = run(capsys, "inspect", str(tmp_path / "db"), "--task", "beta", "--index", "2")
    assert code == 0 and json.loads(out) == made["beta"][2].to_json()


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["--task", "nope"], 1, "no task 'nope' in "),
        (["--task", "nope", "--execution", "X"], 1, "no task 'nope' in "),
        (["--task", "alpha", "--execution", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], 1,
         "no execution '01ARZ3NDEKTSV4RRFFQ69G5FAV' in task 'alpha'"),
        (["--task", "alpha", "--index", "5"], 1, "no execution at index 5 in task 'alpha'"),
        (["--execution", "X"], 2, "--execution and --index need --task"),
        (["--task", "alpha", "--limit", "-1"], 2, "--limit must be 0 (all) or more"),
        (["--task", "alpha", "--index", "-1"], 2, "--index must be an index from 0 to 9223372036854775807"),
        # past the largest index an 8-byte key holds: once an OverflowError with a traceback
        (["--newest-first"], 2, "--newest-first orders a task's executions: it needs --task"),  # was ignored
        (["--task", "alpha", "--index", "1", "--newest-first"], 2, "without --execution or --index"),
        (["--task", "alpha", "--index", str(2**64)], 2, "--index must be an index from 0 to 9223372036854775807"),
        (["--task", "alpha", "--after", str(2**64 - 1)], 2, "--after must be an index from 0 to 9223372036854775807"),
    ],
)  # fmt: skip
def test_inspect_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, expected: str
) -> None:
    standard_db(tmp_path / "db")
    got, out, err = run(capsys, "inspect", str(tmp_path / "db"), *argv)
    assert got == code
    assert out == ""
    assert len(err) == 1 and err[0].startswith("taskengine inspect: error: ") and expected in err[0], err


def test_inspect_corrupt_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.execution_key("alpha", 2), b"S-no-separator")
        b.put(keys.execution_key("beta", 1), b"garbage")
    for argv in (["--task", "alpha"], ["--task", "alpha", "--index", "2"], []):
        code, out, err = run(capsys, "inspect", str(tmp_path / "db"), *argv)
        assert code == 1
        assert len(err) == 1 and err[0].startswith("taskengine inspect: error: corrupt record at key "), err
        assert "Traceback" not in out


def test_inspect_in_a_real_process(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    proc = run_cli("inspect", str(tmp_path / "db"), "--task", "alpha", "--limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 of 5 stored execution(s) shown; --after or --limit 0 shows more"


# -- backup ---------------------------------------------------------------------------------


def test_backup_copies_and_the_copy_replays_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    code, out, err = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / "copy"))
    assert code == 0 and err == []
    original = _raw_items(tmp_path / "db")
    assert out == f"copied {len(original)} keys from {tmp_path / 'db'} to {tmp_path / 'copy'}\n"
    assert _raw_items(tmp_path / "copy") == original
    code, out, err = run(capsys, "replay", str(tmp_path / "copy"))
    assert code == 0 and err == []
    assert out.splitlines()[-1].startswith("OK: 3 task(s), 8 execution(s)")


def test_backup_into_an_empty_directory_with_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    (tmp_path / "copy").mkdir()
    code, out, _ = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / "copy"), "--verify")
    assert code == 0
    assert out.splitlines()[-1] == "verified: 3 task(s), 8 execution(s), no violations"


def test_backup_verify_reports_a_broken_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.execution_key("alpha", 0))
    code, _, err = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / "copy"), "--verify")
    assert code == 1
    assert len(err) == 1 and "fails the replay check" in err[0] and "gap at index 0" in err[0]


def test_backup_refuses_a_non_empty_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "precious.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for dest in ("dest", "file"):
        code, out, err = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / dest))
        assert code == 2 and out == ""
        assert len(err) == 1 and err[0].startswith("taskengine backup: error: backup destination "), err
        assert ("exists and is not empty" if dest == "dest" else "is a file; choose a new directory") in err[0]
    assert (tmp_path / "dest" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["precious.txt"]
    assert (tmp_path / "file").read_text() == "keep me too"


def test_backup_refuses_a_destination_inside_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    code, _, err = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / "db" / "inner"))
    assert code == 2 and len(err) == 1 and "is inside the source database" in err[0]
    assert not (tmp_path / "db" / "inner").exists()


def test_backup_into_a_missing_parent_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    code, _, err = run(capsys, "backup", str(tmp_path / "db"), str(tmp_path / "no" / "such" / "copy"))
    assert code == 2
    assert err == [f"taskengine backup: error: cannot create the backup {str(tmp_path / 'no' / 'such' / 'copy')!r}: "
                   f"{str(tmp_path / 'no' / 'such')!r} is not a directory"]  # fmt: skip


def test_backup_in_a_real_process(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    proc = run_cli("backup", str(tmp_path / "db"), str(tmp_path / "copy"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("copied ")
    again = run_cli("backup", str(tmp_path / "db"), str(tmp_path / "copy"))
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "exists and is not empty" in again.stderr
