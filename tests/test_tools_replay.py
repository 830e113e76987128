"""``taskengine replay`` and ``taskengine.tools.replay.check``: a sound database passes; each way of
breaking an invariant the files can show is named, one line per violation, exit status 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskengine.storage import Database, codec, keys
from taskengine.tools import leveldb_scan, replay
from taskengine.tools.cli import main
from tools_dbs import C, DbBuilder, F, P, R, S, new_id, standard_db, table


def check(path: Path, task: str | None = None) -> replay.Report:
    db = Database.open(str(path))
    try:
        return replay.check(db, task)
    finally:
        db.close()


def never_proven(self: leveldb_scan._TaskScan, first: tuple[bytes, bytes], it: object) -> object:
    """In place of the fast pass: prove nothing, so the exact pass reads every task."""
    it.seek(self.x_end)  # type: ignore[attr-defined]
    return next(it, None)  # type: ignore[call-overload]


def messages(report: replay.Report) -> list[str]:
    return [str(v) for v in report.violations]


def run_replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    code = main(["replay", *args])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


# -- a sound database ---------------------------------------------------------------------


def test_clean_database_exits_0_with_a_right_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 0, err
    assert err == []
    rows = table(out)
    assert set(rows) == {"alpha", "beta", "empty"}
    assert rows["alpha"] == {
        "TASK": "alpha", "COUNTER": "5", "MARK": "0", "EXECUTIONS": "5", "PENDING": "0", "RUNNING": "0",
        "SUCCESS": "3", "FAILED": "1", "CANCELLED": "1", "VIOLATIONS": "0",
    }  # fmt: skip
    assert rows["beta"]["COUNTER"] == "3"
    assert (rows["beta"]["PENDING"], rows["beta"]["RUNNING"], rows["beta"]["SUCCESS"]) == ("1", "1", "1")
    assert rows["empty"]["EXECUTIONS"] == "0" and rows["empty"]["COUNTER"] == "0"
    last = out.splitlines()[-1]
    assert last.startswith("OK: 3 task(s), 8 execution(s) (1 pending, 1 running, 4 success, 1 failed, 1 cancelled)")
    assert "0 violation(s)" in last


def test_check_report_counts(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    report = check(tmp_path / "db")
    assert report.ok and report.violations == [] and report.violation_count == 0
    assert report.totals() == {
        "tasks": 3, "executions": 8, "pending": 1, "running": 1, "success": 4, "failed": 1, "cancelled": 1,
        "violations": 0,
    }  # fmt: skip
    assert [t.task_id for t in report.tasks] == ["alpha", "beta", "empty"]
    assert all(t.exists for t in report.tasks)
    assert report.elapsed >= 0


def test_an_empty_database_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    DbBuilder(tmp_path / "db").close()
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 0 and err == []
    assert out.splitlines()[-1].startswith("OK: 0 task(s), 0 execution(s)")


def test_a_deleted_and_recreated_task_is_clean_and_starts_at_0(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.executions("t", S, P, S)
        b.delete_task("t")
        b.task("t")
        b.execution("t", S)
    report = check(tmp_path / "db")
    assert report.ok, messages(report)
    assert report.tasks[0].counter == 1 and report.tasks[0].executions == 1


def test_ids_that_are_not_ulids_are_refused_and_reported(tmp_path: Path) -> None:
    """Record headers have a fixed layout (a 26-character ULID): a shorter id cannot be
    written through the codec, and one put on disk by hand is a violation, not a crash."""
    from taskengine.storage import Execution

    with pytest.raises(ValueError):
        codec.encode_execution(Execution(id="short", task_id="t", index=0, status=S, blocking=False))
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.execution("t", S)
        b.put(keys.execution_key("t", 1), b"Sshort\x00{}")
        b.put(keys.task_prefix("t") + keys.EXEC_ID + b"short", b"1")
        b.put(keys.counter_key("t"), b"2")
    found = messages(check(tmp_path / "db"))
    assert len(found) == 1 and "execution record header does not decode" in found[0], found


@pytest.mark.parametrize("pruned", [False, True], ids=["whole", "pruned"])
def test_a_sound_database_needs_only_the_fast_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pruned: bool
) -> None:
    """Also with pruned tasks: their records, from the mark up, are proven without a second read."""
    if pruned:
        pruned_db(tmp_path / "db")
    else:
        standard_db(tmp_path / "db")

    def not_wanted(*args: object) -> None:
        raise AssertionError("the records of a sound database were read twice")

    monkeypatch.setattr(leveldb_scan._TaskScan, "hand_over", not_wanted)
    assert check(tmp_path / "db").ok


def test_the_exact_pass_agrees_with_the_fast_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a sound database the exact pass (what runs when the fast one cannot prove a task)
    finds nothing either, and counts the same."""
    standard_db(tmp_path / "db")
    fast = check(tmp_path / "db")

    monkeypatch.setattr(leveldb_scan._TaskScan, "prove", never_proven)
    exact = check(tmp_path / "db")
    assert exact.ok, messages(exact)
    assert [t.to_json() for t in exact.tasks] == [t.to_json() for t in fast.tasks]


