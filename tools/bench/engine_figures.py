"""Engine figures of ``taskengine bench``: durable trigger acknowledgements, end-to-end
executions, latency, 100,000 tasks (threads and memory) and the long soak.

The parts that report a process's peak memory (``tasks``, ``soak``) run in a child
process of their own (``python -m taskengine.tools.bench.engine_figures child NAME PARAMS``) so their peak is
theirs alone; the child prints its result as one JSON line on stdout.

Every part ends by running the replay check (``taskengine.tools.replay.check``) on the database it
produced: a benchmark that broke an invariant says so next to its figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from taskengine.storage.interface import open_store

from .. import replay  # imported with the engine, so a run checks with the code it ran
from .measure import Sampler, handoffs, proc_status, rss_mb, run_callers, run_fixed

if TYPE_CHECKING:
    from taskengine import EngineStats

CALLER_COUNTS = (1, 8, 64)
TASK_COUNTS = (1, 100)


def engine_kwargs(opts: Any) -> dict[str, Any]:
    """The engine's settings: its own defaults unless the command line names them."""
    from taskengine.actors.engine import default_counter_actors, default_workers

    target = getattr(opts, "backend", None) or ""
    workers = default_workers(target) if opts.workers is None else opts.workers
    counters = default_counter_actors(target) if opts.counter_actors is None else opts.counter_actors
    return {"workers": workers, "counter_actors": counters, "sync": True}


def _open(path: str, jobs: dict[str, Any], opts: Any) -> Any:
    """An engine as the acks and e2e figures use it; with ``--metrics``, observed by the
    Prometheus metrics (to measure what they cost)."""
    from taskengine import Engine

    engine = Engine.open(path, jobs=jobs, **engine_kwargs(opts))
    if getattr(opts, "metrics", False):
        from taskengine.prometheus import PrometheusMetrics

        PrometheusMetrics(engine, registry=None)
    return engine


def location(opts: Any, name: str) -> str:
    """Where figure ``name`` keeps its database: a directory of the work directory, or with
    ``--backend`` a new database on that PostgreSQL server."""
    server = getattr(opts, "server", None)
    return server.database(name) if server is not None else os.path.join(opts.workdir, name)


def _replay_ok(path: str) -> dict[str, Any]:
    """The replay check of a database a benchmark produced; never raises (a check that cannot
    run is reported as not OK, and the figures measured before it are kept)."""
    try:
        db = open_store(path, create=False)
        try:
            report = replay.check(db)
        finally:
            db.close()
    except Exception as e:
        return {"ok": False, "violations": None, "error": f"the replay check failed: {type(e).__name__}: {e}"}
    out: dict[str, Any] = {"ok": report.ok, "violations": report.violation_count, **report.totals()}
    if not report.ok:
        out["first_violations"] = [str(v) for v in report.violations[:5]]
    return out


def _replay_all_succeeded(path: str, expected: int) -> dict[str, Any]:
    """The replay check of a run whose ``expected`` no-op executions must all have succeeded."""
    rep = _replay_ok(path)
    if rep.get("success") != expected:
        rep["ok"] = False
        rep["note"] = f"{rep.get('success')} of {expected} executions finished SUCCESS"
    return rep


def _task_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{t}" for t in range(n)]


def _changes_per_write(before: EngineStats | None, after: EngineStats) -> float | None:
    """How many changes shared one LevelDB write (the group commit), from engine.stats()."""
    writes = after.writes - (before.writes if before is not None else 0)
    changes = after.changes_written - (before.changes_written if before is not None else 0)
    return round(changes / writes, 2) if writes > 0 and changes > 0 else None


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


# -- durable trigger acknowledgements ----------------------------------------------------------


