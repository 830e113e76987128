"""Profiles behind BENCHMARKS.md: where the engine's time goes on the paths the targets measure.

Not part of ``taskengine bench`` (its figures stay free of instrumentation). Run as::

    python -m taskengine.tools.bench.probe acks --tasks 1 --callers 64   # durable acks
    python -m taskengine.tools.bench.probe acks --no-directory-watch     # the same without the directory check
    python -m taskengine.tools.bench.probe acks --tasks 100 --backend postgresql://...  # on PostgreSQL
    python -m taskengine.tools.bench.probe e2e --executions 20000         # end-to-end no-op executions
    python -m taskengine.tools.bench.probe e2e --burst                    # the same, triggered as the bench does
    python -m taskengine.tools.bench.probe e2e --burst --backend postgresql://...  # on PostgreSQL
    python -m taskengine.tools.bench.probe e2e --cprofile                 # function by function
    python -m taskengine.tools.bench.probe floor                          # an ack's round trip and fsync, no engine
    python -m taskengine.tools.bench.probe gil                            # plyvel puts with and without GIL contention
    python -m taskengine.tools.bench.probe turn                           # an execution's Python, on one thread
    python -m taskengine.tools.bench.probe start --executions 2000        # trigger to the job's first line
    python -m taskengine.tools.bench.probe nodes --backend postgresql://...  # one hot task on one node and on three

It instruments the engine from outside, by wrapping (never editing) a few of its methods:
``storage.batch.Committer.write`` (time per LevelDB write, split into building the batch and
``batch.write``), ``actors.counter.CounterActor.on_receive`` (a counter actor's turn), and
``pykka.ActorRef.tell``/``ask`` (messages per operation). CPU time per thread comes from
``/proc/self/task/<tid>/stat``. A wrapper whose target no longer exists is skipped with a note,
so the probe keeps working (with less detail) as the engine changes.

Run it under ``taskset -c 0`` to see what the GIL's hand-offs between CPUs cost (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from .measure import handoffs, run_callers

_lock = threading.Lock()
_stats: collections.Counter[str] = collections.Counter()
_times: collections.defaultdict[str, float] = collections.defaultdict(float)


def _instrument_writes() -> str | None:
    try:
        from taskengine.storage import batch as sb
    except ImportError as e:
        return f"no storage.batch ({e}): LevelDB write timing skipped"
    committer = getattr(sb, "Committer", None)
    if committer is None or not hasattr(committer, "write"):
        return "no storage.batch.Committer.write: LevelDB write timing skipped"
    original = committer.write
    delete_prefix = getattr(sb, "DeletePrefix", ())

    def write(self: Any, changes: Any) -> Any:
        ops = sum(len(c) for c in changes)
        plain = getattr(self, "_capi", None) is None and hasattr(self, "_db")
        plain = plain and not any(isinstance(op, delete_prefix) for c in changes for op in c)
        t0 = time.perf_counter()
        if plain:  # the same work as Committer.write, timed in two parts
            b = self._db.write_batch(sync=getattr(self, "sync", True))
            for c in changes:
                for op in c:
                    if op[1] is None:
                        b.delete(op[0])
                    else:
                        b.put(op[0], op[1])
            t1 = time.perf_counter()
            b.write()
            result = None
        else:
            result = original(self, changes)
            t1 = t0
        t2 = time.perf_counter()
        with _lock:
            _stats["writes"] += 1
            _stats["changes"] += len(changes)
            _stats["ops"] += ops
            _times["write"] += t2 - t0
            if plain:
                _stats["timed_writes"] += 1
                _stats["timed_ops"] += ops
                _times["build"] += t1 - t0
                _times["batch_write"] += t2 - t1
        return result

    committer.write = write
    return None


def _instrument_postgres() -> str | None:
    """Time the PostgreSQL writer's transactions (``PostgresWriter._write``: the fence and task
    locks, the statements, the commit; ``_write_stamped``: a stamped turn's one query)."""
    try:
        from taskengine.storage import pg_writer
    except ImportError as e:
        return f"no PostgreSQL backend ({e}): transaction timing skipped"
    for name in ("_write", "_write_stamped"):
        original = getattr(pg_writer.PostgresWriter, name, None)
        if original is None:
            return f"no PostgresWriter.{name}: transaction timing skipped"
        setattr(pg_writer.PostgresWriter, name, _timed_transaction(original, stamped=name == "_write_stamped"))
    for name, key in (("begin", "pg_begin"), ("_statements", "pg_statements_time")):
        _time_method(pg_writer.PostgresWriter, name, key)
    return None


