"""Regression tests for defects an independent review found: strings UTF-8 cannot store,
the caller's data object kept by reference, rejections answered before their turn's write,
close() from inside a job or from two threads, blocking futures fired in a row, watchers of
rejected blocking triggers, idempotency keys kept in memory after they are on disk."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskengine import Engine, ExecutionStatus, InvalidArgument, JobContext, TaskNotFound
from taskengine.storage import Database

SURROGATE = "name-\udcff"  # what os.fsdecode gives for a file name that is not UTF-8


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    def job(ctx: JobContext) -> Any:
        if ctx.data == "surrogate-result":
            return SURROGATE
        if ctx.data == "surrogate-error":
            raise ValueError(SURROGATE)
        return ctx.data

    e = Engine.open(str(tmp_path / "db"), jobs={"job": job}, workers=2)
    e.create_task("t", job="job")
    yield e
    e.close()


def _replay_clean(path: str) -> None:
    from taskengine.tools.replay import check

    db = Database.open(path)
    try:
        report = check(db, None)
        assert report.ok, [str(v) for v in report.violations]
    finally:
        db.close()


def test_strings_utf8_cannot_store_are_rejected_and_consume_nothing(engine: Engine, tmp_path: Path) -> None:
    for bad in ({"name": SURROGATE}, [SURROGATE], SURROGATE):
        with pytest.raises(InvalidArgument):
            engine.trigger("t", bad)
        with pytest.raises(InvalidArgument):
            engine.trigger("t", bad, blocking=True, timeout=5)
    with pytest.raises(InvalidArgument):
        engine.trigger("t", idempotency_key=SURROGATE)
    with pytest.raises(InvalidArgument):
        engine.create_task("u", job="job", config={"x": SURROGATE})
    with pytest.raises(InvalidArgument):
        engine.get_execution("t", SURROGATE)
    with pytest.raises(TaskNotFound):
        engine.get_task("u")
    assert engine.next_index("t") == 0
    assert engine.trigger("t", "fine", blocking=True, timeout=5).index == 0


def test_a_job_result_or_error_utf8_cannot_store_fails_cleanly(engine: Engine) -> None:
    bad_result = engine.trigger("t", "surrogate-result", blocking=True, timeout=10)
    assert bad_result.status is ExecutionStatus.FAILED and "InvalidResult" in (bad_result.error or "")
    bad_error = engine.trigger("t", "surrogate-error", blocking=True, timeout=10)
    assert bad_error.status is ExecutionStatus.FAILED and "ValueError" in (bad_error.error or "")
    assert engine.get_execution("t", bad_error.id).error == bad_error.error
    assert engine.trigger("t", "next", blocking=True, timeout=10).index == 2


def test_the_record_holds_a_copy_of_the_callers_data(engine: Engine) -> None:
    data: dict[str, Any] = {"n": 0, "pair": (1, 2)}
    ids = []
    for n in range(5):
        data["n"] = n
        ids.append(engine.trigger("t", data).id)
    data["later"] = {1, 2}  # not JSON: must not reach any record
    for n, eid in enumerate(ids):
        done = engine.wait("t", eid, timeout=10)
        assert done.status is ExecutionStatus.SUCCESS
        assert done.data == {"n": n, "pair": [1, 2]} == done.result


def test_close_from_inside_a_job_is_refused(tmp_path: Path) -> None:
    seen: list[BaseException] = []
    holder: list[Engine] = []

    def job(ctx: JobContext) -> None:
        try:
            holder[0].close()
        except BaseException as e:  # noqa: BLE001
            seen.append(e)

    with Engine.open(str(tmp_path / "db"), jobs={"job": job}) as e:
        holder.append(e)
        e.create_task("t", job="job")
        e.trigger("t", blocking=True, timeout=10)
        assert len(seen) == 1 and isinstance(seen[0], InvalidArgument)


def test_a_second_close_returns_only_when_the_engine_is_closed(tmp_path: Path) -> None:
    release = threading.Event()
    running = threading.Event()

    def job(ctx: JobContext) -> None:
        running.set()
        release.wait(30)

    e = Engine.open(str(tmp_path / "db"), jobs={"job": job})
    e.create_task("t", job="job")
    e.trigger("t")
    running.wait(10)
    first = threading.Thread(target=e.close)
    first.start()
    second_done = threading.Event()

    def second() -> None:
        e.close()
        second_done.set()

    threading.Thread(target=second).start()
    assert not second_done.wait(0.3)  # the first close still waits for the running job
    release.set()
    assert second_done.wait(10)
    first.join(10)
    Database.open(str(tmp_path / "db")).close()  # the handle is free: close really finished


def test_blocking_futures_fired_in_a_row_get_increasing_indexes(tmp_path: Path) -> None:
    with Engine.open(str(tmp_path / "db"), jobs={"job": lambda ctx: ctx.index}, workers=4) as e:
        e.create_task("t", job="job")
        for _ in range(5):
            futures = [e.trigger_future("t", i, blocking=True) for i in range(16)]
            indexes = [f.get(timeout=10).index for f in futures]
            assert indexes == sorted(indexes), indexes


def test_rejected_blocking_futures_leave_no_watcher(engine: Engine) -> None:
    for _ in range(200):
        engine.trigger_future("missing", blocking=True)  # rejected; the future is never read
    # the rejection is answered after the counter actor's turn: a later call on the same
    # actors has been handled after it
    with pytest.raises(TaskNotFound):
        engine.trigger("missing", blocking=True, timeout=5)
    assert engine.stats()["waiters"] == 0


def test_idempotency_keys_are_not_kept_in_memory_once_written(engine: Engine) -> None:
    for i in range(300):
        engine.trigger("t", i, idempotency_key=f"k{i}")
    counters = engine._peers.counters
    held = sum(
        len(st.idem)
        for ref in counters
        for st in ref._actor_weakref()._cache.values()  # type: ignore[union-attr]  # noqa: SLF001
    )
    assert held == 0
    assert engine.trigger("t", "again", idempotency_key="k7").index == 7


def test_stats_after_close_raises_engine_closed(tmp_path: Path) -> None:
    from taskengine import EngineClosed

    e = Engine.open(str(tmp_path / "db"), jobs={"job": lambda ctx: None})
    e.close()
    with pytest.raises(EngineClosed):
        e.stats()
    peers = e._peers
    assert not any(ref.is_alive() for ref in [*peers.counters, peers.pool, peers.pending] if ref is not None)
