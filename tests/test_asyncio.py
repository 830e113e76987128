"""asyncio: awaiting the engine never blocks the event loop, and async jobs run on an event loop
with the same timeout, failure and recovery rules as plain jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine_helpers import WAIT, Gate, assert_gap_free_api, assert_indexes_exact, check_db, run_threads
from taskengine import Engine, ExecutionStatus, JobContext, errors

pytestmark = pytest.mark.timeout(120)


class Ticker:
    """A coroutine that counts ticks of ``interval``: a blocked loop stops it counting."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.ticks += 1

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def release_later(gate: Gate, seconds: float) -> threading.Timer:
    """Release the gate from another thread: what the awaits wait for, while the loop ticks."""
    timer = threading.Timer(seconds, gate.release)
    timer.daemon = True
    timer.start()
    return timer


def gated_engine(make_engine: Any, db_path: str, workers: int) -> tuple[Gate, Engine]:
    """An engine whose task "t" runs a job that waits for ``gate.release()``."""
    gate = Gate()
    engine = make_engine(db_path, jobs={"gate": gate}, workers=workers)
    engine.create_task("t", job="gate")
    return gate, engine


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), WAIT * 3))  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["atrigger", "trigger_future", "await_execution"])
def test_the_loop_keeps_ticking_while_thousands_of_awaits_are_outstanding(make_engine, db_path, how):
    gate, engine = gated_engine(make_engine, db_path, workers=2)
    n = 2000

    async def main() -> list[Any]:
        with Ticker() as ticker:
            if how == "atrigger":
                aws = [engine.atrigger("t", i, blocking=True) for i in range(n)]
            elif how == "trigger_future":
                aws = [engine.trigger_future("t", i, blocking=i % 2 == 0) for i in range(n)]
            else:
                queued = [await engine.atrigger("t", i) for i in range(n)]
                aws = [engine.await_execution("t", ex.id) for ex in queued]
            release_later(gate, 1.0)
            done = await asyncio.gather(*aws)
        # about 50 ticks of 20 ms in the second the gate is shut; a loop blocked by one await
        # makes none until the gate opens
        assert ticker.ticks >= 15, f"the loop ticked {ticker.ticks} times while {n} awaits were outstanding"
        return done

    done = run(main)
    assert len(done) == n
    if how != "trigger_future":
        assert all(ex.status is ExecutionStatus.SUCCESS for ex in done)
    assert_gap_free_api(engine, "t")


