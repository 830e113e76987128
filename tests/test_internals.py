"""White-box tests of what the public API cannot reach: duplicate delivery of one execution,
an executor that dies, group commit, the counter repair at load, and what the actors keep in
memory (watchers of rejected triggers, idempotency keys once written)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from taskengine import Engine, ExecutionStatus, JobContext, TaskNotFound
from taskengine.actors import messages as m
from taskengine.actors import pool as actors_pool
from taskengine.actors.ids import new_id
from taskengine.storage import Committer, Database, Execution, Task, changes, keys
from taskengine.storage import codec as storage_codec


class Jobs:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, ctx: JobContext) -> Any:
        self.calls.append(ctx.index)
        if ctx.data == "hold":
            self.started.set()
            self.release.wait(30)
        return ctx.index


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    j = Jobs()
    yield j
    j.release.set()


@pytest.fixture
def engine(tmp_path: Path, jobs: Jobs) -> Iterator[Engine]:
    e = Engine.open(str(tmp_path / "db"), jobs={"job": jobs}, workers=2)
    yield e
    jobs.release.set()
    e.close()


def test_a_pending_execution_delivered_twice_runs_once(engine: Engine, jobs: Jobs) -> None:
    """Two notifications of one pending execution must not run it twice (the second under a new
    index). Here the pending store's claim succeeds once."""
    engine.create_task("t", job="job")
    ex = engine.trigger("t", "x")
    task = engine.get_task("t")
    pool = engine._refs.pool
    assert pool is not None
    for _ in range(5):
        pool.tell(m.Submit([m.WorkItem(ex, task.job, task.incarnation)]))
    # blocking triggers queue behind the duplicates on the pool's FIFO queue
    engine.trigger("t", "y", blocking=True, timeout=10)
    engine.trigger("t", "z", blocking=True, timeout=10)
    assert engine.wait("t", ex.id, timeout=10).index == ex.index == 0
    assert jobs.calls.count(0) == 1
    assert sorted(jobs.calls) == [0, 1, 2]
    assert engine.next_index("t") == 3