def acks(
    opts: Any, out: dict[str, Any], invariants: dict[str, Any], with_naive: bool, with_pykka: bool = False,
    with_floor: bool = False,
) -> None:
    """Non-blocking triggers acknowledged (index durable) per second. Jobs are held at a gate
    while the callers run, so the figure is the acknowledgement path alone, as it is for the
    naive baseline; the executions are left PENDING on disk at close (checked by replay).

    With ``with_naive`` the naive design is measured interleaved with the engine, round by
    round and config by config, so a change in the machine's background load hits both; with
    ``with_pykka`` so is the bare pykka baseline (64 callers asking one actor), next to the
    engine's 64 callers over 100 tasks; with ``with_floor`` so is the floor (``GroupCommitFloor``)."""

    from .baselines import EchoActor, GroupCommitFloor, NaiveDesign, naive_entry, rate_entry

    server = getattr(opts, "server", None)
    # on PostgreSQL the figures the targets name: 64 callers on 1 task and over 100
    caller_counts = (64,) if server is not None else CALLER_COUNTS
    for tasks in TASK_COUNTS:
        design: Any = None
        if with_naive and server is not None:
            from .postgres import NaivePostgres

            design = NaivePostgres(location(opts, f"naive-{tasks}"), tasks, max(caller_counts))
        elif with_naive:
            design = NaiveDesign(location(opts, f"naive-{tasks}"), tasks)
        try:
            for callers in caller_counts:
                name = f"engine_acks_{callers}c_{tasks}t"
                path = location(opts, name)
                gate = threading.Event()

                def held(ctx: Any, gate: threading.Event = gate) -> None:
                    gate.wait()

                engine = _open(path, {"held": held}, opts)
                widest = callers == 64 and tasks == max(TASK_COUNTS)
                echo = EchoActor() if with_pykka and widest else None
                floor = GroupCommitFloor(os.path.join(opts.workdir, "floor")) if with_floor and widest else None
                runs, naive_runs, echo_runs, floor_runs = [], [], [], []
                try:
                    ids = _task_ids("t", tasks)
                    for tid in ids:
                        engine.create_task(tid, job="held")

                    def op(k: int, i: int, engine: Any = engine, ids: list[str] = ids, n: int = tasks) -> Any:
                        return engine.trigger(ids[(k * 31 + i) % n])

                    before = engine.stats()
                    for _ in range(opts.rounds):
                        if design is not None:
                            naive_runs.append(run_callers(callers, design.op, duration=opts.duration,
                                                          warmup=opts.warmup))
                        runs.append(run_callers(callers, op, duration=opts.duration, warmup=opts.warmup))
                        if echo is not None:
                            echo_runs.append(run_callers(callers, echo.op, duration=opts.duration,
                                                         warmup=opts.warmup))
                        if floor is not None:
                            floor_runs.append(run_callers(callers, floor.op, duration=opts.duration,
                                                          warmup=opts.warmup))
                    after = engine.stats()
                finally:
                    if echo is not None:
                        echo.close()
                    if floor is not None:
                        floor.close()
                    gate.set()
                    engine.close()  # queued executions stay PENDING on disk; the replay check accepts that
                out[name] = rate_entry(runs, "acks/s", callers=callers, tasks=tasks,
                                       changes_per_write=_changes_per_write(before, after))
                if naive_runs:
                    out[f"naive_acks_{callers}c_{tasks}t"] = naive_entry(naive_runs, callers, tasks)
                if echo_runs:
                    out["pykka_ask_64_callers"] = rate_entry(echo_runs, "asks/s", callers=64,
                                                             interleaved_with=name)
                if floor_runs:
                    out["floor_64c"] = rate_entry(floor_runs, "round trips/s", callers=64, interleaved_with=name)
                invariants[name] = _replay_ok(path)
        finally:
            if design is not None:
                design.close()


# -- end to end -----------------------------------------------------------------------------