def test_thread_count_stays_constant_with_10000_outstanding_awaits(make_engine, db_path):
    gate, engine = gated_engine(make_engine, db_path, workers=2)
    n = 10_000

    async def main() -> tuple[list[Any], list[str]]:
        engine.trigger("t")  # every engine thread up and one worker held
        assert gate.wait_calls(1)
        await asyncio.sleep(0)
        before = set(threading.enumerate())
        queued = [await engine.atrigger("t", i) for i in range(n // 2)]
        waits = [asyncio.ensure_future(engine.await_execution("t", ex.id)) for ex in queued]
        blocking = [asyncio.ensure_future(engine.atrigger("t", i, blocking=True)) for i in range(n // 2)]
        while engine.stats().waiters < n:  # every await has registered (a few loop turns)
            await asyncio.sleep(0.01)
        during = [t.name for t in threading.enumerate() if t not in before]
        gate.release()
        done = await asyncio.gather(*waits, *blocking)
        return done, during

    done, during = run(main)
    assert during == [], f"threads started for {n} outstanding awaits: {during}"
    assert all(ex.status is ExecutionStatus.SUCCESS for ex in done)
    assert sorted(ex.index for ex in done) == list(range(1, n + 1))
    listed = assert_gap_free_api(engine, "t")
    assert len(listed) == n + 1
    assert engine.stats().waiters == 0
    make_engine.close(engine)
    check_db(db_path, allow_live=True)


def test_sync_and_async_callers_together_keep_every_invariant(make_engine, db_path):
    engine = make_engine(db_path, jobs={"noop": lambda ctx: ctx.index}, workers=4)
    tasks = ["a", "b"]
    for t in tasks:
        engine.create_task(t, job="noop")
    per_caller = 60
    loop_ready = threading.Event()
    seen: dict[str, list[tuple[str, int]]] = {}  # caller -> [(task, index)] in call order

    def sync_caller(i: int) -> None:
        got = []
        for k in range(per_caller):
            t = tasks[(i + k) % 2]
            ex = engine.trigger(t, {"s": i}, blocking=k % 3 == 0, timeout=WAIT)
            got.append((t, ex.index))
        seen[f"sync-{i}"] = got

    async def async_caller(i: int) -> None:
        got = []
        for k in range(per_caller):
            t = tasks[(i + k) % 2]
            if k % 3 == 0:
                ex = await engine.atrigger(t, {"a": i}, blocking=True, timeout=WAIT)
            elif k % 3 == 1:
                ex = await engine.trigger_future(t, {"a": i})
            else:
                ex = await engine.atrigger(t, {"a": i})
            got.append((t, ex.index))
        seen[f"async-{i}"] = got

    async def async_side() -> None:
        loop_ready.set()
        await asyncio.gather(*(async_caller(i) for i in range(8)))

    side = threading.Thread(target=lambda: run(async_side), daemon=True)
    side.start()
    assert loop_ready.wait(WAIT)
    run_threads(8, sync_caller).raise_unexpected()
    side.join(WAIT * 3)
    assert not side.is_alive() and len(seen) == 16
    for caller, got in seen.items():  # ordered per caller, per task
        for t in tasks:
            mine = [i for task, i in got if task == t]
            assert mine == sorted(mine) and len(set(mine)) == len(mine), caller
    for t in tasks:
        indexes = [i for got in seen.values() for task, i in got if task == t]
        assert_indexes_exact(indexes, len(indexes))  # unique and gap-free
        for ex in assert_gap_free_api(engine, t):
            engine.wait(t, ex.id, timeout=WAIT)
    make_engine.close(engine)
    check_db(db_path, allow_live=False)


def test_cancelling_the_await_neither_cancels_nor_loses_the_execution(make_engine, db_path):
    gate, engine = gated_engine(make_engine, db_path, workers=1)

    async def main() -> tuple[Any, Any]:
        first = await engine.atrigger("t", "x")
        waiting = asyncio.ensure_future(engine.await_execution("t", first.id))
        blocking = asyncio.ensure_future(engine.atrigger("t", "y", blocking=True, idempotency_key="k"))
        while engine.stats().waiters < 2:
            await asyncio.sleep(0.01)
        waiting.cancel()
        blocking.cancel()
        for fut in (waiting, blocking):
            with pytest.raises(asyncio.CancelledError):
                await fut
        assert engine.stats().waiters == 0  # the cancelled awaits left nothing behind
        gate.release()
        again = await engine.atrigger("t", "y", blocking=True, idempotency_key="k", timeout=WAIT)
        return first, again

    first, again = run(main)
    assert engine.wait("t", first.id, timeout=WAIT).status is ExecutionStatus.SUCCESS
    assert again.status is ExecutionStatus.SUCCESS and again.index == 1 and again.data == "y"
    assert engine.next_index("t") == 2


def test_timeouts_and_errors_of_the_async_calls(make_engine, db_path):
    gate, engine = gated_engine(make_engine, db_path, workers=1)

    async def main() -> Any:
        held = await engine.atrigger("t")
        with pytest.raises(errors.ExecutionTimeout) as caught:
            await engine.await_execution("t", held.id, timeout=0.05)
        assert caught.value.execution_id == held.id and caught.value.index == 0
        with pytest.raises(errors.ExecutionTimeout) as caught:
            await engine.atrigger("t", blocking=True, timeout=0.05)
        assert caught.value.index is None  # still queued: no index yet
        with pytest.raises(errors.TaskNotFound):
            await engine.atrigger("nope")
        with pytest.raises(errors.TaskNotFound):
            await engine.trigger_future("nope", blocking=True)
        with pytest.raises(errors.InvalidArgument):
            await engine.atrigger("t", object())
        with pytest.raises(errors.ExecutionNotFound):
            await engine.await_execution("t", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
        assert engine.stats().waiters == 0
        gate.release()
        return await engine.await_execution("t", held.id, timeout=WAIT)

    assert run(main).status is ExecutionStatus.SUCCESS
    assert engine.next_index("t") == 2  # the timed-out blocking trigger went on and ran


def test_awaiting_a_closed_engine_raises_engine_closed(make_engine, db_path):
    gate, engine = gated_engine(make_engine, db_path, workers=1)

    async def main() -> None:
        held = await engine.atrigger("t")
        waiting = asyncio.ensure_future(engine.await_execution("t", held.id))
        queued = asyncio.ensure_future(engine.atrigger("t", blocking=True))
        while engine.stats().waiters < 2:
            await asyncio.sleep(0.01)
        closing = threading.Thread(target=engine.close, daemon=True)
        closing.start()
        gate.release()
        for fut in (waiting, queued):
            try:
                await fut
            except errors.EngineClosed:
                pass
        closing.join(WAIT)
        with pytest.raises(errors.EngineClosed):
            await engine.atrigger("t")

    run(main)


# -- async jobs ------------------------------------------------------------------------------


async def async_job(ctx: JobContext) -> Any:
    await asyncio.sleep(0)
    if ctx.data == "raise":
        await _deeper()
    if ctx.data == "hang":
        await asyncio.sleep(3600)
    return {"index": ctx.index, "thread": threading.current_thread().name}


async def _deeper() -> None:
    raise LookupError("from a coroutine")


def test_async_jobs_run_on_the_engines_loop_with_plain_job_semantics(tmp_path):
    path = str(tmp_path / "db")
    def loop_threads() -> int:
        return sum(t.name == "taskengine-async-jobs" for t in threading.enumerate())

    before = set(threading.enumerate())  # an earlier test's thread may still be ending: not counted
    with Engine.open(path, jobs={"a": async_job}, workers=2, job_timeout=0.5) as engine:
        assert loop_threads() == 0  # started by the first async job, not before
        engine.create_task("t", job="a")
        ok = engine.trigger("t", blocking=True, timeout=WAIT)
        assert ok.status is ExecutionStatus.SUCCESS and ok.result["thread"] == "taskengine-async-jobs"
        assert loop_threads() == 1
        failed = engine.trigger("t", "raise", blocking=True, timeout=WAIT)
        assert failed.status is ExecutionStatus.FAILED and failed.error == "LookupError: from a coroutine"
        assert failed.traceback is not None
        assert "in async_job" in failed.traceback and "in _deeper" in failed.traceback
        assert "/asyncio/" not in failed.traceback and "/concurrent/" not in failed.traceback
        assert "jobloop" not in failed.traceback and "jobrun" not in failed.traceback
        hung = engine.trigger("t", "hang", blocking=True, timeout=WAIT)
        assert hung.status is ExecutionStatus.FAILED
        assert hung.error == "TimeoutError: the job ran longer than the job timeout of 0.5 s"
        assert hung.traceback is None
        after = engine.trigger("t", blocking=True, timeout=WAIT)  # the pool carries on
        assert after.status is ExecutionStatus.SUCCESS and after.index == 3
        assert engine.stats().failed == 2
    left = [t.name for t in threading.enumerate() if t not in before]
    assert loop_threads() == 0 and left == []  # stopped with the engine


def test_async_jobs_recover_like_plain_ones(tmp_path):
    path = str(tmp_path / "db")
    gate = Gate()
    with Engine.open(path, jobs={"a": async_job, "gate": gate}, workers=1) as engine:
        engine.create_task("hold", job="gate")
        engine.create_task("t", job="a")
        engine.trigger("hold")
        assert gate.wait_calls(1)
        queued = [engine.trigger("t", i) for i in range(5)]  # acknowledged, never started
        gate.release()
        engine.close()
    with Engine.open(path, jobs={"a": async_job, "gate": gate}) as engine:
        done = [engine.wait("t", ex.id, timeout=WAIT) for ex in queued]
    assert [ex.index for ex in done] == list(range(5))
    assert all(ex.status is ExecutionStatus.SUCCESS for ex in done)


def test_async_jobs_run_on_the_users_loop(tmp_path):
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        seen: list[asyncio.AbstractEventLoop] = []

        async def job(ctx: JobContext) -> int:
            seen.append(asyncio.get_running_loop())
            await asyncio.sleep(0.01)
            return ctx.index

        engine = Engine.open(str(tmp_path / "db"), jobs={"job": job}, loop=loop)
        try:
            engine.create_task("t", job="job")
            with Ticker() as ticker:
                done = await asyncio.gather(*(engine.atrigger("t", blocking=True, timeout=WAIT) for _ in range(20)))
            assert ticker.ticks >= 0
            return done, seen[0] is loop and all(s is loop for s in seen)
        finally:
            await asyncio.to_thread(engine.close)

    done, on_users_loop = run(main)
    assert on_users_loop
    assert sorted(ex.result for ex in done) == list(range(20))


def test_open_refuses_a_loop_that_is_not_one(tmp_path):
    with pytest.raises(errors.InvalidArgument):
        Engine.open(str(tmp_path / "db"), loop="loop")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_close_on_the_loop_of_its_async_jobs_is_refused_not_a_deadlock(tmp_path):
    """close() waits for running jobs, and an async job needs the loop that close() would block:
    called on that loop it waited for ever."""
    started = asyncio.Event()

    async def job(ctx: JobContext) -> int:
        started.set()
        await asyncio.sleep(0.2)
        return ctx.index

    async def main() -> ExecutionStatus:
        engine = Engine.open(str(tmp_path / "db"), jobs={"job": job}, loop=asyncio.get_running_loop())
        try:
            engine.create_task("t", job="job")
            ex = await engine.atrigger("t")
            await started.wait()  # the job is running on this loop
            with pytest.raises(errors.InvalidArgument, match=r"close\(\) on the event loop that runs"):
                engine.close()
            return (await engine.await_execution("t", ex.id, timeout=WAIT)).status
        finally:
            await asyncio.to_thread(engine.close)

    assert run(main) is ExecutionStatus.SUCCESS


@pytest.mark.timeout(60)
def test_close_from_an_async_job_on_the_engines_own_loop_is_refused(make_engine, tmp_path):
    box: list[Engine] = []

    async def closer(ctx: JobContext) -> str:
        try:
            box[0].close()
        except errors.InvalidArgument as e:
            return str(e)
        return "closed"

    engine = make_engine(str(tmp_path / "db"), jobs={"closer": closer})
    box.append(engine)
    engine.create_task("c", job="closer")
    done = engine.trigger("c", blocking=True, timeout=WAIT)  # it timed out: the close waited for its own job
    assert done.result.startswith("close() on the event loop that runs this engine's async jobs")