def _timed_transaction(original: Any, *, stamped: bool) -> Any:
    def transaction(self: Any, changes: Any, *rest: Any) -> Any:
        sent = getattr(self, "sent", 0)
        t0 = time.perf_counter()
        try:
            return original(self, changes, *rest)
        finally:
            took = time.perf_counter() - t0
            with _lock:
                _stats["pg_transactions"] += 1
                _stats["pg_stamped"] += int(stamped)
                _stats["pg_changes"] += len(changes)
                _stats["pg_statements"] += sum(len(c) for c in changes)
                _stats["pg_sent"] += getattr(self, "sent", 0) - sent
                _times["pg_transaction"] += took

    return transaction


def _time_method(cls: Any, name: str, key: str) -> None:
    """Add the wall time of ``cls.name`` to ``_times[key]`` (and count its calls), if it exists."""
    original = getattr(cls, name, None)
    if original is None:
        return

    def timed(self: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kw)
        finally:
            took = time.perf_counter() - t0
            with _lock:
                _stats[key] += 1
                _times[key] += took

    setattr(cls, name, timed)


def _instrument_directory(off: bool) -> str | None:
    """Time the directory check a synced write makes before its acknowledgement (a scandir, and
    an fsync of the directory when LevelDB created or removed a file); ``off`` skips it, to
    measure what it costs."""
    try:
        from taskengine.storage.durable import DirectoryWatch
    except ImportError as e:
        return f"no storage.durable ({e}): directory check timing skipped"
    original = DirectoryWatch.make_durable

    def make_durable(self: Any) -> None:
        if off:
            return
        t0 = time.perf_counter()
        before = self.syncs
        original(self)
        took = time.perf_counter() - t0
        with _lock:
            _stats["dir_checks"] += 1
            _stats["dir_syncs"] += self.syncs - before
            _times["dir_check"] += took

    DirectoryWatch.make_durable = make_durable  # type: ignore[method-assign]
    return "directory check OFF (--no-directory-watch): acks are not durable under the strict model" if off else None