def pruned_db(path: Path) -> dict[str, list[object]]:
    """``standard_db`` with ``alpha`` pruned below index 3 and a task pruned of everything."""
    made: dict[str, list[object]] = dict(standard_db(path))
    with DbBuilder(path) as b:
        b.execution("alpha", S, idempotency_key="gone")  # index 5
        b.prune("alpha", 3)
        b.task("all-gone")
        b.executions("all-gone", S, C)
        b.prune("all-gone", 2)
    return made


def test_a_pruned_database_is_sound(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Records at exactly mark..counter-1 pass (fast pass and exact pass alike); the table shows the mark."""
    pruned_db(tmp_path / "db")
    fast = check(tmp_path / "db")
    assert fast.ok, messages(fast)
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 0, err
    rows = table(out)
    assert (rows["alpha"]["COUNTER"], rows["alpha"]["MARK"], rows["alpha"]["EXECUTIONS"]) == ("6", "3", "3")
    assert (rows["all-gone"]["COUNTER"], rows["all-gone"]["MARK"], rows["all-gone"]["EXECUTIONS"]) == ("2", "2", "0")
    assert rows["beta"]["MARK"] == "0"


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("record-below", "record at index 1 is below the prune mark 3"),
        ("mark-above", "prune mark 7 is above the counter 6"),
        ("gap-above-mark", "gap at index 3"),
        ("stale-id-key", "points at index 0, which has no record"),
        ("stale-idempotency", "idempotency key 'gone' points at execution"),
        ("bad-mark", "expected a decimal integer"),
    ],
)
def test_a_broken_prune_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, expected: str) -> None:
    made = pruned_db(tmp_path / "db")
    alpha = made["alpha"]
    with DbBuilder(tmp_path / "db") as b:
        if damage == "record-below":
            b.put(keys.execution_key("alpha", 1), codec.encode_execution(alpha[1]))  # type: ignore[arg-type]
        elif damage == "mark-above":
            b.put(keys.prune_mark_key("alpha"), b"7")
        elif damage == "gap-above-mark":
            b.delete(keys.execution_key("alpha", 3))
        elif damage == "stale-id-key":
            b.put(keys.exec_id_key("alpha", alpha[0].id), b"0")  # type: ignore[attr-defined]
        elif damage == "stale-idempotency":
            b.put(keys.idempotency_key("alpha", "gone"), alpha[0].id.encode())  # type: ignore[attr-defined]
        else:
            b.put(keys.prune_mark_key("alpha"), b"x")
    fast = check(tmp_path / "db")
    found = messages(fast)
    assert any(expected in m for m in found), found
    assert all(m.startswith("task 'alpha'") for m in found), found

    monkeypatch.setattr(leveldb_scan._TaskScan, "prove", never_proven)
    assert messages(check(tmp_path / "db")) == found


def test_a_version_1_database_is_read_as_is(tmp_path: Path) -> None:
    """Version 1 is version 2 without prune marks: tools read it (and write nothing); the engine's
    mode upgrades it."""
    standard_db(tmp_path / "db")
    db = Database.open(str(tmp_path / "db"))
    db.raw.put(keys.SCHEMA_KEY, b"1")
    db.close()
    db = Database.open(str(tmp_path / "db"))
    try:
        assert db.schema == 1 and replay.check(db).ok
    finally:
        db.close()
    db = Database.open(str(tmp_path / "db"))
    assert db.raw.get(keys.SCHEMA_KEY) == b"1"
    db.close()
    db = Database.open(str(tmp_path / "db"), create=True)
    try:
        assert db.schema == 2 and db.raw.get(keys.SCHEMA_KEY) == b"2"
    finally:
        db.close()


# -- each invariant, broken ---------------------------------------------------------------


def test_deleted_execution_record_is_a_gap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.execution_key("alpha", 2))
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 1
    assert "violation: task 'alpha': gap at index 2" in err
    lost = made["alpha"][2].id
    assert f"violation: task 'alpha': id key of execution {lost} points at index 2, which has no record" in err
    assert all(line.startswith("violation: task 'alpha': ") for line in err)
    assert table(out)["alpha"]["VIOLATIONS"] == str(len(err))
    assert out.splitlines()[-1].startswith("FAILED: ")


def test_several_missing_records_are_one_gap(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.executions("t", S, S, S, S, S, S)
        for i in (1, 2, 3):
            b.delete(keys.execution_key("t", i))
    found = messages(check(tmp_path / "db"))
    assert "task 't': gap at indexes 1..3 (3 records)" in found


def test_records_missing_below_the_counter(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.executions("t", S, S, S)
        b.put(keys.counter_key("t"), codec.encode_int(5))
    assert messages(check(tmp_path / "db")) == [
        "task 't': gap at indexes 3..4 (2 records): missing below the counter 5"
    ]


def test_counter_behind_its_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.executions("t", S, S, S, S)
        b.put(keys.counter_key("t"), codec.encode_int(2))
    code, _, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 1
    assert err == ["violation: task 't': counter 2 is behind its records: there are records up to index 3"]


def test_corrupt_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.execution_key("alpha", 1), b"garbage")
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("violation: task 'alpha': corrupt record at key ")
    assert "Traceback" not in out + "".join(err)
    assert table(out)["alpha"]["EXECUTIONS"] == "5"  # it still holds its index


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (keys.counter_key("alpha"), b"many", "corrupt record at key b'Talpha\\x00c': expected a decimal integer"),
        (keys.task_key("alpha"), b"{not json", "corrupt record at key b'Talpha\\x00t': task record does not decode"),
        (keys.execution_key("alpha", 0), b"Q" + b"0" * 26 + b"\x00{}", "execution record header does not decode"),
        (keys.execution_key("alpha", 0), b"", "execution record header does not decode"),
    ],
    ids=["counter", "task", "status-byte", "empty-record"],
)
def test_corrupt_values_are_named(tmp_path: Path, key: bytes, value: bytes, expected: str) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(key, value)
    found = messages(check(tmp_path / "db"))
    assert len(found) == 1 and expected in found[0], found


def test_execution_id_that_does_not_decode(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        b.execution("t", S)
        bad = b"\xff" * 26
        b.put(keys.execution_key("t", 1), b"S" + bad + b"\x00{}")
        b.put(keys.task_prefix("t") + keys.EXEC_ID + bad, b"1")
        b.put(keys.counter_key("t"), b"2")
    found = messages(check(tmp_path / "db"))
    assert len(found) == 1 and "execution record header does not decode" in found[0], found


def test_corrupt_id_key_value(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.exec_id_key("alpha", made["alpha"][3].id), b"three")
    key = keys.exec_id_key("alpha", made["alpha"][3].id)
    assert messages(check(tmp_path / "db")) == [
        f"task 'alpha': corrupt record at key {key!r}: expected a decimal integer, found b'three'"
    ]


def test_corrupt_body_is_found_with_json_only(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    ex = made["alpha"][0]
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.execution_key("alpha", 0), b"S" + ex.id.encode() + b"\x00{not json")
    assert check(tmp_path / "db").ok  # headers only: the body is not read
    db = Database.open(str(tmp_path / "db"))
    try:
        seen: list[object] = []
        report = replay.check(db, on_execution=seen.append)
    finally:
        db.close()
    assert len(seen) == 7
    assert [m for m in messages(report)] == [
        f"task 'alpha': corrupt record at key {keys.execution_key('alpha', 0)!r}: execution record body does not "
        "decode (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]


def test_orphan_live_keys(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    eid = new_id()
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.live_key("alpha", 7), eid.encode())
        b.put(keys.live_key("ghost", 0), new_id().encode())
        b.put(keys.live_key("ghost", 3), new_id().encode())
    report = check(tmp_path / "db")
    assert sorted(messages(report)) == [
        f"task 'alpha': live key at index 7 ({eid}) has no record",
        "task 'ghost': 2 live key(s) of a task that does not exist (indexes 0, 3)",
    ]
    ghost = [t for t in report.tasks if t.task_id == "ghost"][0]
    assert not ghost.exists and ghost.violations == 1
    assert report.totals()["tasks"] == 3


def test_orphan_keys_of_a_deleted_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A deletion that removed the task record but left the rest: one line for the whole task."""
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.task_key("beta"))
    code, out, err = run_replay(capsys, str(tmp_path / "db"))
    assert code == 1
    assert err == [
        "violation: task 'beta': keys of a task that does not exist (no task record; left over from a "
        "deletion?): 3 execution record(s), 3 id key(s), 2 live key(s), a counter"
    ]
    assert "beta (no task record)" in table(out)
    assert out.splitlines()[-1].startswith("FAILED: 2 task(s), 8 execution(s)")


