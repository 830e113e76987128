"""Engine.close(): while other threads read, trigger and wait, every call either works or raises
EngineClosed, never another error, and no acknowledged execution is lost; a close from inside a
job is refused; a second close returns only once the first has finished; afterwards every call
raises EngineClosed and no actor is left alive."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from taskengine import Engine, EngineClosed, InvalidArgument, JobContext
from taskengine.storage import Database


@pytest.mark.timeout(120)
@pytest.mark.parametrize("round_", range(5))
def test_calls_racing_close_work_or_raise_engine_closed(tmp_path: Path, round_: int) -> None:
    path = str(tmp_path / "db")
    engine = Engine.open(path, jobs={"job": lambda ctx: ctx.index}, workers=2)
    engine.create_task("t", job="job")
    first = engine.trigger("t", blocking=True, timeout=10)
    errors: list[BaseException] = []
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()
    started = threading.Barrier(9)

    def reader() -> None:
        started.wait()
        try:
            while True:
                engine.get_execution("t", first.id)
                engine.list_executions("t", limit=20, newest_first=True)
        except EngineClosed:
            return
        except BaseException as e:  # noqa: BLE001 - the test reports any other error
            errors.append(e)

    def triggerer(blocking: bool) -> None:
        started.wait()
        try:
            while True:
                ex = engine.trigger("t", blocking=blocking, timeout=10)
                with lock:
                    acked.append((ex.id, ex.index or 0))
                engine.wait("t", ex.id, timeout=10)
        except EngineClosed:
            return
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    threads += [threading.Thread(target=triggerer, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait()
    engine.trigger("t", blocking=True, timeout=10)  # let them get going
    engine.close()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    with Engine.open(path, jobs={"job": lambda ctx: ctx.index}) as again:
        for eid, index in acked:
            assert again.wait("t", eid, timeout=10).index == index
    db = Database.open(path)
    try:
        counter = db.read_counter("t")
        assert [ex.index for ex in db.iter_executions("t")] == list(range(counter))
    finally:
        db.close()


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


def test_stats_after_close_raises_engine_closed(tmp_path: Path) -> None:
    e = Engine.open(str(tmp_path / "db"), jobs={"job": lambda ctx: None})
    e.close()
    with pytest.raises(EngineClosed):
        e.stats()
    refs = e._refs
    assert not any(ref.is_alive() for ref in [*refs.counters, refs.pool, refs.pending] if ref is not None)
