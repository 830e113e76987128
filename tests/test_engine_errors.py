"""Errors (README, "Embedding it"): every error, each a clear exception; a rejected call changes nothing and
consumes no index. Also engine life cycle: close, two engines in one process, locks."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import attrs
import plyvel
import pykka
import pytest

from engine_helpers import WAIT, Child, Gate, Recorder, check_db, close_bounded
from taskengine import Engine, EngineStats, ExecutionStatus, errors, storage
from taskengine.storage import keys

S = ExecutionStatus
MISSING_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"

BAD_TASK_IDS = ["", 123, b"bytes", "x" * 257, "a\nb", "a\x00b", "tab\there", "\x7f", ["a"]]
BAD_DATA = [object(), {1, 2}, float("nan"), float("inf"), {"k": object()}, [float("-inf")], b"raw"]


def raises(exc: type[BaseException], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> BaseException:
    """``fn(*args, **kwargs)`` raises ``exc`` — for futures, either when called or from ``.get()``."""
    with pytest.raises(exc) as info:
        out = fn(*args, **kwargs)
        if isinstance(out, pykka.Future):
            out.get(timeout=WAIT)
    return info.value


@pytest.fixture
def engine_t(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    first = engine.trigger("t", blocking=True, timeout=WAIT)
    assert first.index == 0
    return engine, rec, first


def assert_unchanged(engine: Any, rec: Recorder, n: int = 1, calls: int = 1) -> None:
    assert engine.next_index("t") == n, "a rejected call consumed an index"
    assert engine.get_task("t").execution_count == n
    assert rec.count() == calls
    assert [e.index for e in engine.list_executions("t")] == list(range(n))


def test_errors_hierarchy():
    for name in ("TaskNotFound", "TaskAlreadyExists", "TaskNotRunnable", "ExecutionNotFound", "UnknownJob",
                 "InvalidArgument", "ExecutionTimeout", "EngineClosed", "StorageLocked", "CorruptRecord"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.EngineError), name
        import taskengine

        assert getattr(taskengine, name) is cls
    assert issubclass(errors.StorageLocked, storage.StorageLocked)
    assert issubclass(errors.CorruptRecord, storage.CorruptRecord)
    for name in errors.__all__:  # a traceback said taskengine.actors.errors.TaskAlreadyExists
        cls = getattr(errors, name)
        assert f"{cls.__module__}.{cls.__qualname__}" == f"taskengine.errors.{name}"


@pytest.mark.parametrize("bad", BAD_TASK_IDS, ids=repr)
def test_invalid_task_id_rejected_everywhere(engine_t, bad):
    engine, rec, _ = engine_t
    raises(errors.InvalidArgument, lambda: engine.create_task(bad, job="rec"))
    raises(errors.InvalidArgument, lambda: engine.trigger(bad))
    raises(errors.InvalidArgument, lambda: engine.trigger(bad, blocking=True, timeout=WAIT))
    raises(errors.InvalidArgument, lambda: engine.trigger_future(bad))
    raises(errors.InvalidArgument, lambda: engine.get_task(bad))
    raises(errors.InvalidArgument, lambda: engine.next_index(bad))
    raises(errors.InvalidArgument, lambda: engine.list_executions(bad))
    raises(errors.InvalidArgument, lambda: engine.get_execution(bad, MISSING_ID))
    raises(errors.InvalidArgument, lambda: engine.delete_task(bad))
    assert_unchanged(engine, rec)


def test_valid_task_ids_at_the_limits(engine_t):
    engine, rec, _ = engine_t
    for tid in ("x" * 256, "a:b/c", "ü", " ", "~!@#$%^&*()"):
        assert engine.create_task(tid, job="rec").id == tid
        assert engine.trigger(tid, blocking=True, timeout=WAIT).index == 0
    auto = engine.create_task(None, job="rec")
    assert isinstance(auto.id, str) and len(auto.id) == 26  # a ULID
    assert engine.get_task(auto.id).id == auto.id


@pytest.mark.parametrize("bad", BAD_DATA, ids=repr)
def test_non_json_data_rejected_and_consumes_nothing(engine_t, bad):
    engine, rec, _ = engine_t
    for blocking in (False, True):
        raises(errors.InvalidArgument, engine.trigger, "t", data=bad, blocking=blocking, timeout=WAIT)
        raises(errors.InvalidArgument, engine.trigger_future, "t", bad, blocking=blocking)
    raises(errors.InvalidArgument, lambda: engine.create_task("c", job="rec", config=bad))
    raises(errors.TaskNotFound, lambda: engine.get_task("c"))
    raises(errors.InvalidArgument, lambda: engine.trigger("t", data=bad, idempotency_key="kept"))
    assert_unchanged(engine, rec)
    fresh = engine.trigger("t", idempotency_key="kept", blocking=True, timeout=WAIT)  # the key was not taken
    assert fresh.index == 1 and fresh.status == S.SUCCESS


def test_bad_arguments_rejected_and_consume_nothing(engine_t):
    engine, rec, first = engine_t
    for limit in (0, -1, "x", 1.5, -100):
        raises(errors.InvalidArgument, engine.list_executions, "t", limit=limit)
    for after in (-2, "x", 1.5):
        raises(errors.InvalidArgument, engine.list_executions, "t", after=after)
    for timeout in (-1, "x", float("nan")):
        raises(errors.InvalidArgument, engine.trigger, "t", blocking=True, timeout=timeout)
        raises(errors.InvalidArgument, engine.wait, "t", first.id, timeout=timeout)
    raises(errors.InvalidArgument, lambda: engine.trigger("t", blocking="yes"))
    raises(errors.InvalidArgument, lambda: engine.list_executions("t", newest_first="yes"))  # plyvel's TypeError
    raises(errors.InvalidArgument, lambda: engine.trigger("t", idempotency_key=5))
    for max_ex in (-1, "x", 1.5):
        raises(errors.InvalidArgument, engine.create_task, "m", job="rec", max_executions=max_ex)
    raises(errors.TaskNotFound, lambda: engine.get_task("m"))
    assert_unchanged(engine, rec)


def test_not_found_errors(engine_t):
    engine, rec, first = engine_t
    for call in (
        lambda: engine.trigger("nope"),
        lambda: engine.trigger("nope", blocking=True, timeout=WAIT),
        lambda: engine.trigger_future("nope"),
        lambda: engine.trigger_future("nope", blocking=True),
        lambda: engine.get_task("nope"),
        lambda: engine.next_index("nope"),
        lambda: engine.list_executions("nope"),
        lambda: engine.get_execution("nope", first.id),
        lambda: engine.wait("nope", first.id, timeout=1),
        lambda: engine.delete_task("nope"),
    ):
        e = raises(errors.TaskNotFound, call)
        assert "nope" in str(e)
    for call in (lambda: engine.get_execution("t", MISSING_ID), lambda: engine.wait("t", MISSING_ID, timeout=1)):
        e = raises(errors.ExecutionNotFound, call)
        assert MISSING_ID in str(e)
    raises(errors.TaskNotFound, lambda: engine.get_task("nope"))  # reads did not create it
    assert_unchanged(engine, rec)


def test_task_already_exists_changes_nothing(engine_t):
    engine, rec, _ = engine_t
    before = engine.get_task("t")
    e = raises(errors.TaskAlreadyExists, lambda: engine.create_task("t", job="rec", config={"other": 1}))
    assert "'t'" in str(e) or '"t"' in str(e)
    after = engine.get_task("t")
    assert (after.config, after.created_at, after.execution_count) == (before.config, before.created_at, 1)
    assert_unchanged(engine, rec)


def test_unknown_job(engine_t):
    engine, rec, _ = engine_t
    e = raises(errors.UnknownJob, lambda: engine.create_task("u", job="no-such-job"))
    assert "no-such-job" in str(e)
    raises(errors.TaskNotFound, lambda: engine.get_task("u"))
    assert_unchanged(engine, rec)


def test_engine_closed_after_close_and_close_is_idempotent(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    ex = engine.trigger("t", blocking=True, timeout=WAIT)
    engine.close()
    engine.close()
    for call in (
        lambda: engine.trigger("t"),
        lambda: engine.trigger("t", blocking=True, timeout=1),
        lambda: engine.trigger_future("t"),
        lambda: engine.create_task("x", job="rec"),
        lambda: engine.get_task("t"),
        lambda: engine.next_index("t"),
        lambda: engine.get_execution("t", ex.id),
        lambda: engine.wait("t", ex.id, timeout=1),
        lambda: engine.list_executions("t"),
        lambda: engine.delete_task("t"),
        lambda: engine.register_job("j", rec),
        lambda: engine.backup(db_path + "-copy"),
    ):
        raises(errors.EngineClosed, call)
    check_db(db_path, allow_live=False)
    with Engine.open(db_path, jobs={"rec": rec}) as again:
        assert again.next_index("t") == 1
    raises(errors.EngineClosed, lambda: again.next_index("t"))


def test_close_releases_blocked_callers_with_engine_closed(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    running = engine.trigger("t")
    assert gate.wait_calls(1)
    queued_fut = engine.trigger_future("t", blocking=True)
    outcome: list[BaseException | Any] = []

    def waiter() -> None:
        try:
            outcome.append(engine.wait("t", running.id, timeout=WAIT))
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    engine.close(timeout=0.2)
    raises(errors.EngineClosed, lambda: queued_fut.get(timeout=WAIT))
    th.join(WAIT)
    assert not th.is_alive(), "a waiter was left hanging by close()"
    assert isinstance(outcome[0], errors.EngineClosed) or outcome[0].status.is_finished, outcome


def test_storage_locked_by_second_engine_in_same_process(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    with pytest.raises(errors.StorageLocked) as info:
        Engine.open(db_path, jobs={"rec": rec})
    assert info.value.path == db_path
    assert db_path in str(info.value) and "close" in str(info.value).lower()  # which path, what to do
    assert isinstance(info.value, storage.StorageLocked)
    # the failed open disturbed nothing of the first engine
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 0
    assert engine.wait("t", engine.trigger("t").id, timeout=WAIT).index == 1


@pytest.mark.timeout(60)
def test_storage_locked_by_another_process(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    make_engine.close(engine)
    holder = Child("lock_holder.py", db_path)
    try:
        holder.expect("READY")
        with pytest.raises(errors.StorageLocked) as info:
            Engine.open(db_path, jobs={"rec": rec})
        assert info.value.path == db_path and db_path in str(info.value)
    finally:
        assert holder.finish() == 0, holder.stderr()
    engine = make_engine(db_path, jobs={"rec": rec})
    assert engine.next_index("t") == 0


def _corrupt(path: str, key: bytes, value: bytes) -> None:
    raw = plyvel.DB(path)
    try:
        raw.put(key, value, sync=True)
    finally:
        raw.close()


@pytest.mark.parametrize("garbage", [b"garbage", b"S" + b"0" * 26 + b"\x00{not json", b""], ids=repr)
def test_corrupt_execution_record_names_its_key(make_engine, db_path, garbage):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    exs = [engine.trigger("t", blocking=True, timeout=WAIT) for _ in range(3)]
    make_engine.close(engine)
    bad_key = keys.execution_key("t", 1)
    _corrupt(db_path, bad_key, garbage)
    engine = make_engine(db_path, jobs={"rec": rec})
    e = raises(errors.CorruptRecord, lambda: engine.get_execution("t", exs[1].id))
    assert e.key == bad_key and repr(bad_key) in str(e)
    assert isinstance(e, storage.CorruptRecord) and isinstance(e, errors.EngineError)
    e = raises(errors.CorruptRecord, lambda: engine.list_executions("t"))
    assert e.key == bad_key
    assert engine.get_execution("t", exs[0].id).index == 0  # the rest stays readable
    assert engine.get_execution("t", exs[2].id).index == 2
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 3


def test_corrupt_counter_and_task_record_name_their_key(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("c", job="rec")
    engine.create_task("k", job="rec")
    engine.trigger("c", blocking=True, timeout=WAIT)
    make_engine.close(engine)
    _corrupt(db_path, keys.counter_key("c"), b"not a number")
    _corrupt(db_path, keys.task_key("k"), b"{broken")
    engine = make_engine(db_path, jobs={"rec": rec})
    e = raises(errors.CorruptRecord, lambda: engine.next_index("c"))
    assert e.key == keys.counter_key("c")
    e = raises(errors.CorruptRecord, lambda: engine.get_task("k"))
    assert e.key == keys.task_key("k")


def test_two_engines_in_one_process_are_independent(make_engine, fresh_path):
    baseline = len(pykka.ActorRegistry.get_all())
    r1, r2 = Recorder(), Recorder()
    e1 = make_engine(fresh_path("one"), jobs={"rec": r1})
    e2 = make_engine(fresh_path("two"), jobs={"rec": r2})
    for e in (e1, e2):
        e.create_task("t", job="rec")
        assert e.trigger("t", blocking=True, timeout=WAIT).index == 0
    close_bounded(e1)
    live = e2.stats().live_actors
    assert live > 0 and len(pykka.ActorRegistry.get_all()) >= baseline + live
    assert e2.trigger("t", blocking=True, timeout=WAIT).index == 1
    nb = e2.trigger("t")
    assert e2.wait("t", nb.id, timeout=WAIT).status == S.SUCCESS
    e2.create_task("new", job="rec")
    assert e2.trigger("new", blocking=True, timeout=WAIT).index == 0
    assert r2.count() == 4 and r1.count() == 1


def test_close_returns_after_all_its_actors_stopped(make_engine, fresh_path):
    """close() stops this engine's actors: when it returns, none of them is still registered
    (checked over 25 open/close cycles, as stopping may race)."""
    baseline = len(pykka.ActorRegistry.get_all())
    rec = Recorder()
    for cycle in range(25):
        engine = make_engine(fresh_path(f"db{cycle}"), jobs={"rec": rec}, workers=4)
        engine.create_task("t", job="rec")
        engine.trigger("t", blocking=True, timeout=WAIT)
        close_bounded(engine)
        left = [r.actor_class.__name__ for r in pykka.ActorRegistry.get_all()]
        assert len(left) == baseline, f"cycle {cycle}: actors still running after close(): {left}"


def test_stats_reports_the_documented_keys(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    engine.trigger("t")
    assert gate.wait_calls(1)
    engine.trigger("t")
    st = engine.stats()
    assert isinstance(st, EngineStats)
    assert set(st.to_json()) == {f.name for f in attrs.fields(EngineStats)}
    assert st.running == 1 and st.queued == 1
    assert st.triggered == 2 and st.finished == 0 and st.counter_actors == 1 and st.executors == 1


def test_open_refuses_what_is_not_a_taskengine_database(make_engine, tmp_path):
    not_db = tmp_path / "plain"
    not_db.mkdir()
    (not_db / "file.txt").write_text("hello")
    with pytest.raises(errors.StorageError) as info:
        Engine.open(str(not_db))
    assert isinstance(info.value, errors.EngineError)
    assert (not_db / "file.txt").read_text() == "hello"
    other = str(tmp_path / "other-leveldb")
    raw = plyvel.DB(other, create_if_missing=True)
    raw.put(b"someone", b"else")
    raw.close()
    with pytest.raises(errors.StorageError):
        Engine.open(other)
    newer = str(tmp_path / "newer")
    raw = plyvel.DB(newer, create_if_missing=True)
    raw.put(keys.SCHEMA_KEY, b"999")
    raw.close()
    with pytest.raises(errors.StorageError) as info:
        Engine.open(newer)
    assert "999" in str(info.value)


def test_idempotent_repeat_on_a_completed_task_returns_the_execution(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"rec": rec})
    engine.create_task("t", job="rec", max_executions=1)
    first = engine.trigger("t", idempotency_key="once", blocking=True, timeout=WAIT)
    again = engine.trigger("t", idempotency_key="once")
    assert (again.id, again.index) == (first.id, 0)
    raises(errors.TaskNotRunnable, engine.trigger, "t", idempotency_key="other")
    assert engine.next_index("t") == 1


def test_failed_open_leaks_no_actors(make_engine, db_path):
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 0
    baseline = len(pykka.ActorRegistry.get_all())
    assert baseline == engine.stats().live_actors
    for _ in range(3):
        with pytest.raises(errors.StorageLocked):
            Engine.open(db_path, jobs={"rec": rec})
    assert len(pykka.ActorRegistry.get_all()) == baseline
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 1


def test_close_stops_replaced_executors_once_their_job_returns(make_engine, db_path):
    """A hung job finished by job_timeout leaves its thread behind; once that job returns and
    the engine is closed, none of this engine's actors is left running."""
    baseline = len(pykka.ActorRegistry.get_all())
    hung = Gate()
    engine = make_engine(db_path, jobs={"hung": hung}, workers=1, job_timeout=0.3)
    engine.create_task("h", job="hung")
    ex = engine.trigger("h", blocking=True, timeout=WAIT)
    assert ex.status == S.FAILED
    hung.release()
    assert hung.wait_returned(1)
    close_bounded(engine)
    leftover = [ref for ref in pykka.ActorRegistry.get_all()][baseline:]
    assert len(pykka.ActorRegistry.get_all()) == baseline, f"actors left after close: {leftover}"


