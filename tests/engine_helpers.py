"""Helpers of the engine contract tests (README: the guarantees, the API, the errors).

The disk checker reads the LevelDB directly (raw keys, decoded with ``storage.codec``) and
checks every invariant FORMAT.md says a reader can check. It is deliberately independent of
the engine: it never imports ``actors``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from taskengine import storage
from taskengine.storage import codec, keys
from taskengine.storage.records import ExecutionStatus

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: every wait in the tests is bounded by this (seconds) so a hang fails instead of blocking
WAIT = 30.0

#: a gate blocks at most this long even if a test forgets to release it
GATE_LIMIT = 90.0

_ALL_GATES: list[Gate] = []
_GATES_LOCK = threading.Lock()

LIVE_STATUSES = (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)


def _status_name(status: Any) -> str:
    return getattr(status, "value", status)


# ----------------------------------------------------------------------------------------------
# jobs
# ----------------------------------------------------------------------------------------------


class _CallLog:
    """The calls a test job received, and a way to wait for them without sleeping."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()

    def _record(self, *call: Any) -> None:
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.calls)

    def wait_calls(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.calls) >= n, timeout)


class Recorder(_CallLog):
    """A job that returns at once and records each call (execution id, index, data)."""

    def __init__(self, result: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self._result = result

    def __call__(self, ctx: Any) -> Any:
        self._record(ctx.execution_id, ctx.index, ctx.data)
        if self._result is not None:
            return self._result(ctx)
        return {"index": ctx.index}

    def ids(self) -> list[str]:
        with self._cond:
            return [c[0] for c in self.calls]


class Gate(_CallLog):
    """A job that blocks until ``release()``: records each call and its ``ctx.index``.

    Every gate is released by the engine fixture's finalizer before engines are closed.
    """

    def __init__(self, result: Any = None) -> None:
        super().__init__()
        self._release = threading.Event()
        self.returned: list[str] = []
        self.result = result
        with _GATES_LOCK:
            _ALL_GATES.append(self)

    def __call__(self, ctx: Any) -> Any:
        self._record(ctx.execution_id, ctx.index)
        try:
            if not self._release.wait(GATE_LIMIT):
                raise RuntimeError("test gate was never released")
            return self.result if self.result is not None else {"index": ctx.index}
        finally:
            with self._cond:
                self.returned.append(ctx.execution_id)
                self._cond.notify_all()

    def release(self) -> None:
        self._release.set()

    def wait_returned(self, n: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.returned) >= n, timeout)

    def index_of(self, execution_id: str) -> int | None:
        with self._cond:
            for eid, idx in self.calls:
                if eid == execution_id:
                    return idx
        return None


def close_bounded(engine: Any, timeout: float = WAIT) -> None:
    """engine.close() that fails the test instead of hanging it."""
    box: list[BaseException] = []

    def run() -> None:
        try:
            engine.close()
        except BaseException as e:  # noqa: BLE001
            box.append(e)

    t = threading.Thread(target=run, name="close-engine", daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"engine.close() did not return within {timeout} s"
    if box:
        raise box[0]


def release_all_gates() -> None:
    with _GATES_LOCK:
        gates = list(_ALL_GATES)
        _ALL_GATES.clear()
    for g in gates:
        g.release()


# ----------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------


def poll_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll state another process, the server or an engine's own threads change (nothing there
    to wait on), bounded: ``check()``'s first true value, or AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@attrs.define
class ThreadResults:
    results: list[Any]
    errors: list[BaseException | None]

    def raise_unexpected(self, allowed: tuple[type[BaseException], ...] = ()) -> None:
        for e in self.errors:
            if e is not None and not isinstance(e, allowed):
                raise AssertionError(f"a client thread raised {type(e).__name__}: {e}") from e