def e2e(opts: Any, out: dict[str, Any], invariants: dict[str, Any]) -> None:
    """No-op executions per second from the first trigger to the last SUCCESS durable on disk
    (64 callers, non-blocking triggers over 100 tasks); then blocking-trigger latency."""

    from .baselines import rate_entry

    total = opts.e2e_executions
    path = location(opts, "e2e")
    done = [0]
    lock = threading.Lock()
    finished = threading.Event()
    last: list[tuple[str, str]] = []

    def noop(ctx: Any) -> None:
        with lock:
            done[0] += 1
            if done[0] == total:
                last.append((ctx.task_id, ctx.execution_id))
                finished.set()

    engine = _open(path, {"noop": noop}, opts)
    try:
        ids = _task_ids("t", 100)
        for tid in ids:
            engine.create_task(tid, job="noop")
        t0, c0, h0 = time.perf_counter(), time.process_time(), handoffs()
        trigger_seconds, _ = run_fixed(64, total, lambda k, i: engine.trigger(ids[(k * 31 + i) % 100]))
        if not finished.wait(max(60.0, total / 50)):
            raise RuntimeError(f"only {done[0]} of {total} executions ran")
        task_id, execution_id = last[0]
        engine.wait(task_id, execution_id, timeout=60)  # its SUCCESS is durable
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        switched = handoffs() - h0
        out["e2e_noop_64c_100t"] = {
            "value": total / elapsed, "unit": "executions/s", "callers": 64, "tasks": 100, "executions": total,
            "cpu_percent": round(100 * cpu / elapsed), "workers": engine_kwargs(opts)["workers"],
            "cpu_us_per_op": round(1e6 * cpu / total, 1), "handoffs_per_op": round(switched / total, 2),
            "seconds": round(elapsed, 3), "trigger_phase_acks_per_s": round(total / trigger_seconds, 1),
        }
        # blocking triggers: trigger to finished, per call
        run = run_callers(
            8, lambda k, i: engine.trigger(ids[(k * 31 + i) % 100], blocking=True, timeout=60),
            duration=opts.duration, warmup=opts.warmup,
        )
        out["e2e_blocking_8c_100t"] = rate_entry([run], "executions/s", callers=8, tasks=100)
        stats = engine.stats()
    finally:
        engine.close()
    out["e2e_noop_64c_100t"]["changes_per_write"] = _changes_per_write(None, stats)
    rep = _replay_ok(path)
    if rep.get("pending") or rep.get("running"):
        rep["ok"] = False  # every execution was waited for: none may be left unfinished
        rep["note"] = "unfinished executions left after e2e"
    invariants["e2e"] = rep


# -- children: 100,000 tasks and the soak ---------------------------------------------------