def _instrument_turns() -> str | None:
    try:
        from taskengine.actors import counter as ac
    except ImportError as e:
        return f"no actors.counter ({e}): counter-actor turn timing skipped"
    # one turn (on_receive handles a turn, then those of the messages it left for later)
    name = "_turn_of" if hasattr(ac.CounterActor, "_turn_of") else "on_receive"
    original = getattr(ac.CounterActor, name)

    def on_receive(self: Any, message: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(self, message)
        finally:
            dt = time.perf_counter() - t0
            with _lock:
                _stats["turns"] += 1
                _times["turn"] += dt

    setattr(ac.CounterActor, name, on_receive)
    return None


_profiles: dict[str, list[Any]] = collections.defaultdict(list)


def _instrument_cprofile() -> str | None:
    """cProfile inside the engine's actors (each thread its own profiler, merged per kind of actor
    at the end): where an execution's CPU goes, function by function. Slows the engine down
    several times over: read it for proportions, not rates."""
    import cProfile

    try:
        from taskengine.actors import counter, pending, pool
    except ImportError as e:
        return f"no actors ({e}): cProfile skipped"
    local = threading.local()
    for kind, cls in (("CounterActor", counter.CounterActor), ("Executor", pool.Executor),
                      ("PendingStore", pending.PendingStore), ("ExecutorPool", pool.ExecutorPool)):
        original = cls.on_receive

        def on_receive(self: Any, message: Any, original: Any = original, kind: str = kind) -> Any:
            prof = getattr(local, "prof", None)
            if prof is None:
                prof = local.prof = cProfile.Profile()
                with _lock:
                    _profiles[kind].append(prof)
            prof.enable()
            try:
                return original(self, message)
            finally:
                prof.disable()

        cls.on_receive = on_receive  # type: ignore[method-assign]
    return None


def _cprofile_lines(n: int, top: int = 14) -> list[str]:
    import io
    import pstats

    lines = []
    for kind, profs in sorted(_profiles.items()):
        stats = pstats.Stats(profs[0], stream=io.StringIO())
        for prof in profs[1:]:
            stats.add(prof)
        raw: Any = stats.stats  # type: ignore[attr-defined]
        total = sum(tt for _, _, tt, _, _ in raw.values())
        lines.append(f"  cProfile, {kind} ({len(profs)} thread(s)): {1e6 * total / n:.1f} us of Python per "
                     "execution (under the profiler); own time per execution by function:")
        ranked = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
        for (file, line, func), (_, calls, tt, _, _) in ranked:
            where = f"{os.path.basename(file)}:{line}" if line else file
            lines.append(f"    {1e6 * tt / n:6.1f} us  {calls / n:5.2f} calls  {func} ({where})")
    return lines


def _instrument_messages() -> None:
    from pykka import _ref

    tell, ask = _ref.ActorRef.tell, _ref.ActorRef.ask

    def counted_tell(self: Any, message: Any) -> None:
        with _lock:
            _stats[f"msg tell {type(message).__name__} -> {self.actor_class.__name__}"] += 1
        tell(self, message)

    def counted_ask(self: Any, message: Any, **kw: Any) -> Any:
        with _lock:
            _stats[f"msg ask  {type(message).__name__} -> {self.actor_class.__name__}"] += 1
        return ask(self, message, **kw)

    _ref.ActorRef.tell = counted_tell  # type: ignore[method-assign]
    _ref.ActorRef.ask = counted_ask  # type: ignore[method-assign]


#: a thread's name, CPU seconds, and the CPU and kernel seconds of its clock-tick samples
ThreadCPU = tuple[str, float, float, float]


def _thread_cpu() -> dict[int, ThreadCPU]:
    """Each live thread's name and CPU time, with the clock-tick samples that split it into the
    kernel's part (system calls, page faults) and the rest. The CPU time is the scheduler's own
    count (``schedstat``, in ns) where there is one: ticks miss most of 64 executors that each run
    for microseconds at a time, so the split is taken over a kind of thread, not one."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for t in threading.enumerate():
        if t.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{t.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user, kernel = int(fields[11]) / tick, int(fields[12]) / tick
            cpu = user + kernel
            try:
                with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                    cpu = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
        except OSError:
            continue
        out[t.native_id] = (t.name, cpu, user + kernel, kernel)
    return out


def _switches() -> tuple[int, int]:
    """Voluntary and involuntary context switches of every live thread of the process."""
    totals = [0, 0]
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        totals[0] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        totals[1] += int(line.split()[1])
        except OSError:
            continue
    return totals[0], totals[1]


def _group(name: str) -> str:
    name = re.sub(r"-\d+$", "", name)
    return "caller threads" if name.startswith(("bench-caller", "soak-caller")) else name


def _cpu_table(before: dict[int, ThreadCPU], after: dict[int, ThreadCPU], ops: float, wall: float,
               exclude: tuple[str, ...] = ()) -> list[str]:
    """CPU per operation by kind of thread; a thread started after ``before`` counts from 0.
    The kernel's part runs without the GIL; the rest is mostly Python holding it."""
    per: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for tid, (name, cpu, ticked, kernel) in after.items():
        if _group(name) not in exclude:
            _, cpu0, ticked0, kernel0 = before.get(tid, (name, 0.0, 0.0, 0.0))
            group = per[_group(name)]
            group[0] += cpu - cpu0
            group[1] += ticked - ticked0
            group[2] += kernel - kernel0
    lines = [f"  CPU per operation by thread (from /proc; {ops:.0f} operations in {wall:.1f} s):"]
    total = kernel_total = 0.0
    for g, (c, ticked, kernel) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        if c > 0:
            k = c * kernel / ticked if ticked else 0.0
            total, kernel_total = total + c, kernel_total + k
            split = f"{1e6 * k / ops:6.1f}" if ticked else "     ?"  # no tick fell in its runs
            lines.append(
                f"    {g:24s} {1e6 * c / ops:7.1f} us, {split} of it in the kernel   ({100 * c / wall:4.0f}% of a core)"
            )
    lines.append(f"    {'all threads':24s} {1e6 * total / ops:7.1f} us, "
                 f"{1e6 * kernel_total / ops:6.1f} of it in the kernel (of the threads ticks fell in)")
    return lines


def _write_lines(n_ops: float, label: str, frozen: tuple[Any, Any] | None = None) -> list[str]:
    """``frozen``: the figures as they stood at the end of the measured window."""
    s, t = frozen if frozen is not None else (_stats, _times)
    lines = []
    if s["turns"]:
        lines.append(f"  counter-actor turns: {s['turns']}, mean {1e6 * t['turn'] / s['turns']:.0f} us")
    if s["writes"]:
        lines.append(
            f"  LevelDB writes: {s['writes'] / n_ops:.2f} per {label}, {s['changes'] / s['writes']:.1f} changes and "
            f"{s['ops'] / s['writes']:.1f} ops per write; Committer.write {1e6 * t['write'] / s['writes']:.0f} us "
            f"per write ({1e6 * t['write'] / max(1, s['ops']):.1f} us per op)"
        )
        if s["turns"]:
            lines.append(f"  Committer.write is {100 * t['write'] / t['turn']:.0f}% of counter-actor turn time")
        if s["timed_writes"]:
            lines.append(
                f"    building the batch (one plyvel put/delete per op): {1e6 * t['build'] / s['timed_ops']:.1f} us "
                f"per op; batch.write (LevelDB queue + fsync): {1e6 * t['batch_write'] / s['timed_writes']:.0f} us "
                "per write"
            )
    if s["pg_transactions"]:
        n = s["pg_transactions"]
        lines.append(
            f"  PostgreSQL transactions: {n / n_ops:.2f} per {label}, {s['pg_changes'] / n:.1f} changes and "
            f"{s['pg_statements'] / n:.1f} statements each, sent as {s['pg_sent'] / n:.1f}; "
            f"{1e6 * t['pg_transaction'] / n:.0f} us per transaction "
            f"({1e6 * t['pg_transaction'] / max(1, s['pg_statements']):.0f} us per statement)"
        )
        if s["turns"]:
            lines.append(f"  transactions are {100 * t['pg_transaction'] / t['turn']:.0f}% of counter-actor turn time")
        if "server_cpu" in t:
            lines.append(f"  the writer's server process: {1e6 * t['server_cpu'] / n_ops:.1f} us of CPU per {label}, "
                         f"{1e6 * t['server_cpu'] / n:.0f} us per transaction")
        if s["pg_statements_time"]:
            rest = t["pg_transaction"] - t["pg_statements_time"]
            lines.append(
                f"    of a transaction: its statements, notification and commit "
                f"(PostgresWriter._statements) {1e6 * t['pg_statements_time'] / n:.0f} us, the rest (the fence "
                f"when no turn began it) {1e6 * rest / n:.0f} us")
        if s["pg_begin"]:
            lines.append(
                f"  a turn's start (PostgresWriter.begin: BEGIN, the fence and the tasks' locks, their rows, in one "
                f"round trip): {1e6 * t['pg_begin'] / s['pg_begin']:.0f} us, {s['pg_begin'] / n:.2f} per transaction"
                + (f", {100 * t['pg_begin'] / t['turn']:.0f}% of turn time" if s["turns"] else ""))
    if s["dir_checks"]:
        lines.append(
            f"  directory check before the ack: {1e6 * t['dir_check'] / s['dir_checks']:.1f} us per write, "
            f"{s['dir_syncs']} directory fsyncs in {s['dir_checks']} writes"
        )
    msgs = sorted(((k[4:], v) for k, v in s.items() if k.startswith("msg ")), key=lambda kv: -kv[1])
    if msgs:
        total = sum(v for _, v in msgs)
        lines.append(f"  actor messages: {total / n_ops:.2f} per {label}")
        for k, v in msgs:
            if v / n_ops >= 0.01:
                lines.append(f"    {v / n_ops:5.2f}  {k}")
    return lines


def _window(args: argparse.Namespace, op: Callable[[int, int], Any]) -> tuple[Any, ...]:
    """Run ``op`` on ``args.callers`` threads and measure a window of ``args.duration`` seconds
    inside the run: the run, thread CPU before and after, wall time, thread switches, and the
    instrumented counts as they stood at the end of the window."""
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.setdefault("run", run_callers(
        args.callers, op, duration=args.duration + 1.5, warmup=0.3)))
    runner.start()
    time.sleep(0.4)
    with _lock:
        _stats.clear()
        _times.clear()
    server0 = _server_cpu(args)
    before, switched, t0 = _thread_cpu(), _switches(), time.perf_counter()
    time.sleep(args.duration)
    after, wall = _thread_cpu(), time.perf_counter() - t0
    server1 = _server_cpu(args)
    if server0 is not None and server1 is not None:
        with _lock:
            _times["server_cpu"] = server1 - server0
    switches = [b - a for a, b in zip(switched, _switches(), strict=True)]
    with _lock:  # the callers run on after the window: count what happened inside it
        frozen = (collections.Counter(_stats), collections.Counter(_times))
    runner.join()
    return box["run"], before, after, wall, switches, frozen


