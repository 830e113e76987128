"""The hand-written fast paths must behave exactly like the library code they replace:
the record encoder like ``json`` on a dict, the write path like one plain write batch,
and the engine's Reply future like pykka's ThreadingFuture."""

from __future__ import annotations

import json
import math
import os
import queue
import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import attrs
import plyvel
import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskengine.actors.mailbox import EngineActor, Reply
from taskengine.storage import (
    Committer,
    Database,
    Execution,
    ExecutionStatus,
    WriteFailed,
    capi,
    changes,
    codec,
    durable,
    keys,
    records,
)

_reference = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode


def _reference_record(ex: Execution) -> bytes:
    body = _reference(
        {
            "blocking": ex.blocking,
            "data": ex.data,
            "result": ex.result,
            "error": ex.error,
            "created_at": ex.created_at,
            "started_at": ex.started_at,
            "finished_at": ex.finished_at,
            "idempotency_key": ex.idempotency_key,
        }
    )
    return ex.status.code + ex.id.encode() + keys.SEP + body.encode()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
_time = st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers()


@settings(max_examples=300, deadline=None)
@given(
    data=_json, result=_json, error=st.none() | st.text(), created=_time, started=_time, finished=_time,
    key=st.none() | st.text(), blocking=st.booleans(), status=st.sampled_from(list(ExecutionStatus)),
)
def test_record_encoding_is_byte_for_byte_what_json_writes(
    data: object, result: object, error: str | None, created: float | None, started: float | None,
    finished: float | None, key: str | None, blocking: bool, status: ExecutionStatus,
) -> None:
    ex = Execution(
        id="0" * 26, task_id="t", index=1, status=status, blocking=blocking, data=data, result=result,
        error=error, created_at=created, started_at=started, finished_at=finished, idempotency_key=key,
    )
    assert codec.encode_execution(ex) == _reference_record(ex)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_record_encoding_refuses_what_json_refuses(bad: float) -> None:
    ex = Execution(id="0" * 26, task_id="t", index=0, status=ExecutionStatus.PENDING, blocking=False,
                   created_at=bad)
    with pytest.raises(ValueError):
        codec.encode_execution(ex)


def test_a_prefix_deletion_after_puts_in_the_same_write_deletes_them_too(tmp_path: Path) -> None:
    """The write path falls back to tracking put keys only when a change deletes a prefix."""
    db = Database.open(str(tmp_path / "db"), create=True)
    try:
        committer = Committer(db, sync=False)
        committer.write([[(b"Ta\x00x1", b"on disk")], [(b"Tb\x00x1", b"other task")]])
        committer.write([
            [(b"Ta\x00x2", b"put earlier in this write")],
            [(b"Tb\x00x2", b"other task, this write")],
            changes.delete_task("a"),
            [(b"Ta\x00t", b"put after the deletion")],
        ])
        assert dict(db.raw.iterator(prefix=b"T")) == {
            b"Tb\x00x1": b"other task", b"Tb\x00x2": b"other task, this write", b"Ta\x00t": b"put after the deletion",
        }
    finally:
        db.close()


def test_reply_behaves_like_a_threading_future() -> None:
    reply: Reply[int] = Reply()
    with pytest.raises(pykka.Timeout):
        reply.get(timeout=0)
    got: list[int] = []
    waiters = [threading.Thread(target=lambda: got.append(reply.get(timeout=10))) for _ in range(4)]
    for t in waiters:
        t.start()
    reply.set(7)
    for t in waiters:
        t.join(10)
    assert got == [7, 7, 7, 7] and reply.get() == 7
    with pytest.raises(queue.Full):
        reply.set(8)
    assert reply.map(lambda v: v + 1).get(timeout=1) == 8

    failed: Reply[int] = Reply()
    error = KeyError("k")
    failed.set_exception((KeyError, error, None))
    for _ in range(2):
        with pytest.raises(KeyError):
            failed.get()

    hooked: Reply[str] = Reply()
    waiter = threading.Thread(target=lambda: got.append(len(hooked.get(timeout=10))))
    waiter.start()
    hooked.set_get_hook(lambda timeout: "hook")
    waiter.join(10)
    assert got[-1] == 4 and hooked.get() == "hook"


def test_engine_actors_answer_asks_with_replies() -> None:
    class Echo(EngineActor):
        def on_receive(self, message: object) -> object:
            if message == "boom":
                raise ValueError("boom")
            return message

    ref = Echo.start()
    try:
        future = ref.ask("hi", block=False)
        assert isinstance(future, Reply) and future.get(timeout=5) == "hi"
        with pytest.raises(ValueError):
            ref.ask("boom", timeout=5)
    finally:
        ref.stop()


