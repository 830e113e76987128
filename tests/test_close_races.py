"""close() while other threads read, trigger and wait: every call either works or raises
EngineClosed, never another error, and no acknowledged execution is lost."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from taskengine import Engine, EngineClosed
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


