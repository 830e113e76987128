"""Hostile input (issue 10, defect 10): what a caller passes is bounded, checked without recursion
blowing up, and rejected with InvalidArgument that changes nothing and consumes no index; a record
that a program with a raised recursion limit stored never stops the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine_helpers import WAIT, Recorder
from taskengine import Engine, ExecutionStatus, errors
from taskengine.storage import Database, codec, keys, values
from taskengine.tools import replay
from tools_dbs import DbBuilder, P, S

DEPTH = values.MAX_DEPTH
BYTES = values.MAX_BYTES

pytestmark = pytest.mark.timeout(60)


def nested_list(depth: int) -> Any:
    """``[[...[]...]]``: ``depth`` lists, built without recursion."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deep_json(open_: str, close: str, depth: int) -> bytes:
    """The JSON text of ``depth`` nested lists (``[``, ``]``) or dicts (``{"k":``, ``}``)."""
    inner = "[]" if open_ == "[" else "{}"
    return (open_ * (depth - 1) + inner + close * (depth - 1)).encode()


def nested_dict(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.fixture
def engine_t(make_engine: Any, db_path: str) -> tuple[Any, Recorder]:
    rec = Recorder()
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 0
    return engine, rec


def rejected(engine: Any, value: Any) -> list[str]:
    """Every way ``value`` reaches the engine is refused with InvalidArgument; the messages."""
    calls = [
        lambda: engine.trigger("t", value),
        lambda: engine.trigger("t", value, blocking=True, timeout=WAIT),
        lambda: engine.trigger_future("t", value, blocking=True).get(timeout=WAIT),
        lambda: engine.trigger_future("t", value).get(timeout=WAIT),
        lambda: engine.trigger("t", {"wrapped": value}, idempotency_key="k"),
        lambda: engine.create_task("c", job="rec", config=value),
    ]
    messages = []
    for call in calls:
        with pytest.raises(errors.InvalidArgument) as info:
            call()
        messages.append(str(info.value))
    return messages


def assert_unchanged(engine: Any, rec: Recorder) -> None:
    assert engine.next_index("t") == 1, "a rejected call consumed an index"
    assert [e.index for e in engine.list_executions("t")] == [0]
    assert rec.count() == 1
    with pytest.raises(errors.TaskNotFound):
        engine.get_task("c")
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 1  # and the engine goes on


@pytest.mark.parametrize("make", [nested_list, nested_dict])
def test_values_nested_1000_deep_are_invalid_argument(engine_t: Any, make: Any) -> None:
    engine, rec = engine_t
    for message in rejected(engine, make(1000)):
        assert f"more than {DEPTH} levels" in message, message
    assert_unchanged(engine, rec)


@pytest.mark.parametrize("make", [nested_list, nested_dict])
def test_the_nesting_limit_is_exact_and_survives_a_reopen(make_engine: Any, db_path: str, make: Any) -> None:
    rec = Recorder(result=lambda ctx: ctx.data)
    engine = make_engine(db_path, jobs={"rec": rec})
    engine.create_task("t", job="rec")
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 0
    at_limit = make(DEPTH)
    for message in rejected(engine, make(DEPTH + 1)):
        assert f"more than {DEPTH} levels" in message, message
    assert_unchanged(engine, rec)
    done = engine.trigger("t", at_limit, blocking=True, timeout=WAIT)
    assert done.status is ExecutionStatus.SUCCESS and done.result == at_limit
    pending = engine.trigger("t", at_limit)  # may be PENDING or done by the reopen: either is read back
    engine.create_task("c", job="rec", config=at_limit)
    make_engine.close(engine)
    engine = make_engine(db_path, jobs={"rec": rec})
    assert engine.get_task("c").config == at_limit
    assert engine.wait("t", pending.id, timeout=WAIT).data == at_limit
    assert [e.index for e in engine.list_executions("t")] == [0, 1, 2, 3]


#: a program that raised its recursion limit: the limit is process-wide, so this runs in a
#: child of its own (raised in the test process, it would apply to every actor thread of every
#: later test, whose C stacks are not sized for it)
RAISED_LIMIT_CHILD = """
import json, sys
from taskengine import Engine, errors
sys.setrecursionlimit(10_000)
value = []
for _ in range(2999):
    value = [value]
engine = Engine.open(sys.argv[1], jobs={"rec": lambda ctx: None})
engine.create_task("t", job="rec")
out = []
for call in (lambda: engine.trigger("t", value), lambda: engine.trigger("t", value, blocking=True, timeout=30),
             lambda: engine.trigger("t", {"wrapped": value}, idempotency_key="k"),
             lambda: engine.create_task("c", job="rec", config=value)):
    try:
        call()
    except errors.InvalidArgument as e:
        out.append(str(e))
    else:
        out.append("accepted")
print(json.dumps({"messages": out, "next_index": engine.next_index("t"), "tasks": len(engine.list_tasks())}))
engine.close()
"""


def test_a_raised_recursion_limit_does_not_raise_the_nesting_limit(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", RAISED_LIMIT_CHILD, str(tmp_path / "db")],
                           capture_output=True, text=True, timeout=50)
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout)
    assert len(got["messages"]) == 4
    for message in got["messages"]:
        assert f"more than {DEPTH} levels" in message, message
    assert got["next_index"] == 0 and got["tasks"] == 1, "a rejected call changed something"


