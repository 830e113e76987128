"""Stored values of the wrong type (issue 10, defect 11): every decoder returns a valid record or
raises CorruptRecord naming its key; the engine opens and goes on serving the other tasks; replay
reports a violation; inspect ends with one line, never a traceback. Fuzzed with hypothesis."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_helpers import WAIT, Recorder
from taskengine import Engine, ExecutionStatus, errors
from taskengine.storage import CorruptRecord, Database, Execution, Task, codec, keys, values
from taskengine.tools import leveldb_scan, replay
from taskengine.tools.cli import main
from tools_dbs import DbBuilder, F, P, R, S, new_id

pytestmark = pytest.mark.timeout(120)

EXAMPLES = int(os.environ.get("CORRUPT_EXAMPLES", "1"))  # raise it to search harder


def deep(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def task_json(**fields: Any) -> bytes:
    d: dict[str, Any] = {
        "id": "bad", "job": "job", "config": None, "max_executions": None, "created_at": 1.0, "incarnation": "i",
    }  # fmt: skip
    d.update(fields)
    return json.dumps(d).encode()


def body(ex: Execution, **fields: Any) -> bytes:
    """An execution record with some body fields replaced (values as raw JSON text)."""
    d = {
        "blocking": "false", "data": "null", "result": "null", "error": "null", "created_at": "1.0",
        "started_at": "null", "finished_at": "null", "idempotency_key": '"k"',
    }  # fmt: skip
    d.update({k: v.decode() if isinstance(v, bytes) else v for k, v in fields.items()})
    text = "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"
    return b"P" + ex.id.encode() + b"\x00" + text.encode()


# (key, value) of a damage done to task "bad", whose execution 1 is PENDING with idempotency key "k"
CASES: dict[str, Callable[[Execution], tuple[bytes, bytes]]] = {
    "max_executions-x": lambda ex: (keys.task_key("bad"), task_json(max_executions="x")),
    "max_executions-bool": lambda ex: (keys.task_key("bad"), task_json(max_executions=True)),
    "max_executions-0": lambda ex: (keys.task_key("bad"), task_json(max_executions=0)),
    "job-number": lambda ex: (keys.task_key("bad"), task_json(job=5)),
    "task-id-of-another": lambda ex: (keys.task_key("bad"), task_json(id="good")),
    "task-not-an-object": lambda ex: (keys.task_key("bad"), b"[1, 2]"),
    "task-5000-deep": lambda ex: (keys.task_key("bad"), task_json(config=None).replace(b"null", deep(5000), 1)),
    "task-nan": lambda ex: (keys.task_key("bad"), task_json(created_at=float("nan"))),
    "task-not-utf8": lambda ex: (keys.task_key("bad"), task_json(job="\udcff").replace(b"\\udcff", b"\xff")),
    "prune-mark-x": lambda ex: (keys.prune_mark_key("bad"), b"x"),
    "live-not-utf8": lambda ex: (keys.live_key("bad", 1), b"\xff\xfe"),
    "live-not-an-id": lambda ex: (keys.live_key("bad", 1), b"short"),
    "idempotency-not-utf8": lambda ex: (keys.idempotency_key("bad", "k"), b"\xff\xfe"),
    "record-5000-deep": lambda ex: (keys.execution_key("bad", 1), body(ex, data=deep(5000))),
    "record-101-deep": lambda ex: (keys.execution_key("bad", 1), body(ex, data=deep(values.MAX_DEPTH + 1))),
    "blocking-string": lambda ex: (keys.execution_key("bad", 1), body(ex, blocking='"yes"')),
    "created-at-string": lambda ex: (keys.execution_key("bad", 1), body(ex, created_at='"x"')),
    "created-at-overflows": lambda ex: (keys.execution_key("bad", 1), body(ex, created_at="1e400")),
    "data-infinity": lambda ex: (keys.execution_key("bad", 1), body(ex, data="1e999")),
    "data-nan-literal": lambda ex: (keys.execution_key("bad", 1), body(ex, data="NaN")),
    "data-lone-surrogate": lambda ex: (keys.execution_key("bad", 1), body(ex, data='"\\ud800"')),
    "key-number": lambda ex: (keys.execution_key("bad", 1), body(ex, idempotency_key="5")),
    "error-list": lambda ex: (keys.execution_key("bad", 1), body(ex, error="[]")),
    "body-missing-field": lambda ex: (keys.execution_key("bad", 1), body(ex)[: -len(',"idempotency_key":"k"}')] + b"}"),
}


def build(path: Path, case: str) -> bytes:
    """Tasks ``bad`` and ``good``, each with a finished execution at index 0 and a PENDING one at
    index 1 (``bad``'s with idempotency key ``k``), then the damage; returns the damaged key."""
    with DbBuilder(path) as b:
        b.task("bad")
        b.execution("bad", S)
        ex = b.execution("bad", P, idempotency_key="k")
        b.task("good")
        b.executions("good", S, P)
        key, value = CASES[case](ex)
        b.put(key, value)
    return key


def engine_calls(engine: Engine, task_id: str) -> dict[str, Callable[[], Any]]:
    """Every call that reads or changes ``task_id``."""
    return {
        "get_task": lambda: engine.get_task(task_id),
        "next_index": lambda: engine.next_index(task_id),
        "trigger-key": lambda: engine.trigger(task_id, idempotency_key="k"),
        "trigger": lambda: engine.trigger(task_id),
        "trigger-blocking": lambda: engine.trigger(task_id, blocking=True, timeout=WAIT),
        "list": lambda: engine.list_executions(task_id),
        "list-newest": lambda: engine.list_executions(task_id, newest_first=True),
        "get_execution": lambda: [engine.get_execution(task_id, e.id) for e in engine.list_executions(task_id)],
    }


def outcomes(engine: Engine, task_id: str) -> dict[str, Any]:
    """What each call answered: a value, or the EngineError it raised (anything else fails the test)."""
    out: dict[str, Any] = {}
    for name, call in engine_calls(engine, task_id).items():
        try:
            out[name] = call()
        except errors.ExecutionTimeout:
            out[name] = "timeout"
        except errors.EngineError as e:
            out[name] = e
    return out


def tool_runs(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[int, str, str]]:
    """Exit status, stdout and stderr of replay and every inspect view, run in this process:
    an exception that escapes ``main`` fails the test."""
    runs = {
        "replay": ["replay", str(path)],
        "replay-json": ["replay", "--json", str(path)],
        "inspect": ["inspect", str(path)],
        "inspect-bad": ["inspect", str(path), "--task", "bad"],
        "inspect-index": ["inspect", str(path), "--task", "bad", "--index", "1"],
        "inspect-good": ["inspect", str(path), "--task", "good"],
    }
    out = {}
    for name, argv in runs.items():
        code = main(argv)
        stdout, stderr = capsys.readouterr()
        assert "Traceback" not in stdout + stderr, (name, stderr)
        out[name] = (code, stdout, stderr)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_stored_value_is_corrupt_record_and_the_engine_goes_on(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db"
    bad_key = build(path, case)
    named = repr(bad_key)

    runs = tool_runs(path, capsys)
    for name in ("replay", "replay-json"):
        code, _, stderr = runs[name]
        assert code == 1 and "violation: task 'bad': " in stderr, (name, stderr)
        assert all(line.startswith("violation: ") for line in stderr.splitlines()), stderr
    assert runs["inspect-good"][0] == 0
    for name in ("inspect", "inspect-bad", "inspect-index"):
        code, _, stderr = runs[name]
        assert code in (0, 1), (name, code, stderr)
        if code:
            assert len(stderr.splitlines()) == 1 and stderr.startswith("taskengine inspect: error: "), stderr

    caplog.set_level(logging.ERROR)
    rec = Recorder()
    with Engine.open(path, jobs={"job": rec}) as engine:
        # the good task's recovered execution runs, and the good task serves
        good = engine.list_executions("good")[1]
        assert engine.wait("good", good.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
        assert engine.trigger("good", blocking=True, timeout=WAIT).index == 2
        found = outcomes(engine, "bad")
        corrupt = [e for e in found.values() if isinstance(e, errors.CorruptRecord)]
        assert all(e.key == bad_key for e in corrupt), found
        assert all(isinstance(e, errors.CorruptRecord) or not isinstance(e, errors.EngineError) for e in found.values())
        if bad_key.startswith(keys.LIVE_TAG):  # only recovery reads it: it says so, and runs the record
            assert not corrupt
            assert any(named in r.getMessage() for r in caplog.records), caplog.text
            pending = engine.list_executions("bad")[1]
            assert engine.wait("bad", pending.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
        else:
            assert corrupt, found
        engine.create_task("new", job="job")
        assert engine.trigger("new", blocking=True, timeout=WAIT).index == 0
        assert engine.stats().replaced_executors == 0
        listed = [t.id for t in engine.list_tasks()]
        task_unreadable = isinstance(found["get_task"], errors.CorruptRecord)
        assert listed == (["good", "new"] if task_unreadable else ["bad", "good", "new"])
        if task_unreadable:  # left out of the listing, and said so
            assert any(named in r.getMessage() and "list_tasks" in r.getMessage() for r in caplog.records)
            # and deleted all the same: the task can be made again, fresh
            engine.delete_task("bad")
            with pytest.raises(errors.TaskNotFound):
                engine.get_task("bad")
            engine.create_task("bad", job="job")
            assert engine.trigger("bad", blocking=True, timeout=WAIT).index == 0
    if task_unreadable:
        assert main(["replay", str(path)]) == 0, capsys.readouterr().err


def test_a_malformed_task_key_hides_no_other_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "db"
    with DbBuilder(path) as b:
        b.task("a")
        b.task("z")
        b.executions("z", S, P)
        b.put(b"T\xff\xfe\x00t", task_json())
        b.put(b"T\xff\xfe\x00c", b"0")
    assert "malformed task key" in tool_runs(path, capsys)["replay"][2]
    with Engine.open(path, jobs={"job": Recorder()}) as engine:
        assert [t.id for t in engine.list_tasks()] == ["a", "z"]
        assert engine.trigger("z", blocking=True, timeout=WAIT).index == 2


def _messages(path: Path) -> list[str]:
    db = Database.open(str(path))
    try:
        return [str(v) for v in replay.check(db).violations]
    finally:
        db.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_reports_it_whether_the_task_is_proven_or_read_record_by_record(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LevelDB reader decodes unfinished bodies on both of its paths: after proving a task
    sound, and record by record when it cannot."""
    build(tmp_path / "db", case)
    fast = _messages(tmp_path / "db")
    assert any("task 'bad'" in m for m in fast), fast

    def never_proven(self: leveldb_scan._TaskScan, first: tuple[bytes, bytes], it: Any) -> Any:
        it.seek(self.x_end)
        return next(it, None)

    monkeypatch.setattr(leveldb_scan._TaskScan, "prove", never_proven)
    assert _messages(tmp_path / "db") == fast


# -- the decoders, fuzzed ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
anything = (
    json_values
    | st.sampled_from([float("nan"), 10**400, -1, True, [], {}])
    | st.just(deep(values.MAX_DEPTH + 2).decode())
)

ids = st.builds(new_id)
tasks = st.builds(
    Task,
    id=st.just("t"),
    job=st.text(min_size=1, max_size=8),
    config=json_values,
    max_executions=st.none() | st.integers(1, 2**63 - 1),
    created_at=st.floats(0, 2e9),
    incarnation=ids,
)
executions = st.builds(
    Execution,
    id=ids,
    task_id=st.just("t"),
    index=st.just(3),
    status=st.sampled_from(list(ExecutionStatus)),
    blocking=st.booleans(),
    data=json_values,
    result=json_values,
    error=st.none() | st.text(max_size=10),
    created_at=st.floats(0, 2e9),
    started_at=st.none() | st.floats(0, 2e9),
    finished_at=st.none() | st.floats(0, 2e9),
    idempotency_key=st.none() | st.text(min_size=1, max_size=8),
)

# byte-level damage: replace a stretch, insert, cut, or put a JSON value of any type in a field
INSERTS = [b"[", b"{", b"\xff", b'"', b"\\ud800", b"1e999"]
mutation = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 400), st.binary(max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, 400), st.sampled_from(INSERTS)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.integers(1, 50)),
    st.tuples(st.just("field"), st.integers(0, 20), anything),
)


def mutate(value: bytes, how: tuple[Any, ...], fields: list[str], header: int) -> bytes:
    kind, at, arg = how
    if kind == "replace":
        at %= len(value) + 1
        return value[:at] + arg + value[at + len(arg) :]
    if kind == "insert":
        at %= len(value) + 1
        return value[:at] + arg + value[at:]
    if kind == "cut":
        at %= len(value) + 1
        return value[:at] + value[at + arg :]
    d = json.loads(value[header:])
    field = fields[at % len(fields)]
    if isinstance(arg, str) and arg.startswith("[["):
        text = json.dumps({**d, field: None}).replace(f'"{field}": null', f'"{field}": {arg}')
    else:
        d[field] = arg
        text = json.dumps(d)  # may write NaN: the decoder must refuse it
    return value[:header] + text.encode()


def assert_json_like(value: Any, depth: int = 0) -> None:
    """JSON as the engine stores it: a container at ``depth`` 0 is the value itself."""
    if isinstance(value, dict | list):
        assert depth < values.MAX_DEPTH
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            assert_json_like(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            assert_json_like(v, depth + 1)
    elif isinstance(value, float):
        assert math.isfinite(value)
    else:
        assert value is None or type(value) in (bool, int, str)
    if isinstance(value, str):
        value.encode()  # no lone surrogate


def assert_valid_task(task: Task, key: bytes) -> None:
    assert task.id == "t" and type(task.job) is str and task.job and type(task.incarnation) is str
    assert task.max_executions is None or (type(task.max_executions) is int and 1 <= task.max_executions < 2**63)
    assert type(task.created_at) is int or (type(task.created_at) is float and math.isfinite(task.created_at))
    assert_json_like(task.config)
    assert codec.decode_task(key, codec.encode_task(task)) == task  # it can be written back


def assert_valid_execution(ex: Execution, key: bytes) -> None:
    assert type(ex.blocking) is bool and isinstance(ex.status, ExecutionStatus)
    assert ex.error is None or type(ex.error) is str
    assert ex.idempotency_key is None or type(ex.idempotency_key) is str
    for t in (ex.created_at, ex.started_at, ex.finished_at):
        assert t is None or type(t) is int or (type(t) is float and math.isfinite(t))
    assert ex.created_at is not None
    assert_json_like(ex.data)
    assert_json_like(ex.result)
    again = codec.decode_execution(key, codec.encode_execution(ex), ex.task_id, 3)
    assert again == ex


TASK_FIELDS = ["id", "job", "config", "max_executions", "created_at", "incarnation"]
BODY_FIELDS = ["blocking", "data", "result", "error", "created_at", "started_at", "finished_at", "idempotency_key"]


@settings(max_examples=500 * EXAMPLES, deadline=None)
@given(task=tasks, damage=st.lists(mutation, min_size=1, max_size=3))
def test_decode_task_returns_a_valid_task_or_raises_corrupt_record(task: Task, damage: list[Any]) -> None:
    key = keys.task_key("t")
    value = codec.encode_task(task)
    for how in damage:
        try:
            value = mutate(value, how, TASK_FIELDS, 0)
        except (ValueError, TypeError):  # a field mutation of what is no JSON object: keep the bytes
            pass
    try:
        decoded = codec.decode_task(key, value, 7)
    except CorruptRecord as e:
        assert e.key == key
        return
    assert decoded.execution_count == 7
    assert_valid_task(attrs.evolve(decoded, execution_count=0), key)


@settings(max_examples=500 * EXAMPLES, deadline=None)
@given(ex=executions, damage=st.lists(mutation, min_size=1, max_size=3))
def test_decode_execution_returns_a_valid_record_or_raises_corrupt_record(ex: Execution, damage: list[Any]) -> None:
    key = keys.execution_key("t", 3)
    value = codec.encode_execution(ex)
    for how in damage:
        try:
            value = mutate(value, how, BODY_FIELDS, codec.ID_END + 1)
        except (ValueError, TypeError):
            pass
    try:
        status, eid = codec.peek_execution(key, value)
    except CorruptRecord as e:
        assert e.key == key
    else:
        assert isinstance(status, ExecutionStatus) and len(eid) == codec.ID_LEN and eid.isascii()
    try:
        decoded = codec.decode_execution(key, value, "t", 3)
    except CorruptRecord as e:
        assert e.key == key
        return
    assert_valid_execution(decoded, key)


@settings(max_examples=500 * EXAMPLES, deadline=None)
@given(raw=st.binary(max_size=40) | st.builds(lambda i: i.encode(), ids), key=st.binary(max_size=40))
def test_the_small_decoders_return_a_valid_value_or_raise_corrupt_record(raw: bytes, key: bytes) -> None:
    for decode, valid in (
        (codec.decode_int, lambda n: type(n) is int and 0 <= n < 2**64),
        (codec.decode_execution_id, lambda s: type(s) is str and len(s) == codec.ID_LEN and s.isascii()),
    ):
        try:
            out = decode(key, raw)
        except CorruptRecord as e:
            assert e.key == key
        else:
            assert valid(out), out
    parsed = keys.parse_task_key(key)
    assert parsed is None or (type(parsed.task_id) is str and keys.task_prefix(parsed.task_id) in key)
    live = keys.parse_live_key(key)
    assert live is None or keys.live_key(*live) == key


# -- a mutated database: the engine opens and serves, the tools never trace back ---------------

db_mutation = st.tuples(
    st.sampled_from(["value", "field", "key", "delete"]),
    st.integers(0, 1000),
    anything,
    st.binary(max_size=12),
)


def _mutate_db(b: DbBuilder, how: tuple[Any, ...]) -> None:
    kind, n, value, blob = how
    all_keys = [k for k in b.db.raw.iterator(include_value=False) if k != keys.SCHEMA_KEY]
    key = all_keys[n % len(all_keys)]
    old = b.db.raw.get(key)
    if kind == "delete":
        b.delete(key)
    elif kind == "key":  # the same value under a damaged key
        b.delete(key)
        at = 1 + n % len(key)
        b.put(key[:at] + blob + key[at + len(blob) :], old)
    elif kind == "value":
        b.put(key, mutate(old, ("replace", n, blob), [], 0))
    else:  # a JSON field of the task record or execution record, if it is one
        header = codec.ID_END + 1 if key.startswith(keys.TASK_TAG) and key[-9:-8] == keys.EXECUTION else 0
        try:
            b.put(key, mutate(old, ("field", n, value), TASK_FIELDS if header == 0 else BODY_FIELDS, header))
        except (ValueError, TypeError, IndexError):  # not a JSON object there
            b.put(key, mutate(old, ("insert", n, b"["), [], 0))


@settings(
    max_examples=40 * EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(damage=st.lists(db_mutation, min_size=1, max_size=3))
def test_a_mutated_database_never_stops_the_engine_or_the_tools(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], damage: list[Any]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "db"
    with DbBuilder(path) as b:
        for t in ("a", "b"):
            b.task(t, max_executions=50)
            b.execution(t, S, idempotency_key="k")
            b.execution(t, P)
            b.execution(t, R)
            b.execution(t, F)
        for how in damage:
            _mutate_db(b, how)
    tool_runs(path, capsys)
    db = Database.open(str(path))
    try:
        replay.check(db, on_execution=lambda ex: None)
    finally:
        db.close()
    rec = Recorder()
    with Engine.open(path, jobs={"job": rec}) as engine:
        for t in ("a", "b"):
            outcomes(engine, t)
        engine.list_tasks()  # a damaged task is left out, never raised
        engine.create_task("new", job="job")
        assert engine.trigger("new", blocking=True, timeout=WAIT).index == 0
        assert engine.stats().replaced_executors == 0