def run_child(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``name`` in a fresh Python process; its stdout's last line is the JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "taskengine.tools.bench.engine_figures", "child", name, json.dumps(params)],
        stdout=subprocess.PIPE, text=True, check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {name!r} failed with exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def child_tasks(p: dict[str, Any]) -> dict[str, Any]:
    """Create ``tasks`` tasks and trigger each once (64 callers), then wait until every
    execution has finished; report the process's peak live threads and peak RSS."""
    from taskengine import Engine

    n = p["tasks"]
    base = proc_status()
    ran = [0]
    lock = threading.Lock()

    def noop(ctx: Any) -> None:
        with lock:
            ran[0] += 1

    with Sampler(0.05) as sampler:
        t0, c0 = time.perf_counter(), time.process_time()
        engine = Engine.open(p["path"], jobs={"noop": noop}, workers=p["workers"], counter_actors=p["counter_actors"])
        ids = _task_ids("task", n)
        create_s, _ = run_fixed(64, n, lambda k, i: engine.create_task(ids[k + 64 * i], job="noop"))
        _progress(f"tasks: {n} tasks created in {create_s:.1f} s")
        trigger_s, _ = run_fixed(64, n, lambda k, i: engine.trigger(ids[k + 64 * i]))
        _progress(f"tasks: {n} triggers acknowledged in {trigger_s:.1f} s")
        deadline = time.monotonic() + max(120.0, n / 100)
        while ran[0] < n and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = engine.stats()
        engine.close()  # writes every finish still on its way
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        _progress(f"tasks: {ran[0]} executions ran; closed after {elapsed:.1f} s")
    result = {
        "tasks": n,
        "peak_threads": sampler.peak_threads,
        "peak_rss_mb": rss_mb(sampler.peak_rss_kb),
        "base_rss_mb": rss_mb(base.get("VmRSS", 0)),
        "base_threads": base.get("Threads"),
        "caller_threads": 64,
        "engine_actors": stats.live_actors,
        "cached_tasks": stats.cached_tasks,
        "ran": ran[0],
        "create_s": round(create_s, 2),
        "trigger_s": round(trigger_s, 2),
        "seconds": round(elapsed, 2),
        "cpu_percent": round(100 * cpu / elapsed),
    }
    result["invariants"] = _replay_all_succeeded(p["path"], n)
    return result


def child_soak(p: dict[str, Any]) -> dict[str, Any]:
    """``executions`` no-op executions from ``callers`` callers over 100 tasks. At most
    ``window`` executions are in flight (a job's run frees its slot), so the backlog is bounded
    and any growth is the engine's own; every 64th trigger is blocking (it waits), so the
    blocking path and its waiters are soaked too."""
    from taskengine import Engine

    total, window, callers, warm = p["executions"], p["window"], p["callers"], p["warm"]
    ran = [0]
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(window)

    def noop(ctx: Any) -> None:
        with lock:
            ran[0] += 1
        slots.release()

    claimed = [0]

    def claim() -> bool:
        with lock:
            if claimed[0] >= total:
                return False
            claimed[0] += 1
            return True

    engine = Engine.open(p["path"], jobs={"noop": noop}, workers=p["workers"], counter_actors=p["counter_actors"])
    ids = _task_ids("t", 100)
    for tid in ids:
        engine.create_task(tid, job="noop")
    errors: list[str] = []

    def caller(k: int) -> None:
        i = 0
        try:
            while claim():
                slots.acquire()
                engine.trigger(ids[(k * 31 + i) % 100], blocking=i % 64 == 63, timeout=120)
                i += 1
        except Exception as e:  # reported, never hidden
            errors.append(f"{type(e).__name__}: {e}")

    step = max(1, total // 10)
    next_report = [step]

    def probe() -> tuple[int, int]:
        """(executions run, memory blocks Python's allocator holds): the second tells growth of
        Python objects from growth in native memory (LevelDB's memtables, caches, compactions)."""
        if ran[0] >= next_report[0]:
            _progress(f"soak: {ran[0]} of {total} executions, RSS {rss_mb(proc_status().get('VmRSS', 0))} MB")
            next_report[0] += step
        return ran[0], sys.getallocatedblocks()

    threads = [threading.Thread(target=caller, args=(k,), name=f"soak-caller-{k}", daemon=True)
               for k in range(callers)]
    with Sampler(p["interval"], probe=probe) as sampler:
        t0, c0 = time.perf_counter(), time.process_time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 120
        while ran[0] < claimed[0] - len(errors) and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        stats = engine.stats()
        sampler.sample()  # the last sample with the engine open
    engine.close()  # writes every finish still on its way
    closed_rss = proc_status().get("VmRSS", 0)
    # (seconds, RSS MB, threads, executions, Python allocator blocks)
    series = [(round(t, 2), rss_mb(rss), th, pr[0], pr[1]) for t, rss, th, pr in sampler.samples if pr is not None]
    after_warm = [s for s in series if s[3] >= warm]
    at_warm = after_warm[0] if after_warm else None
    peak = max(after_warm, key=lambda s: s[1]) if after_warm else None
    end = series[-1] if series else None
    tail = [s[1] for s in after_warm[-max(1, len(after_warm) // 10):]]
    result: dict[str, Any] = {
        "executions": ran[0],
        "seconds": round(elapsed, 2),
        "rate": ran[0] / elapsed if elapsed else 0.0,
        "cpu_percent": round(100 * cpu / elapsed) if elapsed else None,
        "warm": warm,
        "rss_at_warm_mb": at_warm[1] if at_warm else None,
        "peak_rss_after_warm_mb": peak[1] if peak else None,
        "peak_at_executions": peak[3] if peak else None,
        "end_rss_mb": end[1] if end else None,
        "last_tenth_median_rss_mb": statistics.median(tail) if tail else None,
        "rss_after_close_mb": rss_mb(closed_rss),
        # the target's figure: the highest RSS seen after warm-up, less RSS at warm-up
        "growth_mb": round(peak[1] - at_warm[1], 1) if peak and at_warm else None,
        "end_growth_mb": round(end[1] - at_warm[1], 1) if end and at_warm else None,
        "python_blocks_at_warm": at_warm[4] if at_warm else None,
        "python_blocks_at_end": end[4] if end else None,
        "peak_threads": sampler.peak_threads,
        "cached_tasks": stats.cached_tasks,
        "pending_left": stats.pending,
        "waiters_left": stats.waiters,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "series": _downsample(series, 60),
    }
    result["invariants"] = _replay_all_succeeded(p["path"], total)
    return result


def _downsample(series: list[Any], n: int) -> list[Any]:
    if len(series) <= n:
        return series
    step = len(series) / n
    picked = [series[int(i * step)] for i in range(n)]
    if picked[-1] is not series[-1]:
        picked.append(series[-1])
    return picked


CHILDREN = {"tasks": child_tasks, "soak": child_soak}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "child" or argv[1] not in CHILDREN:
        print("usage: python -m taskengine.tools.bench.engine_figures child {tasks|soak} PARAMS_JSON", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = CHILDREN[argv[1]](json.loads(argv[2]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