def _server_cpu(args: argparse.Namespace) -> float | None:
    """CPU seconds so far of the writer's server processes, one per lane (``args.backend_pids``, set
    by a probe on a PostgreSQL server this machine runs; None where they cannot be read)."""
    pids = getattr(args, "backend_pids", None)
    if not pids:
        return None
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _switch_line(switches: list[int], ops: float, label: str) -> str:
    return f"  thread switches per {label}: {switches[0] / ops:.2f} voluntary, {switches[1] / ops:.2f} involuntary"


def _database(args: argparse.Namespace, name: str, notes: list[str] | None) -> tuple[Any, str]:
    """Where probe ``name`` runs its engine: a directory of the work directory, or with
    ``--backend`` a new database on that server (the server is returned: its ``drop_all``
    removes it), the writer's transactions then timed unless ``notes`` is None (a note says if
    they cannot be)."""
    if not args.backend:
        return None, os.path.join(args.workdir, name)
    from .postgres import Server

    if notes is not None:
        notes += [n for n in (_instrument_postgres(),) if n]
    server = Server(args.backend)
    return server, server.database(f"probe_{name}")


def probe_acks(args: argparse.Namespace) -> list[str]:
    notes = [n for n in (_instrument_writes(), _instrument_turns(),
                         _instrument_directory(args.no_directory_watch),
                         _instrument_cprofile() if args.cprofile else None) if n]
    _instrument_messages()
    from taskengine import Engine

    server, path = _database(args, "acks", notes)
    gate = threading.Event()

    def held(ctx: Any) -> None:
        gate.wait()

    engine = Engine.open(path, jobs={"held": held}, counter_actors=args.counter_actors)
    ids = [f"t{i}" for i in range(args.tasks)]
    for tid in ids:
        engine.create_task(tid, job="held")
    backend_pids = getattr(engine._committer, "backend_pids", None)
    args.backend_pids = backend_pids() if backend_pids is not None else None
    sent = itertools.count(1)  # every trigger of the run: cProfile sees them all, not the window's alone

    def op(k: int, i: int) -> Any:
        next(sent)
        return engine.trigger(ids[(k * 31 + i) % args.tasks])

    run, before, after, wall, switches, frozen = _window(args, op)
    gate.set()
    engine.close()
    if server is not None:
        server.drop_all()
    # the triggers sent inside the window (each is one ack); the callers' own rate is over a longer run
    ops = frozen[0]["msg tell Trigger -> CounterActor"] or max(run.rate * wall, 1.0)
    lines = [f"durable acks, {args.callers} callers over {args.tasks} task(s), {args.counter_actors} counter actors: "
             f"{run.rate:.0f} acks/s, process CPU {run.cpu_percent:.0f}%"]
    lines += _cpu_table(before, after, ops, wall)
    lines.append(_switch_line(switches, ops, "ack"))
    lines += _write_lines(ops, "ack", frozen)
    if args.cprofile:
        lines += _cprofile_lines(next(sent) - 1)
    return notes + lines


