"""Hooks: told of every durable state change and every write, in order; a hook that raises never
breaks the engine; an engine without hooks does no hook work at all."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest

from engine_helpers import WAIT, Gate
from taskengine import Engine, Execution, ExecutionStatus, Hooks, JobContext, errors

pytestmark = pytest.mark.timeout(60)


class Recorder(Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, ExecutionStatus, int | None]] = []
        self.writes: list[tuple[int, float]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def _add(self, kind: str, ex: Execution) -> None:
        with self._lock:
            self.events.append((kind, ex.id, ex.status, ex.index))
            self.threads.add(threading.current_thread().name)

    def on_trigger(self, execution: Execution) -> None:
        self._add("trigger", execution)

    def on_start(self, execution: Execution) -> None:
        self._add("start", execution)

    def on_finish(self, execution: Execution) -> None:
        self._add("finish", execution)

    def on_write(self, changes: int, seconds: float) -> None:
        with self._lock:
            self.writes.append((changes, seconds))

    def of(self, execution_id: str) -> list[tuple[str, ExecutionStatus, int | None]]:
        with self._lock:
            return [(k, s, i) for k, eid, s, i in self.events if eid == execution_id]


class Raising(Hooks):
    def __init__(self) -> None:
        self.calls = 0

    def on_trigger(self, execution: Execution) -> None:
        self.calls += 1
        raise RuntimeError("a broken hook")

    def on_finish(self, execution: Execution) -> None:
        self.calls += 1
        raise RuntimeError("a broken hook")

    def on_write(self, changes: int, seconds: float) -> None:
        raise RuntimeError("a broken hook")


def fail(ctx: JobContext) -> None:
    raise ValueError("no")


def test_hooks_see_every_state_change_in_order(make_engine, db_path):
    rec = Recorder()
    gate = Gate()
    engine = make_engine(db_path, jobs={"ok": lambda ctx: ctx.index, "fail": fail, "gate": gate}, workers=1,
                         hooks=[rec])
    engine.create_task("t", job="ok")
    engine.create_task("f", job="fail")
    engine.create_task("g", job="gate")
    queued = engine.trigger("t")
    assert rec.of(queued.id)[0] == ("trigger", ExecutionStatus.PENDING, 0)  # before the caller's answer
    done = engine.wait("t", queued.id, timeout=WAIT)
    # a wait that finds the record durable already may return while its hooks still run on the
    # counter actor's thread (README, "Hooks"); stats() is answered by that actor, after them
    engine.stats()
    assert rec.of(done.id) == [
        ("trigger", ExecutionStatus.PENDING, 0), ("start", ExecutionStatus.RUNNING, 0),
        ("finish", ExecutionStatus.SUCCESS, 0),
    ]
    blocking = engine.trigger("f", blocking=True, timeout=WAIT)
    assert rec.of(blocking.id) == [
        ("trigger", ExecutionStatus.PENDING, None), ("start", ExecutionStatus.RUNNING, 0),
        ("finish", ExecutionStatus.FAILED, 0),
    ]
    held = engine.trigger("g")
    assert gate.wait_calls(1)
    waiting = engine.trigger("g")
    engine.cancel("g", waiting.id)
    assert rec.of(waiting.id) == [("trigger", ExecutionStatus.PENDING, 1), ("finish", ExecutionStatus.CANCELLED, 1)]
    engine.delete_task("g")  # the running one is cancelled by the deletion
    assert rec.of(held.id)[-1] == ("finish", ExecutionStatus.CANCELLED, 0)
    repeat = engine.trigger("t", idempotency_key="k")
    assert engine.trigger("t", idempotency_key="k").id == repeat.id
    assert [k for k, _, _ in rec.of(repeat.id)].count("trigger") == 1  # a repeat is not new
    stats = engine.stats()
    assert sum(c for c, _ in rec.writes) == stats.changes_written and len(rec.writes) == stats.writes
    assert all(s >= 0 for _, s in rec.writes)
    gate.release()


def test_hooks_given_at_open_see_recovery(make_engine, db_path):
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=1)
    engine.create_task("t", job="gate")
    running = engine.trigger("t")
    assert gate.wait_calls(1)
    engine.close(timeout=0.05)  # the job is left running: RUNNING on disk
    gate.release()
    rec = Recorder()
    make_engine(db_path, jobs={"gate": gate}, hooks=[rec])
    assert rec.of(running.id) == [("finish", ExecutionStatus.FAILED, 0)]


def test_a_hook_that_raises_never_breaks_the_engine(make_engine, db_path, caplog):
    caplog.set_level(logging.WARNING, logger="taskengine")
    bad, rec = Raising(), Recorder()
    engine = make_engine(db_path, jobs={"ok": lambda ctx: ctx.index}, hooks=[bad, rec])
    engine.create_task("t", job="ok")
    results = [engine.trigger("t", blocking=i % 2 == 0, timeout=WAIT) for i in range(20)]
    for ex in results:
        assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    # a wait may read the last record once durable, before that turn's hooks ran (README); stats()
    # is answered by the counter actor after them
    assert engine.stats().succeeded == 20
    assert bad.calls >= 40 and len(rec.events) == 60  # the hook after it still ran every time
    logged = [r for r in caplog.records if "a broken hook" in (r.exc_text or "") or "broken hook" in r.getMessage()]
    assert 1 <= len(logged) <= 3  # the first failure of each method, with its traceback; not one per call


class HeldFinish(Hooks):
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def on_finish(self, execution: Execution) -> None:
        self.entered.set()
        self.go.wait(WAIT)


def test_a_read_of_a_durable_finish_may_come_before_its_hooks_and_stats_after_them(make_engine, db_path):
    """README: a read (a wait called once the record is durable) is not an answer about the change,
    and may come before its hooks; stats() is answered by the counter actor after them."""
    held = HeldFinish()
    engine = make_engine(db_path, jobs={"ok": lambda ctx: None}, hooks=[held])
    engine.create_task("t", job="ok")
    ex = engine.trigger("t")
    assert held.entered.wait(WAIT)  # the finish is durable; its hook runs, held
    assert engine.wait("t", ex.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert not held.go.is_set()
    held.go.set()
    assert engine.stats().succeeded == 1


def test_an_engine_without_hooks_does_no_hook_work(make_engine, db_path):
    engine = make_engine(db_path, jobs={"ok": lambda ctx: None})
    assert engine._hooks.active is False and engine._committer.on_write is None
    rec = Recorder()
    engine.add_hooks(rec)
    assert engine._hooks.active is True and engine._committer.on_write is not None
    engine.remove_hooks(rec)
    assert engine._hooks.active is False and engine._committer.on_write is None
    engine.create_task("t", job="ok")
    engine.trigger("t", blocking=True, timeout=WAIT)
    assert rec.events == [] and rec.writes == []


class OnlyWrites(Hooks):
    def on_write(self, changes: int, seconds: float) -> None:
        pass


def test_only_what_a_hook_overrides_is_called(make_engine, db_path):
    engine = make_engine(db_path, hooks=[OnlyWrites()])
    assert engine._hooks.active is False and engine._committer.on_write is not None


@pytest.mark.parametrize("hooks", [[object()], [Recorder, "x"], 5])
def test_bad_hooks_are_refused_before_anything_is_created(tmp_path, hooks: Any):
    path = str(tmp_path / "db")
    with pytest.raises(errors.InvalidArgument):
        Engine.open(path, hooks=hooks)
    assert not os.path.exists(path)


class CallingBack(Hooks):
    """A hook that calls the engine from on_finish (and on_write): ``call(engine, execution)``."""

    def __init__(self, call: Any, on_write: bool = False) -> None:
        self.engine: Engine | None = None
        self.call = call
        self.on_write_too = on_write
        self.outcomes: list[Any] = []

    def on_finish(self, execution: Execution) -> None:
        if execution.task_id != "t":
            return
        try:
            self.outcomes.append(self.call(self.engine, execution))
        except Exception as e:
            self.outcomes.append(e)
            raise

    def on_write(self, changes: int, seconds: float) -> None:
        if self.on_write_too and self.engine is not None:
            try:
                self.engine.stats()
            except errors.InvalidArgument:
                pass


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", [
    lambda engine, ex: engine.get_task(ex.task_id),
    lambda engine, ex: engine.trigger("other"),
    lambda engine, ex: engine.wait(ex.task_id, ex.id),
    lambda engine, ex: engine.stats(),
    lambda engine, ex: engine.prune(ex.task_id, keep_last=0),
    lambda engine, ex: engine.close(),
], ids=["get_task", "trigger", "wait", "stats", "prune", "close"])
def test_a_hook_that_calls_back_and_waits_gets_an_error_not_a_deadlock(make_engine, db_path, call):
    """Hooks run on the counter actor's thread: a call that waits for that actor would wait for
    itself forever. It raises InvalidArgument at once (logged like any hook's failure), and the
    engine carries on."""
    hook = CallingBack(call, on_write=True)
    engine = make_engine(db_path, jobs={"job": lambda ctx: None}, hooks=[hook])
    hook.engine = engine
    engine.create_task("t", job="job")
    engine.create_task("other", job="job")
    done: list[Execution] = []
    caller = threading.Thread(target=lambda: done.append(engine.trigger("t", blocking=True)), daemon=True)
    caller.start()
    caller.join(WAIT)
    assert not caller.is_alive(), "the engine deadlocked on a hook that called it"
    assert done[0].status is ExecutionStatus.SUCCESS
    assert len(hook.outcomes) == 1 and isinstance(hook.outcomes[0], errors.InvalidArgument)
    assert "hook" in str(hook.outcomes[0])
    assert engine.trigger("t", blocking=True, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.get_task("other").execution_count == 0  # the refused trigger used no index


@pytest.mark.timeout(30)
def test_a_hook_may_trigger_without_waiting(make_engine, db_path):
    """Chaining from a hook: trigger_future sends and returns, so it cannot deadlock; the
    follow-up execution is acknowledged and runs."""
    hook = CallingBack(lambda engine, ex: engine.trigger_future("other", {"after": ex.index}))
    engine = make_engine(db_path, jobs={"job": lambda ctx: ctx.data}, hooks=[hook])
    hook.engine = engine
    engine.create_task("t", job="job")
    engine.create_task("other", job="job")
    engine.trigger("t", blocking=True, timeout=WAIT)
    chained = hook.outcomes[0].get(timeout=WAIT)
    assert engine.wait("other", chained.id, timeout=WAIT).result == {"after": 0}


class Exiting(Hooks):
    def on_finish(self, execution: Execution) -> None:
        raise SystemExit(3)

    def on_write(self, changes: int, seconds: float) -> None:
        raise KeyboardInterrupt


@pytest.mark.timeout(30)
def test_a_hook_that_raises_system_exit_stops_no_actor(make_engine, db_path, tmp_path):
    """pykka stops every actor of the process when one lets a BaseException out; a hook runs on a
    counter actor, so its SystemExit must be caught like any other failure: this engine answers
    and carries on, and another engine in the process is untouched."""
    other = make_engine(str(tmp_path / "other"), jobs={"job": lambda ctx: None})
    other.create_task("o", job="job")
    engine = make_engine(db_path, jobs={"job": lambda ctx: None}, hooks=[Exiting()])
    engine.create_task("t", job="job")
    for _ in range(2):
        assert engine.trigger("t", blocking=True, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert engine.get_task("t").execution_count == 2
    assert other.trigger("o", blocking=True, timeout=WAIT).status is ExecutionStatus.SUCCESS