def _random_changes(rng: random.Random, n: int) -> list[list[tuple[bytes, bytes | None]]]:
    keys_ = [b"T%d\x00x%d" % (rng.randrange(5), rng.randrange(50)) for _ in range(n)]
    return [[(k, None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 300)))] for k in keys_]


@pytest.mark.skipif(not plyvel.__version__.startswith(capi.KNOWN_PLYVEL), reason="plyvel layout not known")
def test_c_api_batches_write_what_plyvel_batches_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKENGINE_PLAIN_BATCH", raising=False)
    rng = random.Random(7)
    rounds = [_random_changes(rng, rng.randrange(1, 40)) for _ in range(60)]
    contents = []
    for plain in (False, True):
        if plain:
            monkeypatch.setenv("TASKENGINE_PLAIN_BATCH", "1")
        db = Database.open(str(tmp_path / f"db-{plain}"), create=True)
        try:
            committer = Committer(db, sync=False)
            assert (committer._capi is None) is plain
            for changes_ in rounds:
                committer.write(changes_)
            contents.append(dict(db.raw.iterator()))
        finally:
            db.close()
    assert contents[0] == contents[1] and len(contents[0]) > 10


@pytest.mark.skipif(not plyvel.__version__.startswith(capi.KNOWN_PLYVEL), reason="plyvel layout not known")
def test_c_api_write_to_a_closed_database_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKENGINE_PLAIN_BATCH", raising=False)
    db = Database.open(str(tmp_path / "db"), create=True)
    committer = Committer(db, sync=True)
    assert committer._capi is not None
    committer.write([[(b"Tk\x00x", b"v")]])
    db.close()
    with pytest.raises(WriteFailed, match="closed"):
        committer.write([[(b"Tk\x00y", b"v")]])


def test_the_c_api_is_only_used_on_a_plyvel_db_it_knows(tmp_path: Path) -> None:
    class NotPlyvel:
        closed = False
        name = "x"

    assert capi.db_pointer(NotPlyvel()) is None
    raw = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    try:
        known = plyvel.__version__.startswith(capi.KNOWN_PLYVEL)
        assert (capi.db_pointer(raw) is not None) is known
    finally:
        raw.close()
    assert capi.db_pointer(raw) is None  # closed