def run_threads(n: int, fn: Callable[[int], Any], timeout: float = 60.0) -> ThreadResults:
    """Run ``fn(i)`` in ``n`` threads released together by a Barrier; collect results/errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=WAIT)
            results[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors[i] = e

    threads = [threading.Thread(target=body, args=(i,), name=f"client-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"client threads did not finish within {timeout} s: {alive[:5]}"
    return ThreadResults(results, errors)


# ----------------------------------------------------------------------------------------------
# disk invariants (the guarantees; FORMAT.md "Invariants a reader can check")
# ----------------------------------------------------------------------------------------------


@attrs.define
class TaskOnDisk:
    task_id: str
    task: Any = None
    counter: int | None = None
    prune_mark: int = 0
    records: dict[int, Any] = attrs.field(factory=dict)
    ids: dict[str, int] = attrs.field(factory=dict)
    idempotency: dict[str, str] = attrs.field(factory=dict)

    def by_id(self) -> dict[str, Any]:
        return {r.id: r for r in self.records.values()}

    def indexes(self) -> list[int]:
        return sorted(self.records)


def read_disk(raw: Any) -> tuple[dict[str, TaskOnDisk], dict[tuple[str, int], str], list[str]]:
    """Every task's keys and the live set, straight from a plyvel DB; plus format problems."""
    tasks: dict[str, TaskOnDisk] = {}
    live: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for key, value in raw.iterator():
        tag = key[:1]
        if key == keys.SCHEMA_KEY:
            continue
        if tag == keys.TASK_TAG:
            parsed = keys.parse_task_key(key)
            if parsed is None:
                problems.append(f"malformed task key {key!r}")
                continue
            tid = parsed.task_id
            t = tasks.setdefault(tid, TaskOnDisk(tid))
            try:
                if parsed.kind == keys.COUNTER and not parsed.rest:
                    t.counter = codec.decode_int(key, value)
                elif parsed.kind == keys.PRUNE_MARK and not parsed.rest:
                    t.prune_mark = codec.decode_int(key, value)
                elif parsed.kind == keys.TASK and not parsed.rest:
                    t.task = codec.decode_task(key, value)
                elif parsed.kind == keys.EXECUTION:
                    if len(parsed.rest) != 8:
                        problems.append(f"execution key with a bad index {key!r}")
                        continue
                    idx = keys.decode_index(parsed.rest)
                    t.records[idx] = codec.decode_execution(key, value, tid, idx)
                elif parsed.kind == keys.EXEC_ID:
                    t.ids[parsed.rest.decode()] = codec.decode_int(key, value)
                elif parsed.kind == keys.IDEMPOTENCY:
                    t.idempotency[parsed.rest.decode()] = value.decode()
                else:
                    problems.append(f"unknown task key kind {key!r}")
            except storage.CorruptRecord as e:
                problems.append(f"corrupt record: {e}")
        elif tag == keys.LIVE_TAG:
            parsed_live = keys.parse_live_key(key)
            if parsed_live is None:
                problems.append(f"malformed live key {key!r}")
                continue
            live[parsed_live] = value.decode()
        else:
            problems.append(f"key with an unknown tag {key!r}")
    return tasks, live, problems


def read_postgres(url: str) -> tuple[dict[str, TaskOnDisk], dict[tuple[str, int], str], list[str]]:
    """What ``read_disk`` reads, from the PostgreSQL tables (FORMAT.md), with psycopg directly:
    an execution row's index, id and status columns are its keys, and must agree with its record."""
    import psycopg

    tasks: dict[str, TaskOnDisk] = {}
    live: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for tid, record, counter, mark in conn.execute(
            "SELECT id, record, counter, prune_mark FROM taskengine.tasks"
        ):
            t = tasks[tid] = TaskOnDisk(tid, counter=counter, prune_mark=mark)
            try:
                t.task = codec.decode_task(keys.task_key(tid), bytes(record))
            except storage.CorruptRecord as e:
                problems.append(f"corrupt record: {e}")
        for tid, idx, eid, status, key, record in conn.execute(
            "SELECT task_id, idx, id, status, idempotency_key, record FROM taskengine.executions"
        ):
            t = tasks.setdefault(tid, TaskOnDisk(tid))
            try:
                r = t.records[idx] = codec.decode_execution(keys.execution_key(tid, idx), bytes(record), tid, idx)
            except storage.CorruptRecord as e:
                problems.append(f"corrupt record: {e}")
                continue
            if r.id != eid or r.status.code.decode() != status:
                problems.append(f"{tid!r}: row {idx} says {eid}/{status}, its record {r.id}/{r.status}")
            t.ids[eid] = idx
            if key is not None:
                t.idempotency[bytes(key).decode()] = eid
            if status in ("P", "R"):
                live[(tid, idx)] = eid
        if conn.execute("SELECT to_regclass('taskengine.live') IS NOT NULL").fetchone()[0]:  # version 4
            rows = {(tid, idx) for tid, idx in conn.execute("SELECT task_id, idx FROM taskengine.live")}
            for tid, idx in sorted(rows ^ set(live)):
                problems.append(f"{tid!r}: execution {idx} is " + ("in the live table, but not PENDING or RUNNING"
                                                                   if (tid, idx) in rows else
                                                                   "PENDING or RUNNING, but not in the live table"))
    return tasks, live, problems


