"""An execution triggered while an executor waits for work starts in its trigger's own write
(README, "Executions"): its RUNNING record is durable with its index, and the executor runs it
without a start of its own. One triggered while every executor is busy is written PENDING and
queued, as before. Run against both backends."""

from __future__ import annotations

from typing import Any

from engine_helpers import WAIT, Gate
from taskengine import ExecutionStatus


def test_an_idle_executors_execution_starts_in_its_triggers_write(make_engine: Any, store: str) -> None:
    gate = Gate()
    engine = make_engine(store, jobs={"j": gate}, workers=1)
    engine.create_task("t", job="j")
    before = engine.stats()
    first = engine.trigger("t")
    assert first.status is ExecutionStatus.PENDING  # the trigger's answer, as documented
    assert gate.wait_calls(1)
    during = engine.stats()
    assert during.writes - before.writes == 1  # the trigger's write started it: no write of its own
    assert (during.running, during.pending) == (1, 1)
    assert engine.get_execution("t", first.id).status is ExecutionStatus.RUNNING
    second = engine.trigger("t")  # the one executor is busy: queued, PENDING
    assert engine.get_execution("t", second.id).status is ExecutionStatus.PENDING
    gate.release()
    finished = [engine.wait("t", ex.id, timeout=WAIT) for ex in (first, second)]
    assert [(ex.index, ex.status) for ex in finished] == [(0, ExecutionStatus.SUCCESS), (1, ExecutionStatus.SUCCESS)]
    assert [call[0] for call in gate.calls] == [first.id, second.id]
    assert engine.stats().pending == 0


def test_a_cancel_finds_an_execution_its_trigger_started_running(make_engine: Any, store: str) -> None:
    """Started by its trigger, it is claimed: a cancel answers it as it stands, and it runs once."""
    gate = Gate()
    engine = make_engine(store, jobs={"j": gate}, workers=1)
    engine.create_task("t", job="j")
    ex = engine.trigger("t")
    assert gate.wait_calls(1)
    assert engine.cancel("t", ex.id).status is ExecutionStatus.RUNNING
    gate.release()
    assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert [call[0] for call in gate.calls] == [ex.id]

