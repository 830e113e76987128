"""An executor held for an execution started by its trigger (README, "Started by its trigger") that
is given back, because the same turn deleted the task: it takes what was queued while it was held,
no later trigger overtakes what is queued, a close that waits for it finishes, and no pending entry
is left behind. Also job timeouts shorter than a write, firing between the hold and the run."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from engine_helpers import WAIT, Recorder, poll_until
from taskengine import ExecutionStatus, Hooks


class Blocker(Hooks):
    """Holds a counter actor's thread inside its turn: ``on_write`` once armed (the next write),
    ``on_trigger`` for executions of ``hold_task`` (after the write, before _run_started)."""

    def __init__(self, hold_task: str) -> None:
        self.hold_task = hold_task
        self.armed = threading.Event()
        self.in_write = threading.Event()
        self.write_go = threading.Event()
        self.in_trigger = threading.Event()
        self.trigger_go = threading.Event()

    def on_write(self, changes: int, seconds: float) -> None:
        if self.armed.is_set():
            self.armed.clear()
            self.in_write.set()
            self.write_go.wait(WAIT)

    def on_trigger(self, execution: Any) -> None:
        if execution.task_id == self.hold_task:
            self.in_trigger.set()
            self.trigger_go.wait(WAIT)

    def release(self) -> None:
        self.write_go.set()
        self.trigger_go.set()


def _ids_on(engine: Any, counter: Any, other: bool, n: int = 1) -> list[str]:
    refs = engine._refs
    out = [f"t{i}" for i in range(200) if (refs.counter_for(f"t{i}") is counter) != other]
    return out[:n]


def _one_turn_trigger_and_delete(engine: Any, blocker: Blocker, x: str, blocked_on: str) -> Any:
    """Trigger ``x`` (non-blocking) and delete it in one turn of its counter actor: the actor is
    held in a write for ``blocked_on`` (same actor) while both messages wait in its inbox."""
    counter = engine._refs.counter_for(x)
    blocker.armed.set()
    creator = threading.Thread(target=engine.create_task, args=(blocked_on,), kwargs={"job": "j"}, daemon=True)
    creator.start()
    assert blocker.in_write.wait(WAIT)
    future = engine.trigger_future(x)
    deleter = threading.Thread(target=engine.delete_task, args=(x,), daemon=True)
    deleter.start()
    poll_until("trigger and delete wait in the counter's inbox", lambda: counter.actor_inbox.qsize() >= 2)
    blocker.write_go.set()
    creator.join(WAIT)
    return future, deleter


def _queued_while_an_executor_is_held_then_given_back(engine: Any) -> tuple[str, Any]:
    """One worker, two counter actors: a trigger of task x holds the only executor (its turn
    written, its counter actor held in x's on_trigger hook) while the other counter actor queues
    an execution of task y; then x's turn, which also deleted x, gives the executor back.
    Returns y and its queued execution."""
    c0 = engine._refs.counters[0]
    x, blocked_on = _ids_on(engine, c0, other=False, n=2)
    (y,) = _ids_on(engine, c0, other=True)
    blocker = Blocker(hold_task=x)
    engine.add_hooks(blocker)
    for t in (x, y):
        engine.create_task(t, job="j")
    future, deleter = _one_turn_trigger_and_delete(engine, blocker, x, blocked_on)
    assert blocker.in_trigger.wait(WAIT)
    assert not engine._refs.work.any_idle
    queued = engine.trigger(y)  # another counter actor: no executor idle, so it is queued
    assert engine.get_execution(y, queued.id).status is ExecutionStatus.PENDING
    blocker.trigger_go.set()
    future.get(timeout=WAIT)
    deleter.join(WAIT)
    return y, queued


@pytest.mark.timeout(60)
def test_trigger_and_delete_in_one_turn_leave_no_pending_entry(make_engine: Any, store: str) -> None:
    """The execution started by its trigger is listed in the pending store as claimed; its task
    is deleted in the same turn, so no run ever removes that entry: stats().pending must be 0."""
    blocker = Blocker(hold_task="none")
    rec = Recorder()
    engine = make_engine(store, jobs={"j": rec}, workers=1, counter_actors=1, hooks=[blocker])
    engine.create_task("x", job="j")
    future, deleter = _one_turn_trigger_and_delete(engine, blocker, "x", "blocker")
    ex = future.get(timeout=WAIT)
    deleter.join(WAIT)
    assert not deleter.is_alive()
    assert ex.index == 0
    # the executor held for it was given back: a new trigger runs
    engine.create_task("y", job="j")
    y = engine.trigger("y")
    assert engine.wait("y", y.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert rec.ids() == [y.id]  # x never ran
    stats = engine.stats()
    assert (stats.running, stats.queued) == (0, 0)
    assert stats.pending == 0, f"pending store still lists {stats.pending} entries (x's claimed entry leaked)"


@pytest.mark.timeout(60)
def test_executor_given_back_after_same_turn_delete_takes_what_was_queued_meanwhile(
        make_engine: Any, store: str) -> None:
    """While a trigger holds the only executor (its turn not yet done), another counter actor
    queues an execution (no executor idle). The turn deletes the trigger's task and gives the
    executor back: it must take the queued execution, not sit idle beside it."""
    rec = Recorder()
    engine = make_engine(store, jobs={"j": rec}, workers=1, counter_actors=2, hooks=[])
    y, queued = _queued_while_an_executor_is_held_then_given_back(engine)
    try:
        done = engine.wait(y, queued.id, timeout=5)
    except Exception as e:  # noqa: BLE001
        stats = engine.stats()
        raise AssertionError(f"queued execution never ran: {type(e).__name__}; queued={stats.queued} "
                             f"running={stats.running} any_idle={engine._refs.work.any_idle}") from e
    assert done.status is ExecutionStatus.SUCCESS


@pytest.mark.timeout(60)
def test_direct_start_does_not_overtake_an_execution_queued_earlier(make_engine: Any, db_path: str) -> None:
    """Same set-up; then one more trigger of the queued execution's task: the queued one (lower
    index) must run first (queued executions run in index order, tests/test_queue_order.py)."""
    rec = Recorder()
    engine = make_engine(db_path, jobs={"j": rec}, workers=1, counter_actors=2, hooks=[])
    y, first = _queued_while_an_executor_is_held_then_given_back(engine)
    second = engine.trigger(y)
    for ex in (first, second):
        engine.wait(y, ex.id, timeout=WAIT)
    assert rec.ids() == [first.id, second.id], "index 1 ran before index 0 of the same task"


@pytest.mark.timeout(90)
def test_close_returns_when_a_held_executor_is_given_back_while_it_drains(make_engine: Any, db_path: str) -> None:
    """close() waits for busy slots; a slot held for a start (busy) that is given back (its task
    deleted in the same turn) while close waits must let close finish: nothing else tells it."""
    engine = make_engine(db_path, jobs={"j": Recorder()}, workers=1, counter_actors=1, hooks=[])
    blocker = Blocker(hold_task="x")
    engine.add_hooks(blocker)
    engine.create_task("x", job="j")
    future, deleter = _one_turn_trigger_and_delete(engine, blocker, "x", "blocker")
    assert blocker.in_trigger.wait(WAIT)  # x's write is done and the executor held for it
    closer = threading.Thread(target=engine.close, name="closer", daemon=True)
    closer.start()
    poll_until("the pool drains", lambda: engine._refs.work.closed)
    blocker.trigger_go.set()
    closer.join(15)
    assert not closer.is_alive(), "close() still waits for an executor that was given back"
    future.get(timeout=WAIT)
    deleter.join(WAIT)


@pytest.mark.timeout(120)
def test_job_timeouts_firing_around_direct_starts_leave_nothing_running(make_engine: Any, db_path: str) -> None:
    """A job timeout shorter than a write fires between the executor's reservation and its Run
    (or in the trigger's own turn): every execution still ends (FAILED or SUCCESS), none stays
    RUNNING or PENDING, and the engine's figures come back to zero."""
    rec = Recorder()
    engine = make_engine(db_path, jobs={"j": rec}, workers=2, job_timeout=0.0005)
    engine.create_task("t", job="j")
    ids = []
    for _ in range(60):
        ids.append(engine.trigger("t").id)
    ends = [engine.wait("t", eid, timeout=WAIT) for eid in ids]
    assert all(ex.status in (ExecutionStatus.SUCCESS, ExecutionStatus.FAILED) for ex in ends)
    assert sorted(ex.index for ex in ends) == list(range(60))
    poll_until("figures at rest", lambda: (lambda s: (s.running, s.queued, s.pending) == (0, 0, 0))(engine.stats()))