def check_raw(raw: Any, *, allow_live: bool = True) -> dict[str, TaskOnDisk]:
    """Check unique and gap-free (records at exactly prune mark .. counter-1) and the FORMAT.md
    cross-key invariants; return the tasks."""
    return check_read(read_disk(raw), allow_live=allow_live)


def check_read(
    read: tuple[dict[str, TaskOnDisk], dict[tuple[str, int], str], list[str]], *, allow_live: bool = True
) -> dict[str, TaskOnDisk]:
    """``check_raw`` on what ``read_disk`` or ``read_postgres`` read."""
    tasks, live, problems = read
    for tid, t in tasks.items():
        if t.task is None:
            problems.append(f"{tid!r}: keys without a task record (orphans): counter={t.counter}, "
                            f"{len(t.records)} records, {len(t.ids)} id keys")
            continue
        if t.task.id != tid:
            problems.append(f"{tid!r}: task record names id {t.task.id!r}")
        if t.counter is None:
            problems.append(f"{tid!r}: no counter")
            continue
        idx = t.indexes()
        if idx != list(range(t.prune_mark, t.counter)):
            missing = sorted(set(range(t.prune_mark, t.counter)) - set(idx))[:10]
            extra = [i for i in idx if not t.prune_mark <= i < t.counter][:10]
            problems.append(f"{tid!r}: prune mark {t.prune_mark}, counter {t.counter} but records at {len(idx)} "
                            f"indexes (missing {missing}, outside the mark and counter {extra})")
        ids = [r.id for r in t.records.values()]
        if len(set(ids)) != len(ids):
            problems.append(f"{tid!r}: an execution id appears at two indexes")
        if t.ids != {r.id: i for i, r in t.records.items()}:
            bad = {k: v for k, v in t.ids.items() if t.records.get(v) is None or t.records[v].id != k}
            problems.append(f"{tid!r}: id keys do not match records ({len(t.ids)} id keys, "
                            f"{len(t.records)} records; wrong: {list(bad.items())[:5]})")
        for k, eid in t.idempotency.items():
            if eid not in t.ids:
                problems.append(f"{tid!r}: idempotency key {k!r} points at unknown execution {eid}")
        for i, r in t.records.items():
            if r.task_id != tid or r.index != i:
                problems.append(f"{tid!r}: record at {i} decodes as {r.task_id!r}/{r.index}")
            if len(r.id) != 26:
                problems.append(f"{tid!r}: record at {i} has a non-ULID id {r.id!r}")
            if r.status in LIVE_STATUSES:
                if not allow_live:
                    problems.append(f"{tid!r}: execution {i} ({r.id}) is still {_status_name(r.status)}")
                if live.get((tid, i)) != r.id:
                    problems.append(f"{tid!r}: {_status_name(r.status)} execution {i} has no live key")
    for (tid, i), eid in live.items():
        t = tasks.get(tid)
        if t is None or t.task is None:
            problems.append(f"live key of a task that does not exist: {tid!r} index {i}")
            continue
        r = t.records.get(i)
        if r is None or r.id != eid:
            problems.append(f"{tid!r}: live key {i} -> {eid} does not match the record")
        elif r.status not in LIVE_STATUSES:
            problems.append(f"{tid!r}: live key {i} for a finished ({_status_name(r.status)}) record")
    assert not problems, "disk invariants violated:\n  " + "\n  ".join(problems[:40])
    return tasks


def check_db(path: str | os.PathLike[str], *, allow_live: bool = True) -> dict[str, TaskOnDisk]:
    """Open a CLOSED database with ``storage.Database`` (or read a PostgreSQL one) and check it."""
    if storage.is_url(str(path)):
        return check_read(read_postgres(str(path)), allow_live=allow_live)
    db = storage.Database.open(str(path))
    try:
        return check_raw(db.raw, allow_live=allow_live)
    finally:
        db.close()


def keys_with_prefix(path: str | os.PathLike[str], prefix: bytes) -> list[bytes]:
    db = storage.Database.open(str(path))
    try:
        with db.raw.iterator(prefix=prefix, include_value=False) as it:
            return list(it)
    finally:
        db.close()


