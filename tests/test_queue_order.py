"""Queued executions run in the order their indexes were given, numerically (not as strings,
"10" before "9"), both while running and when recovered at open."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from engine_helpers import poll_until
from taskengine import Engine, JobContext


class Recorder:
    def __init__(self) -> None:
        self.order: list[int] = []
        self.hold = threading.Event()

    def __call__(self, ctx: JobContext) -> Any:
        if ctx.data == "hold":
            self.hold.wait(30)
        self.order.append(ctx.index)
        return None


def test_queued_executions_run_in_index_order(tmp_path: Path) -> None:
    rec = Recorder()
    with Engine.open(str(tmp_path / "db"), jobs={"job": rec}, workers=1) as e:
        e.create_task("t", job="job")
        first = e.trigger("t", "hold")
        queued = [e.trigger("t", i) for i in range(12)]
        rec.hold.set()
        for ex in [first, *queued]:
            e.wait("t", ex.id, timeout=10)
    assert rec.order == list(range(13))


def test_recovered_executions_run_in_index_order(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    blocker = Recorder()
    e = Engine.open(path, jobs={"job": blocker}, workers=1)
    e.create_task("t", job="job")
    held = e.trigger("t", "hold")
    ids = [e.trigger("t", i).id for i in range(12)]
    e.close(timeout=0.2)  # the held job is left running; the 12 queued stay PENDING on disk
    blocker.hold.set()
    rec = Recorder()
    with Engine.open(path, jobs={"job": rec}, workers=1) as e:
        for eid in ids:
            e.wait("t", eid, timeout=10)
        assert e.get_execution("t", held.id).status.value == "FAILED"  # interrupted
    assert rec.order == list(range(1, 13))


def test_recovered_executions_run_before_one_triggered_right_after_open(tmp_path: Path) -> None:
    """What recovery queued at open is ahead of every trigger made after open returns: the new
    execution (the highest index) runs last, not first on the idle executor."""
    path = str(tmp_path / "db")
    blocker = Recorder()
    e = Engine.open(path, jobs={"job": blocker}, workers=1)
    e.create_task("t", job="job")
    e.trigger("t", "hold")
    ids = [e.trigger("t", i).id for i in range(12)]
    closer = threading.Thread(target=e.close, daemon=True)  # the held job finishes while it closes:
    closer.start()  # nothing is left RUNNING, so the reopen waits for no interrupted one
    # the pool drains: the queued ones stay PENDING on disk, then the held job may finish
    poll_until("the pool drains", lambda: e._refs.work.closed)
    blocker.hold.set()
    closer.join(30)
    rec = Recorder()
    with Engine.open(path, jobs={"job": rec}, workers=1) as e:
        new = e.trigger("t", 99)
        for eid in [*ids, new.id]:
            e.wait("t", eid, timeout=10)
    assert rec.order == list(range(1, 14))