def test_pending_record_without_live_key(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.live_key("beta", 1))
    assert messages(check(tmp_path / "db")) == [
        f"task 'beta': PENDING execution at index 1 ({made['beta'][1].id}) has no live key"
    ]


def test_running_record_without_live_key_in_a_task_with_other_live_keys(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.live_key("beta", 2))
    assert messages(check(tmp_path / "db")) == [
        f"task 'beta': RUNNING execution at index 2 ({made['beta'][2].id}) has no live key"
    ]


def test_live_key_of_a_finished_execution(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.live_key("alpha", 2), made["alpha"][2].id.encode())
    assert messages(check(tmp_path / "db")) == [
        f"task 'alpha': live key at index 2, but execution {made['alpha'][2].id} is FAILED"
    ]


def test_live_key_naming_another_execution(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    other = new_id()
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.live_key("beta", 1), other.encode())
    assert messages(check(tmp_path / "db")) == [
        f"task 'beta': live key at index 1 names {other}, but the record is {made['beta'][1].id}"
    ]


def test_id_key_pointing_nowhere(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    stray = new_id()
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.exec_id_key("alpha", stray), codec.encode_int(99))
    assert messages(check(tmp_path / "db")) == [
        f"task 'alpha': id key of execution {stray} points at index 99, which has no record"
    ]