def test_the_size_limit_counts_utf8_bytes(engine_t: Any) -> None:
    engine, rec = engine_t
    for too_big in ("x" * (BYTES - 1), "é" * (BYTES // 2), {"k": "x" * BYTES}):
        for message in rejected(engine, too_big):
            assert f"larger than the limit of {BYTES} bytes" in message, message
    assert_unchanged(engine, rec)
    fits = "x" * (BYTES - 2)  # '"' + 1 MiB - 2 + '"': exactly the limit as JSON
    assert engine.trigger("t", fits, blocking=True, timeout=WAIT).data == fits


class RaisingDict(dict[str, Any]):
    def items(self) -> Any:
        raise KeyError("items")

    def keys(self) -> Any:
        raise KeyError("keys")

    def values(self) -> Any:
        raise KeyError("values")

    def __iter__(self) -> Iterator[str]:
        raise KeyError("iter")


class RaisingList(list[Any]):
    def __iter__(self) -> Iterator[Any]:
        raise LookupError("iter")

    def __len__(self) -> int:
        raise LookupError("len")


class RecursingDict(dict[str, Any]):
    def items(self) -> Any:
        return self.items()


HOSTILE = [
    (RaisingDict(a=1), "cannot be stored as JSON: KeyError"),
    (RaisingList([1]), "cannot be stored as JSON: LookupError"),
    ({"x": RaisingDict(a=1)}, "cannot be stored as JSON: KeyError"),
    ([1, [RaisingList([2])]], "cannot be stored as JSON: LookupError"),
    (RecursingDict(a=1), f"more than {DEPTH} levels"),
]


@pytest.mark.parametrize(("value", "expected"), HOSTILE, ids=["dict", "list", "in-dict", "in-list", "recursing"])
def test_containers_that_raise_are_invalid_argument(engine_t: Any, value: Any, expected: str) -> None:
    engine, rec = engine_t
    for message in rejected(engine, value):
        assert expected in message, message
    assert_unchanged(engine, rec)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (lambda: nested_list(1000), f"more than {DEPTH} levels"),
        (lambda: nested_list(DEPTH + 1), f"more than {DEPTH} levels"),
        (lambda: RaisingDict(a=1), "cannot be stored as JSON"),
        (lambda: RecursingDict(a=1), f"more than {DEPTH} levels"),
        (lambda: "x" * BYTES, f"larger than the limit of {BYTES} bytes"),
    ],
    ids=["1000-deep", "limit+1", "raising-dict", "recursing-dict", "too-big"],
)
def test_a_result_beyond_the_limits_fails_its_execution(
    make_engine: Any, db_path: str, result: Any, expected: str
) -> None:
    engine = make_engine(db_path, jobs={"bad": lambda ctx: result(), "ok": lambda ctx: 1})
    engine.create_task("t", job="bad")
    engine.create_task("u", job="ok")
    for blocking in (True, False):
        ex = engine.trigger("t", blocking=blocking)
        done = engine.wait("t", ex.id, timeout=WAIT)
        assert done.status is ExecutionStatus.FAILED and done.result is None
        assert done.error is not None and done.error.startswith("InvalidResult: ") and expected in done.error
    assert engine.trigger("u", blocking=True, timeout=WAIT).result == 1
    assert engine.stats().replaced_executors == 0