def task_keys_on_disk(path: str | os.PathLike[str], task_id: str) -> list[bytes]:
    """Every key of the task (PostgreSQL: a name for each of its rows)."""
    if storage.is_url(str(path)):
        import psycopg

        with psycopg.connect(str(path)) as conn:
            rows = conn.execute(
                "SELECT 'task' FROM taskengine.tasks WHERE id = %s UNION ALL "
                "SELECT 'execution ' || idx FROM taskengine.executions WHERE task_id = %s", (task_id, task_id)
            ).fetchall()
        return [str(row[0]).encode() for row in rows]
    return keys_with_prefix(path, keys.task_prefix(task_id)) + keys_with_prefix(path, keys.live_prefix(task_id))


# ----------------------------------------------------------------------------------------------
# API-level checks
# ----------------------------------------------------------------------------------------------


def all_executions(engine: Any, task_id: str, page: int = 50) -> list[Any]:
    """Every execution of a task through list_executions, paging with ``after``."""
    out: list[Any] = []
    after = None
    while True:
        batch = engine.list_executions(task_id, after=after, limit=page)
        out.extend(batch)
        if len(batch) < page:
            return out
        after = batch[-1].index


def assert_gap_free_api(engine: Any, task_id: str, expected: Iterable[Any] | None = None) -> list[Any]:
    """Indexes p..n-1 from the API (p the prune mark, n the counter); each expected execution at
    its own index."""
    listed = all_executions(engine, task_id)
    n = engine.next_index(task_id)
    p = engine.get_task(task_id).prune_mark
    assert [e.index for e in listed] == list(range(p, n)), (
        f"list_executions indexes are not {p}..{n - 1}: {[e.index for e in listed][:50]}")
    assert len({e.id for e in listed}) == n - p
    assert engine.get_task(task_id).execution_count == n
    if expected is not None:
        by_id = {e.id: e for e in listed}
        for ex in expected:
            assert ex.id in by_id, f"execution {ex.id} (index {ex.index}) missing from list_executions"
            assert by_id[ex.id].index == ex.index, (
                f"execution {ex.id}: index {ex.index} at trigger, {by_id[ex.id].index} in list")
    return listed


def assert_indexes_exact(indexes: Iterable[int | None], n: int) -> None:
    idx = list(indexes)
    assert None not in idx, "an execution was answered without an index"
    dupes = sorted({i for i in idx if idx.count(i) > 1})
    assert not dupes, f"duplicate indexes handed out: {dupes[:20]}"
    assert sorted(idx) == list(range(n)), f"indexes are not exactly 0..{n - 1}: {sorted(idx)[:60]}"


# ----------------------------------------------------------------------------------------------
# subprocesses
# ----------------------------------------------------------------------------------------------


class Child:
    """A python subprocess running a script in tests/ (after ``prefix``, a wrapper command such as
    ``unshare``); lines of its stdout through a queue."""

    def __init__(self, script: str, *args: str, prefix: Iterable[str] = ()) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(HERE / script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(REPO),
            env=env,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self.seen: list[str] = []  # the lines expect() read, for the message of a failed test
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return "".join(self._stderr[-60:])

    def readline(self, timeout: float = WAIT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child printed nothing for {timeout} s; its last lines:\n"
                                 + "\n".join(self.seen[-20:]) + f"\nstderr:\n{self.stderr()}") from None
        if line is None:
            self.proc.wait(timeout=WAIT)
            raise AssertionError(f"child exited ({self.proc.returncode}) early; its last lines:\n"
                                 + "\n".join(self.seen[-20:]) + f"\nstderr:\n{self.stderr()}")
        return line

    def expect(self, prefix: str, timeout: float = WAIT) -> str:
        while True:
            line = self.readline(timeout)
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)

    def finish(self) -> int:
        """Close its stdin (the child's signal to exit) and wait for it."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode


def apply_ops(raw: Any, ops: Iterable[Any]) -> None:
    """Apply one ``storage.changes`` op list (puts and deletes) as one LevelDB write batch;
    used to craft on-disk states a crashed engine could leave."""
    with raw.write_batch(sync=True) as batch:
        for op in ops:
            if not isinstance(op, tuple):
                raise TypeError(f"crafting supports puts and deletes only, not {op!r}")
            key, value = op
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