def test_a_setting_that_is_not_true_or_false_is_refused_at_open(db_path):
    with pytest.raises(errors.InvalidArgument, match="sync must be True or False, not 'no'"):
        Engine.open(db_path, sync="no")  # was taken as true: synced writes for a caller who asked for none
    assert not os.path.exists(db_path)


def test_backup_into_its_own_database_or_a_url_is_refused(make_engine, db_path, tmp_path):
    engine = make_engine(db_path, jobs={"rec": Recorder()})
    engine.create_task("t", job="rec")
    before = sorted(os.listdir(db_path))
    with pytest.raises(errors.StorageError, match="is inside the source database"):
        engine.backup(os.path.join(db_path, "copy"))  # once a second LevelDB inside the live directory
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/tasks"
    with pytest.raises(errors.StorageError) as info:
        engine.backup(url)  # once "cannot create backup at 'postgresql://app:s3cret-pw@...'"
    assert "s3cret" not in str(info.value) and "taskengine copy" in str(info.value)
    assert sorted(os.listdir(db_path)) == before
    assert not os.path.exists("postgresql:")

    class Broken(os.PathLike):  # type: ignore[type-arg]
        def __fspath__(self) -> str:
            raise RuntimeError("no path")

    with pytest.raises(errors.InvalidArgument, match="dest_path cannot be read: RuntimeError: no path"):
        engine.backup(Broken())
    assert engine.backup(tmp_path / "copy") > 0


def test_a_job_registered_again_runs_its_new_function_from_then_on(make_engine, db_path):
    """README, the API table: registering a name again is not an error; it replaces the function."""
    engine = make_engine(db_path, jobs={"j": lambda ctx: "first"})
    engine.create_task("t", job="j")
    assert engine.trigger("t", blocking=True, timeout=WAIT).result == "first"
    engine.register_job("j", lambda ctx: "second")
    assert engine.trigger("t", blocking=True, timeout=WAIT).result == "second"