class HostileStr(str):
    """A str whose own methods all fail: only its characters may be used."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        raise KeyError("encode")

    def __hash__(self) -> int:
        raise KeyError("hash")

    def __eq__(self, other: object) -> bool:
        raise KeyError("eq")

    def isprintable(self) -> bool:
        raise KeyError("isprintable")

    def __str__(self) -> str:
        raise KeyError("str")


def test_str_subclasses_whose_methods_raise_are_used_as_plain_strings(engine_t: Any) -> None:
    engine, rec = engine_t
    first = engine.list_executions("t")[0]
    engine.register_job(HostileStr("other"), lambda ctx: "other")
    task = engine.create_task(HostileStr("h"), job=HostileStr("other"))
    assert type(task.id) is str and type(task.job) is str and task.id == "h"
    assert engine.trigger(HostileStr("h"), blocking=True, timeout=WAIT).result == "other"
    ex = engine.trigger("t", idempotency_key=HostileStr("k"))
    assert engine.trigger("t", idempotency_key="k").id == ex.id
    assert type(engine.get_execution("t", ex.id).idempotency_key) is str
    assert engine.get_execution(HostileStr("t"), HostileStr(first.id)) == first
    assert engine.wait("t", ex.id, timeout=WAIT).index == 1
    with pytest.raises(errors.InvalidArgument):
        engine.trigger(HostileStr("bad\n"))
    assert engine.trigger("t", blocking=True, timeout=WAIT).index == 2


class HostileInt(int):
    def __le__(self, other: object) -> bool:
        raise KeyError("le")

    def __ge__(self, other: object) -> bool:
        raise KeyError("ge")

    def __repr__(self) -> str:
        raise KeyError("repr")


class HostileFloat(float):
    def __ge__(self, other: object) -> bool:
        raise KeyError("ge")

    def __gt__(self, other: object) -> bool:
        raise KeyError("gt")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise KeyError("str")


class RaisingWithUnprintable(dict[str, Any]):
    def items(self) -> Any:
        raise UnprintableError()


def test_numbers_and_errors_of_hostile_classes_never_escape(engine_t: Any) -> None:
    engine, rec = engine_t
    assert engine.create_task("m", job="rec", max_executions=HostileInt(2)).max_executions == 2
    assert engine.trigger("m", blocking=True, timeout=HostileFloat(WAIT)).index == 0
    assert engine.list_executions("m", limit=HostileInt(5), after=HostileInt(0)) == []
    with pytest.raises(errors.InvalidArgument):
        engine.create_task("n", job="rec", max_executions=HostileInt(-1))
    for bad in (True, False):
        with pytest.raises(errors.InvalidArgument):
            engine.trigger("t", blocking=True, timeout=bad)
        with pytest.raises(errors.InvalidArgument):
            engine.create_task("n", job="rec", max_executions=bad)
    with pytest.raises(errors.InvalidArgument) as info:
        engine.trigger("t", RaisingWithUnprintable(a=1))
    assert "UnprintableError" in str(info.value)
    with pytest.raises(errors.InvalidArgument):
        engine.get_execution("t", HostileInt(1))
    assert engine.next_index("t") == 1 and rec.count() == 2  # the one in "m"


class RaisingMapping(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise KeyError("iter")

    def __len__(self) -> int:
        return 1

    def items(self) -> Any:
        raise KeyError("items")


class RaisingPath(os.PathLike[str]):
    def __fspath__(self) -> str:
        raise KeyError("fspath")


class BytesPath(os.PathLike[bytes]):
    def __fspath__(self) -> bytes:
        return b"db"


@pytest.mark.parametrize(
    "path",
    ["a\x00b", "dir\ud800", "dir\udcff", RaisingPath(), BytesPath(), b"db", ""],
    ids=["nul", "surrogate", "escaped-byte", "raising-fspath", "bytes-fspath", "bytes", "empty"],
)
def test_unusable_paths_are_invalid_argument_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.InvalidArgument) as info:
        Engine.open(path)
    assert "path" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_jobs_mapping_that_raises_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        Engine.open(tmp_path / "db", jobs=RaisingMapping())
    assert "jobs" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_a_record_stored_with_a_raised_recursion_limit_does_not_stop_the_engine(
    make_engine: Any, db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a program that raised its recursion limit could store before the limits existed:
    a PENDING execution whose data is 3,000 deep, and a task whose config is."""
    with DbBuilder(db_path) as b:  # each task: index 0 finished, index 1 PENDING (non-blocking)
        b.task("deep-data")
        b.execution("deep-data", S)
        bad = b.execution("deep-data", P)
        b.task("deep-config")
        b.executions("deep-config", S, P)
        b.task("good")
        b.execution("good", S)
        good = b.execution("good", P)
        # the deep JSON is spliced in as text: since Python 3.12 json's C encoder has a depth limit
        # of its own that sys.setrecursionlimit does not raise, so it cannot write these any more
        spot = "DEEP-VALUE-GOES-HERE"
        record = codec.encode_execution(attrs.evolve(bad, data=spot))
        b.put(keys.execution_key("deep-data", 1), record.replace(f'"{spot}"'.encode(), deep_json("[", "]", 3000)))
        task = codec.encode_task(attrs.evolve(b.db.get_task("deep-config"), config=spot))
        b.put(keys.task_key("deep-config"), task.replace(f'"{spot}"'.encode(), deep_json('{"k":', "}", 3000)))
    rec = Recorder()
    engine = make_engine(db_path, jobs={"job": rec})
    assert engine.wait("good", good.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    record_key = keys.execution_key("deep-data", 1)
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert repr(record_key) in logged and repr(keys.task_key("deep-config")) in logged
    with pytest.raises(errors.CorruptRecord) as info:
        engine.get_execution("deep-data", bad.id)
    assert info.value.key == record_key and f"more than {DEPTH + 1} levels" in str(info.value)
    with pytest.raises(errors.CorruptRecord) as info:
        engine.trigger("deep-config")
    assert info.value.key == keys.task_key("deep-config")
    assert engine.trigger("deep-data", blocking=True, timeout=WAIT).index == 2  # the task itself is sound
    assert engine.trigger("good", blocking=True, timeout=WAIT).index == 2
    assert rec.count() == 3
    engine.close()
    db = Database.open(db_path)
    try:
        found = [str(v) for v in replay.check(db).violations]
    finally:
        db.close()
    assert any(repr(record_key) in v for v in found), found
    assert any(repr(keys.task_key("deep-config")) in v for v in found), found


THREAD_LIMIT_CHILD = r"""
import resource, sys, threading
import pykka
from taskengine import Engine, errors

path = sys.argv[1]
Engine.open(path).close()  # everything imported and mapped before the limit
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
# room for a few dozen threads' stacks: the open below asks for a thousand
resource.setrlimit(resource.RLIMIT_AS, (size + 400 * 2**20, resource.RLIM_INFINITY))
baseline = set(threading.enumerate())
for kwargs in ({"workers": 1000}, {"counter_actors": 1000}):
    try:
        Engine.open(path, **kwargs).close()
    except errors.InvalidArgument as e:
        print("refused:", e)
    started = [t for t in threading.enumerate() if t not in baseline]
    for t in started:  # stopped, some without waiting: each ends once it has handled its stop
        t.join(timeout=30)
    alive = [ref for ref in pykka.ActorRegistry.get_all() if ref.is_alive()]
    print("left:", sum(t.is_alive() for t in started), len(pykka.ActorRegistry.get_all()), len(alive))
pykka.ActorRegistry.stop_all()  # returns: no actor left registered without a thread
with Engine.open(path, workers=2, jobs={"j": lambda ctx: ctx.index}) as engine:
    engine.create_task("t", job="j")
    print("after:", engine.trigger("t", blocking=True, timeout=30).result)
"""


@pytest.mark.timeout(120)
def test_an_open_asking_for_more_threads_than_the_process_can_start_is_refused_and_leaves_none(
    tmp_path: Path,
) -> None:
    """The threads the open started are stopped (a failed open left thousands, and the process could
    start none after), and the error is InvalidArgument, not threading's RuntimeError."""
    done = subprocess.run([sys.executable, "-c", THREAD_LIMIT_CHILD, str(tmp_path / "db")], capture_output=True,
                          text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: cannot start 1000 executors (") and "can't start new thread" in lines[0]
    assert lines[2].startswith("refused: cannot start the engine's threads (") and "1000 counter actors" in lines[2]
    assert lines[1] == lines[3] == "left: 0 0 0", lines
    assert lines[4] == "after: 0"
    assert "Traceback" not in done.stderr, done.stderr