def test_id_key_pointing_at_another_execution(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    a0, a1 = made["alpha"][0].id, made["alpha"][1].id
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.exec_id_key("alpha", a0), codec.encode_int(1))
    assert sorted(messages(check(tmp_path / "db"))) == [
        f"task 'alpha': execution at index 0 ({a0}) but its id key points at index 1",
        f"task 'alpha': id keys of 2 executions point at index 1: {min(a0, a1)}, {max(a0, a1)}",
    ]


def test_id_key_pointing_at_a_record_of_another_execution(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    a1, a2 = made["alpha"][1].id, made["alpha"][2].id
    with DbBuilder(tmp_path / "db") as b:  # swap the records at 1 and 2, keep their id keys
        one, two = b.db.raw.get(keys.execution_key("alpha", 1)), b.db.raw.get(keys.execution_key("alpha", 2))
        b.put(keys.execution_key("alpha", 1), two)
        b.put(keys.execution_key("alpha", 2), one)
    assert messages(check(tmp_path / "db")) == [
        f"task 'alpha': id key of execution {a1} points at index 1, which holds {a2}",
        f"task 'alpha': execution at index 1 ({a2}) but its id key points at index 2",
        f"task 'alpha': id key of execution {a2} points at index 2, which holds {a1}",
        f"task 'alpha': execution at index 2 ({a1}) but its id key points at index 1",
    ]


def test_record_without_id_key(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.exec_id_key("alpha", made["alpha"][4].id))
    assert messages(check(tmp_path / "db")) == [
        f"task 'alpha': execution at index 4 ({made['alpha'][4].id}) has no id key"
    ]


def test_execution_id_appearing_twice(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        first = b.execution("t", S)
        second = b.execution("t", S)
        b.put(keys.execution_key("t", 1), codec.encode_execution(attrs.evolve(first, index=1)))
    assert messages(check(tmp_path / "db")) == [
        f"task 't': id key of execution {second.id} points at index 1, which holds {first.id}",
        f"task 't': execution id {first.id} appears twice: at index 0 and at index 1",
    ]


def test_idempotency_key_pointing_at_an_unknown_execution(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    stray = new_id()
    with DbBuilder(tmp_path / "db") as b:
        b.put(keys.idempotency_key("beta", "again"), stray.encode())
    assert messages(check(tmp_path / "db")) == [
        f"task 'beta': idempotency key 'again' points at execution {stray}, which has no id key"
    ]


def test_idempotency_key_of_an_execution_whose_record_is_gone(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.execution_key("beta", 0))
        b.put(keys.counter_key("beta"), codec.encode_int(3))
    found = messages(check(tmp_path / "db"))
    assert f"task 'beta': idempotency key 'once' points at execution {made['beta'][0].id}, which has no record" in found


def test_counter_beyond_max_executions(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t", max_executions=2)
        b.executions("t", S, S, S)
    assert messages(check(tmp_path / "db")) == ["task 't': counter 3 exceeds max_executions 2"]


def test_task_without_counter(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.counter_key("empty"))
    assert messages(check(tmp_path / "db")) == ["task 'empty': the task has no counter"]


def test_malformed_and_unknown_keys(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.put(b"Tno-separator", b"1")
        b.put(keys.task_prefix("alpha") + b"z", b"1")
        b.put(keys.execution_prefix("alpha") + b"\x00\x07", b"S")
        b.put(b"Lbroken", b"1")
    found = messages(check(tmp_path / "db"))
    assert "malformed task key b'Tno-separator'" in found
    assert "malformed live key b'Lbroken'" in found
    assert "task 'alpha': unknown key b'Talpha\\x00z'" in found
    assert "task 'alpha': malformed execution key b'Talpha\\x00x\\x00\\x07'" in found


def test_task_ids_sharing_a_prefix_stay_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DbBuilder(tmp_path / "db") as b:
        for tid, n in (("a", 1), ("a:b", 2), ("a:", 3), ("a\x01", 1), ("ab", 4)):
            b.task(tid)
            b.executions(tid, *([S] * (n - 1) + [P]))
        b.delete(keys.live_key("a:", 2))  # break only "a:"
    report = check(tmp_path / "db")
    assert {t.task_id: t.executions for t in report.tasks} == {"a": 1, "a:b": 2, "a:": 3, "a\x01": 1, "ab": 4}
    assert [v.task_id for v in report.violations] == ["a:"]
    assert check(tmp_path / "db", "a").ok
    assert check(tmp_path / "db", "a:b").ok
    only = check(tmp_path / "db", "a:")
    assert [t.task_id for t in only.tasks] == ["a:"] and not only.ok
    code, out, _ = run_replay(capsys, str(tmp_path / "db"), "--task", "a")
    assert code == 0 and list(table(out)) == ["a"]


def test_unknown_task_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    code, out, err = run_replay(capsys, str(tmp_path / "db"), "--task", "nope")
    assert code == 1 and out == ""
    assert err == [f"taskengine replay: error: no task 'nope' in {str(tmp_path / 'db')!r}"]


def test_violations_beyond_the_cap_are_counted(tmp_path: Path) -> None:
    with DbBuilder(tmp_path / "db") as b:
        b.task("t")
        for i in range(30):
            b.put(keys.exec_id_key("t", f"stray{i:02}"), codec.encode_int(100 + i))
    db = Database.open(str(tmp_path / "db"))
    try:
        report = replay.check(db, max_violations=10)
    finally:
        db.close()
    assert len(report.violations) == 10 and report.violations_omitted == 20
    assert report.violation_count == 30 and report.tasks[0].violations == 30


# -- --json ---------------------------------------------------------------------------------


def test_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    made = standard_db(tmp_path / "db")
    code, out, err = run_replay(capsys, str(tmp_path / "db"), "--json")
    assert code == 0 and err == []
    lines = [json.loads(line) for line in out.splitlines()]
    executions, summary = lines[:-1], lines[-1]
    expected = [ex.to_json() for tid in ("alpha", "beta") for ex in made[tid]]
    assert executions == expected
    assert summary["summary"] is True and summary["ok"] is True and summary["violations"] == []
    assert summary["totals"]["executions"] == 8
    assert [t["task_id"] for t in summary["tasks"]] == ["alpha", "beta", "empty"]


def test_json_lists_violations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.execution_key("alpha", 0))
        b.delete(keys.task_key("empty"))
    code, out, err = run_replay(capsys, str(tmp_path / "db"), "--json", "--task", "alpha")
    assert code == 1
    summary = json.loads(out.splitlines()[-1])
    assert summary["ok"] is False
    assert {"task": "alpha", "message": "gap at index 0"} in summary["violations"]
    assert len(err) == len(summary["violations"])
    assert all(json.loads(line)["task_id"] == "alpha" for line in out.splitlines()[:-1])


# -- speed, roughly ---------------------------------------------------------------------------


def test_replay_reads_each_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One pass over the ``T`` range (plus ``L``) on a sound database; no per-key lookups."""
    with DbBuilder(tmp_path / "db") as b:
        for t in range(5):
            b.task(f"t{t}")
            b.executions(f"t{t}", *([S, F, C] * 20 + [P, R]))
    db = Database.open(str(tmp_path / "db"))
    iterators: list[tuple[object, ...]] = []
    gets: list[bytes] = []
    real_snapshot = db.raw.snapshot

    class CountingSnapshot:
        def __init__(self) -> None:
            self.snap = real_snapshot()

        def __enter__(self) -> CountingSnapshot:
            return self

        def __exit__(self, *exc: object) -> None:
            self.snap.close()

        def iterator(self, **kw: object) -> object:
            iterators.append(tuple(sorted(kw.items())))
            return self.snap.iterator(**kw)

        def get(self, key: bytes) -> bytes | None:
            gets.append(key)
            return self.snap.get(key)  # type: ignore[no-any-return]

    try:
        monkeypatch.setattr(db, "raw", type("Raw", (), {"snapshot": lambda self: CountingSnapshot()})())
        report = replay.check(db)
    finally:
        monkeypatch.undo()
        db.close()
    assert report.ok, messages(report)
    assert gets == []
    assert iterators == [(("prefix", b"L"),), (("start", b"T"), ("stop", b"U"))]


# -- the two passes agree, whatever the damage ------------------------------------------------

_MUTATION = st.tuples(
    st.sampled_from(["delete", "garbage", "swap", "copy-status", "stray-live", "stray-id", "counter", "mark"]),
    st.integers(min_value=0, max_value=10_000),
    st.binary(max_size=30),
)


@settings(
    max_examples=int(os.environ.get("REPLAY_EXAMPLES", "60")),  # raise it to search harder
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    shape=st.lists(
        st.tuples(st.lists(st.sampled_from([S, F, C, P, R]), max_size=6), st.integers(min_value=0, max_value=6)),
        min_size=1,
        max_size=3,
    ),
    mutations=st.lists(_MUTATION, max_size=3),
)
def test_fast_and_exact_passes_agree(
    tmp_path_factory: pytest.TempPathFactory,
    shape: list[tuple[list[object], int]],
    mutations: list[tuple[str, int, bytes]],
) -> None:
    """Whatever is broken, the walk with the fast pass reports exactly what the exact pass
    alone reports: the fast pass only ever proves, it never hides anything."""
    path = tmp_path_factory.mktemp("prop") / "db"
    with DbBuilder(path) as b:
        for t, (statuses, prune_to) in enumerate(shape):
            b.task(f"t{t}")
            b.executions(f"t{t}", *statuses)  # type: ignore[arg-type]
            b.prune(f"t{t}", prune_to)
        all_keys = [k for k in b.db.raw.iterator(include_value=False) if k != keys.SCHEMA_KEY]
        for kind, n, blob in mutations:
            key = all_keys[n % len(all_keys)]
            task = f"t{n % len(shape)}"
            if kind == "delete":
                b.delete(key)
            elif kind == "garbage":
                b.put(key, blob)
            elif kind == "swap":
                other = all_keys[(n // 7) % len(all_keys)]
                one, two = b.db.raw.get(key), b.db.raw.get(other)
                if one is not None and two is not None:
                    b.put(key, two)
                    b.put(other, one)
            elif kind == "copy-status":
                value = b.db.raw.get(key)
                if value:
                    b.put(key, b"PRSFC"[n % 5 : n % 5 + 1] + value[1:])
            elif kind == "stray-live":
                b.put(keys.live_key(task, n % 8), blob or b"x")
            elif kind == "stray-id":
                b.put(keys.exec_id_key(task, blob.decode(errors="replace") or "e"), str(n % 8).encode())
            elif kind == "mark":
                b.put(keys.prune_mark_key(task), str(n % 9).encode())
            else:
                b.put(keys.counter_key(task), str(n % 9).encode())
    fast = check(path)
    with pytest.MonkeyPatch.context() as mp:

        mp.setattr(leveldb_scan._TaskScan, "prove", never_proven)
        exact = check(path)
    assert messages(fast) == messages(exact)
    assert [t.to_json() for t in fast.tasks] == [t.to_json() for t in exact.tasks]
    if not mutations:
        assert fast.ok, messages(fast)