def test_a_dead_executor_is_replaced_and_its_running_execution_failed(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = actors_pool.run_job

    def broken(fn: Any, ctx: JobContext, *rest: Any) -> Any:
        if ctx.data == "die":
            raise RuntimeError("executor bug")  # outside the job: kills the executor actor
        return real(fn, ctx, *rest)

    monkeypatch.setattr(actors_pool, "run_job", broken)
    engine.create_task("t", job="job")
    ex = engine.trigger("t", "die")
    done = engine.wait("t", ex.id, timeout=10)
    assert done.status is ExecutionStatus.FAILED
    assert done.index == 0
    assert "executor" in (done.error or "") and "died" in (done.error or "")
    # the pool carries on at full size
    results = [engine.trigger("t", i, blocking=True, timeout=10) for i in range(4)]
    assert [r.index for r in results] == [1, 2, 3, 4]
    stats = engine.stats()
    assert stats.replaced_executors == 1
    assert stats.executors == 2


def test_job_timeout_frees_the_slot(tmp_path: Path, jobs: Jobs) -> None:
    with Engine.open(str(tmp_path / "db"), jobs={"job": jobs}, workers=1, job_timeout=0.3) as e:
        e.create_task("t", job="job")
        hung = e.trigger("t", "hold")
        after = e.trigger("t", "next", blocking=True, timeout=20)
        assert after.status is ExecutionStatus.SUCCESS and after.index == 1
        failed = e.wait("t", hung.id, timeout=5)
        assert failed.status is ExecutionStatus.FAILED and "timeout" in (failed.error or "").lower()
        jobs.release.set()
        # the hung job's late result is refused: the record stays FAILED
        e.trigger("t", "x", blocking=True, timeout=10)
        assert e.get_execution("t", hung.id).status is ExecutionStatus.FAILED


def test_concurrent_triggers_share_writes(tmp_path: Path, jobs: Jobs) -> None:
    """Group commit: a counter actor writes the changes of every message waiting in its inbox
    in one LevelDB write, so 32 callers on one task need fewer writes than changes."""
    with Engine.open(str(tmp_path / "db"), jobs={"job": jobs}, workers=1) as e:
        e.create_task("t", job="job")
        start = threading.Barrier(32)
        indexes: list[int] = []

        def caller() -> None:
            start.wait()
            indexes.extend(e.trigger("t", i).index or 0 for i in range(20))

        threads = [threading.Thread(target=caller) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = e.stats()
        assert sorted(indexes) == list(range(640))
        assert stats.writes < stats.changes_written


def test_delete_prefix_sees_earlier_changes_of_the_same_write(tmp_path: Path) -> None:
    db = Database.open(str(tmp_path / "db"), create=True)
    task = Task(id="a", job="job", incarnation="i1")
    other = Task(id="a:b", job="job", incarnation="i2")
    ex = Execution(id=new_id(), task_id="a", index=0, status=ExecutionStatus.PENDING, blocking=False)
    Committer(db, sync=True).write(
        [changes.create_task(task), changes.create_task(other), changes.assign(ex), changes.delete_task("a")]
    )
    assert db.get_task("a") is None
    assert list(db.iter_live()) == []
    assert db.get_task("a:b") is not None
    db.close()


def test_a_counter_behind_its_records_is_repaired_and_never_reissues(tmp_path: Path, jobs: Jobs) -> None:
    """History back-filled without seeding the counter must not restart old tasks at 0: a counter
    behind its records must never re-issue an index."""
    path = str(tmp_path / "db")
    db = Database.open(path, create=True)
    ops = [changes.create_task(Task(id="old", job="job", incarnation="i1"))]
    ops += [
        changes.assign(Execution(id=new_id(), task_id="old", index=i, status=ExecutionStatus.SUCCESS, blocking=True))
        for i in range(3)
    ]
    ops.append([(keys.counter_key("old"), storage_codec.encode_int(1))])  # the counter fell behind
    Committer(db, sync=False).write(ops)
    db.close()
    with Engine.open(path, jobs={"job": jobs}) as e:
        assert e.next_index("old") == 3
        assert e.trigger("old", blocking=True, timeout=10).index == 3
    db = Database.open(path)
    assert db.read_counter("old") == 4
    db.close()


def test_task_keys_of_prefix_sharing_ids_do_not_overlap() -> None:
    ids = ["a", "a:", "a:b", "a/b", "a\\", "ab", "é", "a b"]
    for x in ids:
        for y in ids:
            if x != y:
                assert not keys.task_prefix(y).startswith(keys.task_prefix(x))
                assert not keys.live_prefix(y).startswith(keys.live_prefix(x))


def test_ids_are_ulids() -> None:
    import time

    import ulid

    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for x in list(ids)[:100]:
        parsed = ulid.ULID.from_str(x)
        assert str(parsed) == x
        assert abs(parsed.timestamp - time.time()) < 60


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """The id generator is a private random.Random, which CPython does not reseed at fork: the
    child's ids must not be the parent's next ones."""
    import os
    import warnings

    from taskengine.actors import ids

    read, write = os.pipe()
    state = ids._random.getstate()
    with warnings.catch_warnings():
        # 3.12+ warns that a child forked from a process with threads may deadlock: this child
        # takes no lock (one write, then _exit), and the suite's other threads are none of its business
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its next random bits, then leave without cleanup
        try:
            os.write(write, ids._random.getrandbits(80).to_bytes(10, "big"))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child_bits = f.read()
    os.waitpid(pid, 0)
    assert ids._random.getstate() == state  # the parent's stream was not touched
    assert len(child_bits) == 10
    assert child_bits != ids._random.getrandbits(80).to_bytes(10, "big")


def test_a_start_that_arrives_after_its_executor_was_abandoned_is_refused(engine: Engine, jobs: Jobs) -> None:
    """A job timeout (or executor death) can be handled before the executor's Start arrives:
    the execution is failed then, and the late Start must not run it."""
    engine.create_task("t", job="job")
    engine.trigger("t", "hold")
    engine.trigger("t", "hold")  # both workers busy: the next execution waits in the pool queue
    jobs.started.wait(10)
    ex = engine.trigger("t", "late")
    task = engine.get_task("t")
    item = m.WorkItem(ex, task.job, task.incarnation)
    pending, counter = engine._refs.pending, engine._refs.counter_for("t")
    assert pending is not None
    assert pending.ask(m.Claim("t", ex.id)) is True  # as its executor would, before Start
    counter.tell(m.Abandon(item, 10**9, "TimeoutError: the job ran longer than the job timeout"))
    reply: pykka.Future[Any] = pykka.ThreadingFuture()
    counter.tell(m.Start(item, 10**9, reply))
    assert reply.get(timeout=10) is m.NotStarted.REFUSED
    failed = engine.wait("t", ex.id, timeout=10)
    assert failed.status is ExecutionStatus.FAILED and "timeout" in (failed.error or "")
    jobs.release.set()
    engine.trigger("t", "after", blocking=True, timeout=10)
    assert ex.index not in jobs.calls  # the pool's own delivery found nothing to claim
    assert engine.get_execution("t", ex.id).status is ExecutionStatus.FAILED


def test_deadlines_forget_what_is_cancelled() -> None:
    from taskengine.actors.deadlines import Deadlines

    fired = threading.Event()
    d = Deadlines()
    try:
        d.schedule(3600, lambda: None)  # one long deadline pins the top of the heap
        for _ in range(10_000):
            d.cancel(d.schedule(3600, lambda: None))
        assert len(d) == 1
        assert len(d._heap) < 200  # noqa: SLF001
        d.schedule(0, fired.set)
        assert fired.wait(5)
    finally:
        d.stop()


def test_an_executor_given_up_while_idle_is_handed_nothing() -> None:
    """An idle executor that died (or was given up on) leaves the work queue's idle executors:
    neither a wake-up (offer) nor a trigger's start (reserve) goes to it, and none is counted."""
    from taskengine.actors.workqueue import WorkQueue

    work = WorkQueue(None, lambda urn, token: None)
    alive, dead = object(), object()
    work.add_slot("alive", alive)
    work.add_slot("dead", dead)  # idle last: the one taken first, were it still there
    assert work.give_up("dead") is None  # it ran nothing
    items = [m.WorkItem(None, "job", "inc") for _ in range(3)]  # type: ignore[arg-type]
    assert [ref for ref, _, _ in work.offer(items[:2])] == [alive]
    assert len(work) == 1 and not work.any_idle and work.idle_refs() == []
    assert work.reserve(items[2]) is None


def test_a_timeout_that_loses_the_race_with_the_finish_changes_nothing(engine: Engine) -> None:
    """The watchdog can fire while a job's Finish is on its way: the Abandon then arrives after
    the execution finished, and must not turn its SUCCESS into FAILED (the record is final)."""
    engine.create_task("t", job="job")
    ex = engine.trigger("t", "quick")
    done = engine.wait("t", ex.id, timeout=10)
    assert done.status is ExecutionStatus.SUCCESS
    task = engine.get_task("t")
    engine._refs.counter_for("t").tell(
        m.Abandon(m.WorkItem(ex, task.job, task.incarnation), 10**9 + 1, "TimeoutError: late")
    )
    engine.get_task("t")  # answered by the same counter actor after the Abandon
    assert engine.get_execution("t", ex.id) == done


def test_reads_of_a_closed_database_raise_storage_error(tmp_path: Path) -> None:
    from taskengine.storage import StorageError

    db = Database.open(str(tmp_path / "db"), create=True)
    db.close()
    with pytest.raises(StorageError):
        db.get_task("t")
    with pytest.raises(StorageError):
        list(db.iter_live())


def test_rejected_blocking_futures_leave_no_watcher(engine: Engine) -> None:
    for _ in range(200):
        engine.trigger_future("missing", blocking=True)  # rejected; the future is never read
    # the rejection is answered after the counter actor's turn: a later call on the same
    # actors has been handled after it
    with pytest.raises(TaskNotFound):
        engine.trigger("missing", blocking=True, timeout=5)
    assert engine.stats().waiters == 0


def test_idempotency_keys_are_not_kept_in_memory_once_written(engine: Engine) -> None:
    engine.create_task("t", job="job")
    for i in range(300):
        engine.trigger("t", i, idempotency_key=f"k{i}")
    counters = engine._refs.counters
    held = sum(
        len(st.idem)
        for ref in counters
        for st in ref._actor_weakref()._cache.values()  # type: ignore[union-attr]  # noqa: SLF001
    )
    assert held == 0
    assert engine.trigger("t", "again", idempotency_key="k7").index == 7