def probe_floor(args: argparse.Namespace) -> list[str]:
    """What an ack costs with none of the engine's work (``baselines.GroupCommitFloor``)."""
    from .baselines import GroupCommitFloor

    floor = GroupCommitFloor(os.path.join(args.workdir, "floor"))
    run, before, after, wall, switches, _ = _window(args, floor.op)
    floor.close()
    ops = max(run.rate * wall, 1.0)
    lines = [f"group-commit echo actor (engine mailbox, one fsync per turn), {args.callers} callers: "
             f"{run.rate:.0f} asks/s, process CPU {run.cpu_percent:.0f}%"]
    lines += _cpu_table(before, after, ops, wall)
    lines.append(_switch_line(switches, ops, "ask"))
    return lines


def probe_e2e(args: argparse.Namespace) -> list[str]:
    notes = [n for n in (_instrument_writes(), _instrument_turns(),
                         _instrument_cprofile() if args.cprofile else None) if n]
    _instrument_messages()
    from .engine_figures import child_soak

    server, path = _database(args, "e2e", notes)

    before, t0 = _thread_cpu(), time.perf_counter()
    holder: dict[str, Any] = {}

    seen: dict[int, ThreadCPU] = {}

    def sampler() -> None:  # threads end before child_soak returns: keep each one's last figure
        while "done" not in holder:
            seen.update(_thread_cpu())
            time.sleep(0.2)

    s = threading.Thread(target=sampler, name="probe-sampler", daemon=True)
    s.start()
    switched = handoffs()
    try:
        if args.burst:
            result = _burst(args, path, before_close=lambda: seen.update(_thread_cpu()))
            driver = "64 callers trigger them all at once, as taskengine bench's e2e does"
        else:
            result = child_soak({
                "path": path, "executions": args.executions, "warm": 0,
                "workers": args.workers, "counter_actors": args.counter_actors, "callers": 8, "window": 1000,
                "interval": 0.5,
            })
            driver = "the soak driver: 8 callers, at most 1,000 in flight"
    finally:
        if server is not None:
            server.drop_all()
    switched = handoffs() - switched
    holder["done"] = True
    s.join()
    wall = time.perf_counter() - t0
    n = result["executions"]
    lines = [f"end-to-end no-op executions ({driver}), {n} executions, {args.workers} workers, "
             f"{args.counter_actors} counter actors: {result['rate']:.0f}/s, process CPU {result['cpu_percent']}%"]
    # the main thread also opens the engine and runs the replay check: left out
    lines += _cpu_table(before, seen, n, wall, exclude=("MainThread", "probe-sampler"))
    lines.append(f"  thread hand-offs (voluntary switches, every thread) per execution: {switched / n:.2f}")
    lines += _write_lines(n, "execution")
    if args.cprofile:
        lines += _cprofile_lines(n)
    return notes + lines


