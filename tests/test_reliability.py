"""Reliability of one node (one writer per database, a failed write, errors): the database's own lock, read-only and
damaged directories, timeouts without limit, idempotent blocking repeats, small failures.

Faults injected into LevelDB's system calls are in ``test_write_faults.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import subprocess
import sys
import threading

import plyvel
import pytest

from engine_helpers import HERE, REPO, WAIT, Gate, Recorder
from taskengine import Engine, ExecutionStatus, errors, storage
from taskengine.actors import recovery
from taskengine.storage import Committer, Database, capi
from taskengine.tools import cli

# -- one writer ------------------------------------------------------------------


def _probe(path: str) -> str:
    """What a separate process gets when it opens ``path``."""
    out = subprocess.run(
        [sys.executable, str(HERE / "open_probe.py"), path], capture_output=True, text=True, timeout=WAIT,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _second_engine(path: str) -> None:
    with pytest.raises(errors.StorageLocked):
        Engine.open(path)


def _storage_open(path: str) -> None:
    with pytest.raises(storage.StorageLocked):
        Database.open(path)


def _replay_in_process(path: str) -> None:
    from taskengine.tools import cli

    assert cli.main(["replay", path]) == 2


def _inspect_in_process(path: str) -> None:
    from taskengine.tools import cli

    assert cli.main(["inspect", path]) == 2


def _copytree(path: str) -> None:
    shutil.copytree(path, path + "-copy")
    Engine.open(path + "-copy").close()  # the copy is a database of its own


def _close_lock_descriptor(path: str) -> None:
    open(os.path.join(path, "LOCK")).close()  # noqa: SIM115 - the point is a bare open and close


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "disturb",
    [_second_engine, _storage_open, _replay_in_process, _inspect_in_process, _copytree, _close_lock_descriptor],
    ids=lambda f: f.__name__.strip("_"),
)
def test_nothing_the_process_does_lets_another_process_in(make_engine, db_path, disturb):
    engine = make_engine(db_path, jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    disturb(db_path)
    seen = _probe(db_path)
    assert seen.startswith("StorageLocked"), seen
    assert db_path in seen and "close that engine" in seen  # which path, and what to do
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 0  # A is undisturbed
    make_engine.close(engine)
    assert _probe(db_path) == "OPENED"  # released at close


def test_in_process_second_opener_is_told_it_is_this_process(make_engine, db_path):
    make_engine(db_path)
    with pytest.raises(errors.StorageLocked, match="already open in this process"):
        Engine.open(db_path)


# -- a read-only directory ----------------------------------------------------------


@contextlib.contextmanager
def _read_only(path: str):
    """``path`` made read-only: a read-only bind mount as root (root writes through any mode
    bits), else mode bits."""
    if os.geteuid() == 0:
        try:
            subprocess.run(["mount", "--bind", path, path], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"cannot bind-mount here ({e}); CI runs this as root")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", path], check=True, capture_output=True)
            yield
        finally:
            subprocess.run(["umount", path], check=True, capture_output=True)
        return
    os.chmod(path, 0o555)
    try:
        yield
    finally:
        os.chmod(path, 0o755)


def test_read_only_directory_is_reported_as_such(db_path):
    Engine.open(db_path).close()
    with _read_only(db_path), pytest.raises(errors.ReadOnlyDatabase) as info:
        Engine.open(db_path)
    assert "not writable" in str(info.value) and "locked" not in str(info.value)
    Engine.open(db_path).close()


# -- damage found while opening -------------------------------------------------------


def _table_files(path: str) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".ldb"))


def _fill_and_compact(path: str) -> None:
    with Engine.open(path, jobs={"rec": Recorder()}) as engine:
        engine.create_task("t", job="rec")
        for i in range(50):
            engine.trigger("t", data={"i": i, "pad": "x" * 200})
    raw = plyvel.DB(path)
    raw.compact_range()
    raw.close()


@pytest.mark.parametrize("damage", ["footer", "truncate"])
def test_damaged_table_gives_a_taskengine_error(db_path, damage, capsys):
    _fill_and_compact(db_path)
    for table in _table_files(db_path):  # every table (the schema may sit in one of its own)
        size = os.path.getsize(table)
        with open(table, "r+b") as f:
            if damage == "footer":
                f.seek(size - 8)
                f.write(b"\x00" * 8)  # the table's magic number
            else:
                f.truncate(size // 2)
    with pytest.raises(errors.StorageError) as info:
        Engine.open(db_path).close()
    assert not re.search(r"(^|[\s:(])b'", str(info.value)), str(info.value)  # no bytes repr
    # damage, with the way out (a table cut short was "cannot open ...: IO error", with none)
    assert isinstance(info.value, errors.DatabaseDamaged) and "taskengine recover" in str(info.value), info.value
    from taskengine.tools import cli

    # every table is damaged: LevelDB's repairer saves nothing, and the tool says so
    assert cli.main(["recover", db_path, "--accept-loss"]) == 2
    assert "restore a backup" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "garble", "remove"])
def test_recover_keeps_the_tasks_when_the_table_of_the_schema_key_is_lost(db_path, damage, capsys):
    """The schema key, written at creation, ends up alone in the oldest table. The repairer saved
    every other table, but the database was then refused as "not one of taskengine (no schema key)"
    and recover told the user to restore a backup."""
    Engine.open(db_path).close()
    with Engine.open(db_path, jobs={"rec": Recorder()}) as engine:  # this open moved the schema key to a table
        engine.create_task("t", job="rec")
        for i in range(3):
            engine.trigger("t", data={"i": i}, blocking=True, timeout=WAIT)
    Database.open(db_path).close()  # and this one the tasks, to a table of their own
    oldest = _table_files(db_path)[0]
    with open(oldest, "rb") as f:
        content = f.read()
    assert b"Mschema" in content and b"Tt\x00" not in content, "the oldest table holds the schema key alone"
    if damage == "truncate":
        os.truncate(oldest, 40)
    elif damage == "garble":
        with open(oldest, "r+b") as f:
            f.seek(10)
            f.write(b"\xff" * 40)
    else:
        os.unlink(oldest)
    assert cli.main(["recover", db_path, "--accept-loss"]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert "the schema version key went with the damage; written again" in out
    assert "--accept-loss" not in out + err  # the way out of damage, told to the user who is taking it
    assert cli.main(["replay", db_path]) == 0
    with Engine.open(db_path, jobs={"rec": Recorder()}) as engine:
        assert engine.next_index("t") == 3
        assert [ex.index for ex in engine.list_executions("t")] == [0, 1, 2]


def test_recover_without_accept_loss_reads_every_table(db_path, capsys):
    """A damaged table shows only when it is read, which an open does not do: the check said
    "opens without loss; nothing to recover" of a database whose tasks could not be read."""
    Engine.open(db_path).close()
    with Engine.open(db_path, jobs={"rec": Recorder()}) as engine:
        engine.create_task("t", job="rec")
        for i in range(100):
            engine.trigger("t", data={"i": i, "pad": os.urandom(100).hex()}, blocking=True, timeout=WAIT)
    Database.open(db_path).close()  # the tasks in a table of their own, in many blocks
    newest = _table_files(db_path)[-1]
    with open(newest, "r+b") as f:  # a bad block amid its data (the open reads only the first ones)
        f.seek(os.path.getsize(newest) * 2 // 3)
        f.write(b"\xff" * 64)
    Database.open(db_path).close()  # it opens
    assert cli.main(["recover", db_path]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "nothing was changed (add --accept-loss" in err, err
    assert cli.main(["recover", db_path, "--accept-loss"]) == 0
    assert "dropped: " in capsys.readouterr().out


def test_recover_writes_no_schema_key_into_a_foreign_database(tmp_path, capsys):
    raw = plyvel.DB(str(tmp_path / "foreign"), create_if_missing=True)
    raw.put(b"Tlooks-like\x00t-but-is-not", b"x")
    raw.put(b"some-other-program", b"its data")
    raw.close()
    os.unlink(os.path.join(tmp_path / "foreign", "CURRENT"))  # damaged: the repairer runs
    assert cli.main(["recover", str(tmp_path / "foreign"), "--accept-loss"]) == 2
    assert "not one of taskengine (no schema key)" in capsys.readouterr().err
    # undamaged, it is left alone: the repairer ran over it, then "restore a backup"
    healthy = tmp_path / "healthy-foreign"
    raw = plyvel.DB(str(healthy), create_if_missing=True)
    raw.put(b"some-other-program", b"its data")
    raw.close()
    assert cli.main(["recover", str(healthy), "--accept-loss"]) == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith("not one of taskengine (no schema key); nothing was changed"), err
    raw = plyvel.DB(str(tmp_path / "foreign"))
    assert raw.get(storage.keys.SCHEMA_KEY) is None
    raw.close()


def test_damaged_log_is_not_opened_silently_and_recover_accepts_the_loss(db_path, capsys):
    with Engine.open(db_path, jobs={"rec": Recorder()}) as engine:
        engine.create_task("t", job="rec")
        for i in range(200):
            engine.trigger("t", data={"i": i})
    logs = sorted(n for n in os.listdir(db_path) if n.endswith(".log"))
    log_file = os.path.join(db_path, logs[-1])
    assert os.path.getsize(log_file) > 40_000
    with open(log_file, "r+b") as f:  # a bad block in the middle: records after it would be dropped
        f.seek(20_000)
        f.write(b"\xff" * 64)
    with pytest.raises(errors.DatabaseDamaged) as info:
        Engine.open(db_path)
    assert "taskengine recover" in str(info.value) and "--accept-loss" in str(info.value)
    from taskengine.tools import cli

    assert cli.main(["recover", db_path]) == 2  # the loss must be accepted explicitly
    assert "--accept-loss" in capsys.readouterr().err
    assert cli.main(["recover", db_path, "--accept-loss"]) == 0
    assert "dropping" in capsys.readouterr().out
    with Engine.open(db_path, jobs={"rec": Recorder()}) as engine:
        assert engine.next_index("t") > 0


# -- no limit -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("forever", [float("inf"), 1e300, 10**400, 9.3e9], ids=["inf", "1e300", "10**400", "9.3e9"])
def test_timeouts_without_limit_mean_wait_forever(db_path, forever, capfd):
    gate = Gate()
    engine = Engine.open(db_path, jobs={"gate": gate, "rec": Recorder()}, job_timeout=forever)
    engine.create_task("g", job="gate")
    engine.create_task("t", job="rec")
    assert engine.trigger("t", blocking=True, timeout=forever).status is ExecutionStatus.SUCCESS
    ex = engine.trigger("g")
    waited: list[object] = []
    th = threading.Thread(target=lambda: waited.append(engine.wait("g", ex.id, timeout=forever)))
    th.start()
    assert gate.wait_calls(1)
    gate.release()
    th.join(WAIT)
    assert waited and waited[0].status is ExecutionStatus.SUCCESS  # type: ignore[attr-defined]
    engine.close(timeout=forever)
    Engine.open(db_path).close()  # fully closed: the lock is free in this process
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("bad", [float("nan"), -1, "1", True])
def test_bad_timeouts_are_refused_before_anything_happens(make_engine, db_path, bad):
    engine = make_engine(db_path, jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    with pytest.raises(errors.InvalidArgument):
        engine.trigger("t", blocking=True, timeout=bad)
    with pytest.raises(errors.InvalidArgument):
        Engine.open(db_path + "2", job_timeout=bad)
    assert engine.next_index("t") == 0


# -- an idempotent blocking repeat -----------------------------------------------------


@pytest.mark.timeout(60)
def test_idempotent_blocking_repeat_gets_the_same_true_answer(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate", max_executions=2)
    engine.trigger("t")  # index 0: occupies the only worker
    assert gate.wait_calls(1)
    first: list[BaseException] = []

    def caller_a() -> None:
        try:
            engine.trigger("t", blocking=True, idempotency_key="k", timeout=WAIT)
        except errors.EngineError as e:
            first.append(e)

    a = threading.Thread(target=caller_a)
    a.start()
    engine.get_task("t")  # A's trigger is in (answered after it, by the same actor)
    while engine.stats().queued_blocking < 1:
        engine.get_task("t")
    b = engine.trigger_future("t", blocking=True, idempotency_key="k")
    engine.get_task("t")  # B's repeat has been answered: A is queued
    engine.trigger("t")  # index 1: the task is now COMPLETED, before A could start
    gate.release()
    a.join(WAIT)
    assert first and isinstance(first[0], errors.TaskNotRunnable), first
    with pytest.raises(errors.TaskNotRunnable):
        b.get(timeout=WAIT)  # not "CANCELLED: the task was deleted": the task is there
    assert engine.get_task("t").execution_count == 2


# -- small things ----------------------------------------------------------------------


def test_backup_to_a_path_with_nul_creates_nothing(make_engine, tmp_path, monkeypatch):
    engine = make_engine(str(tmp_path / "db"))
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    with pytest.raises(errors.InvalidArgument):
        engine.backup("a\x00b")
    assert set(os.listdir(tmp_path)) == before


def test_failed_open_logs_no_close_warning(db_path, caplog, monkeypatch):
    def fail(*args: object) -> None:  # the last step of open, after every actor has started
        raise errors.StorageError("recovery failed")

    monkeypatch.setattr(recovery, "recover", fail)
    with caplog.at_level(logging.WARNING, logger="taskengine"), pytest.raises(errors.StorageError):
        Engine.open(db_path)
    assert "still running" not in caplog.text
    monkeypatch.undo()
    Engine.open(db_path).close()


# -- storage/capi.py and the Committer ----------------------------------------------------------


def test_c_batch_refuses_use_after_write_or_close(tmp_path):
    db = Database.open(str(tmp_path / "db"), create=True)
    try:
        committer = Committer(db, sync=False)
        if committer._capi is None:
            pytest.skip("LevelDB's C API is not in use here (another plyvel or TASKENGINE_PLAIN_BATCH)")
        written = committer._capi.batch()
        written.put(b"k", b"v")
        written.write()
        closed = committer._capi.batch()
        closed.close()
        for batch in (written, closed):
            with pytest.raises(ValueError, match="already written or closed"):
                batch.put(b"k", b"v")
            with pytest.raises(ValueError, match="already written or closed"):
                batch.delete(b"k")
    finally:
        db.close()


def test_layout_check_takes_only_a_leveldb_db_object(tmp_path):
    raw = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        words = (ctypes.c_void_p * 8).from_address(id(raw))
        if capi.db_pointer(raw) is None:
            pytest.skip("this plyvel's layout is not the known one: the C API is not used")
        assert capi.points_at_dbimpl(words[3])
        assert not capi.points_at_dbimpl(words[4])  # Options.comparator: also an object in libleveldb
        assert not capi.points_at_dbimpl(id(raw))
        assert not capi.points_at_dbimpl(8)  # not mapped: never read
    finally:
        raw.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("plain", [False, True], ids=["c-api", "plyvel"])
def test_closing_the_database_during_writes_is_safe(tmp_path, monkeypatch, plain):
    if plain:
        monkeypatch.setenv("TASKENGINE_PLAIN_BATCH", "1")
    for round_ in range(20):
        db = Database.open(str(tmp_path / f"db{round_}"), create=True)
        outcomes = _write_until_closed(db, Committer(db, sync=True))
        assert outcomes == ["closed"] * 3


def _write_until_closed(db: Database, committer: Committer) -> list[str]:
    """Three threads write until ``db`` is closed under them; what each was told."""
    outcomes: list[str] = []
    started = threading.Event()

    def writer() -> None:
        n = 0
        while True:
            n += 1
            try:
                committer.write([[(b"Tk\x00%d" % n, b"v" * 100)]])
            except storage.WriteFailed as e:
                outcomes.append("closed" if "closed" in str(e) and not e.outcome_unknown else str(e))
                return
            started.set()

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for th in threads:
        th.start()
    assert started.wait(WAIT)
    db.close()  # waits for the write in progress; later ones are refused
    for th in threads:
        th.join(WAIT)
    return outcomes


@pytest.mark.timeout(60)
def test_stress_refuses_an_unwritable_json_path_before_the_run(tmp_path, capsys):
    from taskengine.tools import cli

    db = str(tmp_path / "db")
    assert cli.main(["stress", db, "--count", "1", "--json", "/proc/taskengine-report.json"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert not os.path.exists(db)  # nothing ran


def test_cli_shows_leveldb_messages_as_text(db_path, capsys):
    from taskengine.tools import cli

    _fill_and_compact(db_path)
    table = _table_files(db_path)[-1]
    with open(table, "r+b") as f:
        f.truncate(os.path.getsize(table) // 2)
    assert cli.main(["replay", db_path]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not re.search(r"(^|[\s:(])b'", err), err