def test_racing_setters_one_wins_the_other_gets_full() -> None:
    for _ in range(200):
        reply: Reply[int] = Reply()
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def setter(
            value: int, reply: Reply[int] = reply, start: threading.Barrier = start, outcomes: list[object] = outcomes
        ) -> None:
            start.wait()
            try:
                reply.set(value)
                outcomes.append(value)
            except queue.Full:
                outcomes.append("full")

        threads = [threading.Thread(target=setter, args=(v,)) for v in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(outcomes, key=str) == sorted([reply.get(timeout=1), "full"], key=str)


def test_a_get_hook_runs_once_for_concurrent_getters() -> None:
    reply: Reply[int] = Reply()
    calls: list[float | None] = []
    gate = threading.Event()

    def hook(timeout: float | None) -> int:
        calls.append(timeout)
        gate.wait(10)
        return 5

    reply.set_get_hook(hook)
    got: list[int] = []
    getters = [threading.Thread(target=lambda: got.append(reply.get(timeout=10))) for _ in range(4)]
    for t in getters:
        t.start()
    gate.set()
    for t in getters:
        t.join(10)
    assert got == [5, 5, 5, 5] and len(calls) == 1
    with pytest.raises(queue.Full):
        reply.set(1)


def test_await_reply_gives_up_when_an_actor_on_the_way_is_gone() -> None:
    """An executor's Start passes through the pending store: if that stopped, EngineClosed."""
    from taskengine.actors.errors import EngineClosed
    from taskengine.actors.refs import await_reply

    class Idle(EngineActor):
        pass

    alive, gone = Idle.start(), Idle.start()
    gone.stop()
    try:
        with pytest.raises(EngineClosed):
            await_reply(Reply(), gone, alive)
    finally:
        alive.stop()


def test_state_changes_carry_every_field_as_evolve_would() -> None:
    """records.started / records.finished build an Execution positionally (for speed): each must
    give what attrs.evolve gives, over every field, with a distinct value in each."""
    examples: dict[str, object] = {
        "id": "01J0000000000000000000000A", "task_id": "t", "index": 3, "status": ExecutionStatus.PENDING,
        "blocking": True, "data": {"d": 1}, "result": [2], "error": "e", "created_at": 1.5,
        "started_at": 2.5, "finished_at": 3.5, "idempotency_key": "k", "traceback": "tb",
    }
    names = [field.name for field in attrs.fields(Execution)]
    assert sorted(examples) == sorted(names), "give the new Execution field an example value here"
    ex = Execution(**examples)  # type: ignore[arg-type]
    assert records.started(ex, 9.0) == attrs.evolve(ex, status=ExecutionStatus.RUNNING, started_at=9.0)
    assert records.started(ex, 9.0, 7) == attrs.evolve(
        ex, status=ExecutionStatus.RUNNING, started_at=9.0, index=7
    )
    assert records.finished(ex, ExecutionStatus.FAILED, 9.0, result=None, error="boom") == attrs.evolve(
        ex, status=ExecutionStatus.FAILED, finished_at=9.0, result=None, error="boom", traceback=None
    )
    assert records.finished(ex, ExecutionStatus.FAILED, 9.0, error="boom", traceback="T") == attrs.evolve(
        ex, status=ExecutionStatus.FAILED, finished_at=9.0, result=None, error="boom", traceback="T"
    )
    assert records.finished(ex, ExecutionStatus.SUCCESS, 9.0, result={"r": 1}) == attrs.evolve(
        ex, status=ExecutionStatus.SUCCESS, finished_at=9.0, result={"r": 1}, error=None, traceback=None
    )


# -- the directory check before every acknowledgement: the kernel's reports fsync when a scan would


def _watch_steps(d: Path) -> list[tuple[str, Callable[[], object], bool]]:
    """Changes to ``d`` and whether each makes its entries need an fsync."""
    return [
        ("nothing", lambda: None, False),
        ("create", lambda: (d / "a.log").write_bytes(b"x"), True),
        ("append", lambda: (d / "a.log").open("ab").write(b"y"), False),
        ("rename", lambda: (d / "a.log").rename(d / "b.log"), True),
        ("rename over", lambda: ((d / "tmp").write_bytes(b"1"), (d / "tmp").replace(d / "b.log")), True),
        ("mkdir", lambda: (d / "sub").mkdir(), True),
        ("in a subdirectory", lambda: (d / "sub" / "f").write_bytes(b"x"), False),
        ("unlink", lambda: (d / "b.log").unlink(), True),
        ("nothing", lambda: None, False),
    ]


def test_the_kernels_reports_fsync_the_directory_when_a_scan_would(tmp_path: Path) -> None:
    d = tmp_path / "db"
    d.mkdir()
    watches = {"events": durable.DirectoryWatch(str(d)), "scan": durable.DirectoryWatch(str(d), events=False)}
    if sys.platform.startswith("linux"):
        assert watches["events"].watching
    assert not watches["scan"].watching
    for w in watches.values():
        w.make_durable()
        assert w.syncs == 1  # the first check: what happened before it is not known
    for name, change, needs_sync in _watch_steps(d):
        change()
        for kind, w in watches.items():
            before = w.syncs
            w.make_durable()
            assert w.syncs - before == needs_sync, (kind, name)
    for w in watches.values():
        w.close()


def test_more_reports_than_one_read_holds_make_one_fsync(tmp_path: Path) -> None:
    watch = durable.DirectoryWatch(str(tmp_path))
    watch.make_durable()
    for i in range(600):  # far more events than the 4096-byte buffer takes at once
        (tmp_path / f"file-{i:04d}").write_bytes(b"")
    watch.make_durable()
    watch.make_durable()
    assert watch.syncs == 2
    watch.close()


def test_a_moved_directory_is_scanned_at_its_path_from_then_on(tmp_path: Path) -> None:
    d = tmp_path / "db"
    d.mkdir()
    watch = durable.DirectoryWatch(str(d))
    watch.make_durable()
    d.rename(tmp_path / "elsewhere")
    d.mkdir()
    watch.make_durable()  # the watch followed the old directory: it cannot tell about this one
    assert not watch.watching and watch.syncs == 2
    (d / "new").write_bytes(b"")
    watch.make_durable()
    assert watch.syncs == 3
    (d / "new").unlink()
    d.rmdir()
    with pytest.raises(durable.DirectorySyncFailed, match="No such file"):
        watch.make_durable()


def test_closing_the_database_releases_its_writers_directory_watch(tmp_path: Path) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    db = Database.open(str(tmp_path / "db"), create=True)
    db.close()  # LevelDB's own descriptors and caches settle on a first open
    before = open_fds()
    for _ in range(3):
        db = Database.open(str(tmp_path / "db"), create=False)
        committer = Committer(db, sync=True)
        committer.write([[(b"Tk\x00x", b"v")]])
        assert committer.directory is not None and committer.directory.watching is sys.platform.startswith("linux")
        db.close()
        assert not committer.directory.watching
    assert open_fds() == before
