"""History figures of ``taskengine bench``: open time against the amount of finished
history, and the replay check against a raw iteration of the same database.

History databases are built directly with ``storage.changes`` ops in big unsynced write
batches (never through the engine), so a million finished executions take seconds, not
the minutes the engine would need. A database built once is reused while its marker file
says it holds what is asked for (useful with ``--workdir``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

import ulid

from taskengine.storage import Database, Execution, ExecutionStatus, Task, changes

from .measure import put_ops

TASKS = 100
BATCH = 20_000  # executions per unsynced write batch


def _noop(ctx: Any) -> None:
    return None


def build(path: str, executions: int, tasks: int = TASKS) -> dict[str, Any]:
    """A database of ``tasks`` tasks holding ``executions`` finished (SUCCESS) executions in
    all, spread evenly, written as the engine would have left them (counter, record, id key)."""
    marker = path + ".built.json"  # beside the database, not in it
    want = {"executions": executions, "tasks": tasks, "format": 1}
    try:
        with open(marker) as f:
            if json.load(f) == want:
                return {"built": False, "seconds": 0.0}
    except (OSError, ValueError):
        pass
    if os.path.exists(marker):
        os.remove(marker)
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    db = Database.open(path, create=True)
    now = time.time()
    per_task = [executions // tasks + (1 if t < executions % tasks else 0) for t in range(tasks)]
    try:
        batch = db.raw.write_batch()
        in_batch = 0
        for t in range(tasks):
            tid = f"task-{t}"
            task = Task(id=tid, job="noop", config=None, max_executions=None, created_at=now,
                        incarnation=str(ulid.ULID()))
            put_ops(batch, changes.create_task(task))
            for index in range(per_task[t]):
                ex = Execution(
                    id=str(ulid.ULID()), task_id=tid, index=index, status=ExecutionStatus.SUCCESS, blocking=False,
                    created_at=now, started_at=now, finished_at=now,
                )
                put_ops(batch, changes.assign(ex))  # a finished record: counter, record, id key
                in_batch += 1
                if in_batch >= BATCH:
                    batch.write()
                    batch = db.raw.write_batch()
                    in_batch = 0
        batch.write()
    finally:
        db.close()
    with open(marker, "w") as f:
        json.dump(want, f)
    return {"built": True, "seconds": round(time.perf_counter() - t0, 2)}


def _open_once(path: str) -> float:
    from taskengine import Engine

    t0 = time.perf_counter()
    engine = Engine.open(path, jobs={"noop": _noop})
    elapsed = time.perf_counter() - t0
    engine.close()
    return elapsed


def open_time(opts: Any, out: dict[str, Any], dbs: dict[str, str]) -> None:
    """Engine.open on a database with ``--history`` finished executions against one with
    ``--history-small``; median of ``--open-repeats`` opens of each, alternating."""
    small, large = dbs["small"], dbs["large"]
    for path in (small, large):  # the first open after a build replays LevelDB's log: not measured
        _open_once(path)
    times: dict[str, list[float]] = {small: [], large: []}
    for _ in range(opts.open_repeats):
        for path in (small, large):
            times[path].append(_open_once(path))
    for key, path, n in (("open_small", small, opts.history_small), ("open_large", large, opts.history)):
        out[key] = {
            "value": statistics.median(times[path]) * 1000, "unit": "ms", "executions": n,
            "min_ms": round(min(times[path]) * 1000, 2), "max_ms": round(max(times[path]) * 1000, 2),
            "repeats": opts.open_repeats,
        }


def replay(opts: Any, out: dict[str, Any], dbs: dict[str, str], invariants: dict[str, Any]) -> None:
    """The replay check (``taskengine.tools.replay.check``) on the large history database against a raw
    plyvel iteration of every key and value of the same database; both as execution records per
    second (same records, so the ratio is the ratio of the times). Best of ``--replay-repeats``."""
    from ..replay import check

    path = dbs["large"]
    db = Database.open(path, create=False)
    try:
        raw_times: list[float] = []
        check_times: list[float] = []
        keys = 0
        report = None

        def raw_pass() -> int:
            n = 0
            with db.raw.snapshot() as snap, snap.iterator() as it:
                for _key, _value in it:
                    n += 1
            return n

        raw_pass()  # warm the page cache for both
        for _ in range(opts.replay_repeats):
            t0 = time.perf_counter()
            keys = raw_pass()
            raw_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = check(db)
            check_times.append(time.perf_counter() - t0)
    finally:
        db.close()
    assert report is not None
    executions = report.totals()["executions"]
    out["raw_iteration"] = {
        "value": executions / min(raw_times), "unit": "records/s", "keys": keys, "executions": executions,
        "keys_per_s": round(keys / min(raw_times)), "seconds": round(min(raw_times), 3),
    }
    out["replay_check"] = {
        "value": executions / min(check_times), "unit": "records/s", "executions": executions,
        "seconds": round(min(check_times), 3),
    }
    invariants["history"] = {"ok": report.ok, "violations": report.violation_count, **report.totals()}


def prepare(opts: Any, out: dict[str, Any], need_small: bool) -> dict[str, str]:
    dbs = {"large": os.path.join(opts.workdir, f"history-{opts.history}")}
    info = build(dbs["large"], opts.history)
    out["build_history_large"] = {"value": info["seconds"], "unit": "s", "executions": opts.history, **info}
    how = f"built in {info['seconds']:.1f} s" if info["built"] else "reused"
    print(f"  history database of {opts.history} executions: {how}", file=sys.stderr, flush=True)
    if need_small:
        dbs["small"] = os.path.join(opts.workdir, f"history-{opts.history_small}")
        info = build(dbs["small"], opts.history_small)
        out["build_history_small"] = {"value": info["seconds"], "unit": "s", "executions": opts.history_small, **info}
    return dbs