def _burst(args: argparse.Namespace, path: str, before_close: Callable[[], None]) -> dict[str, Any]:
    """``args.executions`` no-op executions over 100 tasks, triggered by 64 callers at once; done
    when the last one has run. ``before_close`` runs while the engine's threads still live (a short
    burst can start and end them between two of the sampler's looks)."""
    from taskengine import Engine

    from .measure import run_fixed

    total, done, finished, lock = args.executions, [0], threading.Event(), threading.Lock()

    def noop(ctx: Any) -> None:
        with lock:
            done[0] += 1
            if done[0] == total:
                finished.set()

    engine = Engine.open(path, jobs={"noop": noop}, workers=args.workers,
                         counter_actors=args.counter_actors)
    try:
        ids = [f"t{i}" for i in range(100)]
        for tid in ids:
            engine.create_task(tid, job="noop")
        t0, c0 = time.perf_counter(), time.process_time()
        run_fixed(64, total, lambda k, i: engine.trigger(ids[(k * 31 + i) % 100]))
        finished.wait(max(60.0, total / 50))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        before_close()
    finally:
        engine.close()
    return {"executions": done[0], "rate": done[0] / elapsed, "cpu_percent": round(100 * cpu / elapsed)}


def probe_start(args: argparse.Namespace) -> list[str]:
    """One caller triggering in a row on an idle engine, each execution waited for before the
    next: the trigger's answer, and the time from ``trigger()`` to the job's first line (an
    idle executor's execution starts in its trigger's own write). Nothing is instrumented."""
    from taskengine import Engine

    server, path = _database(args, "start", None)  # nothing timed
    first_line: dict[str, float] = {}
    ran = threading.Event()

    def job(ctx: Any) -> None:
        first_line[ctx.execution_id] = time.perf_counter()
        ran.set()

    acks: list[float] = []
    starts: list[float] = []
    try:
        engine = Engine.open(path, jobs={"j": job}, workers=args.workers, counter_actors=args.counter_actors)
        try:
            engine.create_task("t", job="j")
            for _ in range(args.executions):
                ran.clear()
                t0 = time.perf_counter()
                ex = engine.trigger("t")
                acks.append(time.perf_counter() - t0)
                if not ran.wait(60):
                    raise RuntimeError(f"execution {ex.id} did not start within 60 s")
                starts.append(first_line.pop(ex.id) - t0)
                engine.wait("t", ex.id, timeout=60)
        finally:
            engine.close()
    finally:
        if server is not None:
            server.drop_all()

    def pct(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e6

    return [f"one caller triggering in a row on an idle engine, {len(acks)} executions, {args.workers} workers:",
            f"  trigger's answer          p50 {pct(acks, 0.5):8.0f} us   p90 {pct(acks, 0.9):8.0f} us",
            f"  trigger to job's 1st line p50 {pct(starts, 0.5):8.0f} us   p90 {pct(starts, 0.9):8.0f} us"]


def probe_turn(args: argparse.Namespace) -> list[str]:
    """A counter actor's turns and an executor's loop driven from one thread (``turns.py``)."""
    from . import turns

    return turns.lines(args.workdir, executions=args.executions)


def probe_gil(args: argparse.Namespace) -> list[str]:
    """A plyvel WriteBatch.put releases and retakes the GIL; with other Python threads runnable,
    retaking it costs a thread switch."""
    import plyvel

    db = plyvel.DB(os.path.join(args.workdir, "gil"), create_if_missing=True)
    key, value = b"T\x00task\x00x" + bytes(8), b"S" + b"0" * 26 + b"\x00" + b"{}" * 60
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    def measure(label: str, n: int = 20_000) -> str:
        batch = db.write_batch()
        t0 = time.perf_counter()
        for _ in range(n):
            batch.put(key, value)
        dt = time.perf_counter() - t0
        return f"  {label:36s} WriteBatch.put {1e6 * dt / n:7.2f} us per put"

    lines = ["plyvel WriteBatch.put (drops the GIL for each put):", measure("no other Python thread")]
    for busy in (1, 4, 16):
        stop.clear()
        threads = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        lines.append(measure(f"{busy} CPU-busy Python thread(s)", 2_000))
        stop.set()
        for t in threads:
            t.join()
    db.close()
    return lines


def probe_nodes(args: argparse.Namespace) -> list[str]:
    """The bench's ``nodes`` figure (64 callers on one task, on one node, then spread over three),
    each node a child process with its writer and counter actor timed (``nodes_child``): where a
    turn's wall time goes (its start, which waits for the task's lock while another node holds it;
    the counter actor's handling; the statements and the commit), how much each turn carries, and the
    CPU per ack of the nodes and of the whole server."""
    from .nodes import measure_round
    from .postgres import Server

    if not args.backend:
        raise SystemExit("probe nodes needs --backend URL (a PostgreSQL server)")
    server = Server(args.backend)
    opts = argparse.Namespace(duration=args.duration, warmup=0.5, workers=args.workers,
                              counter_actors=args.counter_actors, backend=args.backend)
    postmaster = _postmaster(args.backend)
    lines = [] if postmaster else ["(the server's processes cannot be read here: no server CPU figures)"]
    try:
        for r in range(args.rounds):
            for nodes in (1, 3):
                path = server.database(f"nodes_{nodes}n_r{r}")
                cpu0 = _tree_cpu(postmaster)
                res = measure_round(path, nodes, opts, module="taskengine.tools.bench.probe")
                cpu1 = _tree_cpu(postmaster)
                lines += _nodes_lines(r, nodes, res, None if cpu0 is None or cpu1 is None else cpu1 - cpu0)
    finally:
        server.drop_all()
    return lines


def _nodes_lines(r: int, nodes: int, res: dict[str, Any], server_cpu: float | None) -> list[str]:
    ops = sum(n["ops"] for n in res["nodes"])
    lines = [f"round {r}, {nodes} node(s): {res['rate']:.0f} acks/s, nodes' CPU {res['cpu_us_per_op']:.1f} us per ack"
             + ("" if server_cpu is None or not ops else
                f", the server's {1e6 * server_cpu / ops:.1f} us per ack (every process, the window and around it)")]
    for k, n in enumerate(res["nodes"]):
        s, t = n["stats"], n["times"]
        transactions = max(1, s.get("pg_transactions", 0))
        turns = max(1, s.get("turns", 0))
        begun = max(1, s.get("pg_begin", 0))

        def us(key: str, per: int, t: dict[str, float] = t) -> float:
            return 1e6 * t.get(key, 0.0) / per

        rate = n["ops"] / max(n["seconds"], 1e-9)
        lines.append(
            f"  node {k}: {rate:.0f} acks/s, {s.get('pg_changes', 0) / transactions:.1f} changes per transaction, "
            f"{s.get('pg_stamped', 0)} of {s.get('pg_transactions', 0)} stamped (the task locked in the write); a "
            f"turn {us('turn', turns):.0f} us: handling {us('handling', turns):.0f}, the write "
            f"{us('pg_transaction', transactions):.0f} (statements, notification and commit as one query "
            f"{us('pg_statements_time', transactions):.0f} of it in unstamped ones), after the write (answers) "
            f"{(us('commit_total', turns) - us('pg_write', turns)):.0f}; an unstamped turn's start (round trip "
            f"and the wait for the task's lock) {us('pg_begin', begun):.0f}; "
            f"process CPU {1e6 * n['cpu_seconds'] / max(1, n['ops']):.1f} us per ack")
    return lines


def _postmaster(url: str) -> int | None:
    """The pid of the server's postmaster, if it runs on this machine and its files can be read."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        with open(os.path.join(row[0] if row else "", "postmaster.pid")) as f:
            return int(f.readline())
    except (psycopg.Error, OSError, ValueError):
        return None


def _tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of ``pid``, of its children that exited (reaped) and of those alive."""
    if pid is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == pid:
                total += sum(int(x) for x in fields[11:15]) / tick  # its own and its reaped children's
            elif int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return None
    return total


def nodes_child(params: dict[str, Any]) -> dict[str, Any]:
    """One node of ``probe nodes``: the bench's node with its writer and counter actor timed."""
    from taskengine.actors import turn as at
    from taskengine.storage import pg_writer

    from .nodes import child

    _instrument_postgres()
    _instrument_turns()
    _time_method(pg_writer.PostgresWriter, "write", "pg_write")
    _time_method(pg_writer.PostgresWriter, "write_stamped", "pg_write")
    # handling: from the end of the turn's start to its write; answering: after the write
    clock = time.perf_counter
    mark = threading.local()
    begin, commit = at.TurnActor._begin, at.TurnActor._commit

    def timed_begin(self: Any, batch: Any, stamp: bool) -> None:
        begin(self, batch, stamp)
        mark.t = clock()

    def timed_commit(self: Any, turn: Any) -> bool:
        t0 = clock()
        start = getattr(mark, "t", t0)
        try:
            return commit(self, turn)
        finally:
            with _lock:
                _times["handling"] += t0 - start
                _times["commit_total"] += clock() - t0

    at.TurnActor._begin = timed_begin  # type: ignore[method-assign]
    at.TurnActor._commit = timed_commit  # type: ignore[method-assign]
    result = child(params)
    with _lock:
        result["stats"], result["times"] = dict(_stats), dict(_times)
    return result


PROBES: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "acks": probe_acks, "e2e": probe_e2e, "floor": probe_floor, "gil": probe_gil, "turn": probe_turn,
    "nodes": probe_nodes, "start": probe_start,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:  # a node of probe nodes (see nodes.py's child)
        import json

        sys.stdout.write(json.dumps(nodes_child(json.loads(argv[1]))) + "\n")
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m taskengine.tools.bench.probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("probe", choices=sorted(PROBES))
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--counter-actors", type=int, default=None, help="(default: the engine's default)")
    parser.add_argument("--workers", type=int, default=None, help="executors (default: the engine's default)")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="nodes: rounds of one node and of three")
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--backend", metavar="URL",
                        help="acks, e2e, start: on this PostgreSQL server (a database of its own, dropped after; "
                        "acks and e2e time the writer's transactions)")
    parser.add_argument("--burst", action="store_true",
                        help="e2e: 64 callers trigger every execution at once (the bench's e2e), not the soak driver")
    parser.add_argument("--cprofile", action="store_true",
                        help="e2e: cProfile inside the actors (slows the engine down: for proportions, not rates)")
    parser.add_argument("--no-directory-watch", action="store_true",
                        help="acks: skip the directory check before each acknowledgement (to measure its cost)")
    args = parser.parse_args(argv)
    from taskengine.actors.engine import default_counter_actors, default_workers

    if args.workers is None:
        args.workers = default_workers(args.backend or "")
    if args.counter_actors is None:
        args.counter_actors = default_counter_actors(args.backend or "")
    args.workdir = tempfile.mkdtemp(prefix="taskengine-probe-")
    try:
        for line in PROBES[args.probe](args):
            print(line)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    sys.exit(main())
