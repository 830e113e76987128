"""Running a stress workload, in process or in a child process that is SIGKILLed and restarted.

:func:`execute` is the library entry point (no printing: progress goes to a callback, the
result is a :class:`taskengine.tools.stress.report.StressReport`). A user's mistake (a locked database,
a path that is a file, a database of another program) raises
:class:`taskengine.tools.common.ToolError` with ``EXIT_USAGE`` before any workload runs.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import attrs

from taskengine import Engine
from taskengine.actors.engine import default_counter_actors
from taskengine.actors.errors import EngineError, StorageLocked
from taskengine.actors.jobs import Job
from taskengine.storage import is_url, shown

from .. import replay
from ..common import EXIT_USAGE, ToolError, locked_message, open_database
from .check import Ledger, final_check
from .diagnose import Unfinished
from .markers import check_marks, marked_jobs, marker_path
from .report import Latency, StressReport
from .workload import (
    JOBS,
    NODE_ID,
    Control,
    HidePlannedFailures,
    Settings,
    TaskBook,
    Workload,
    WorkloadError,
    ensure_tasks,
    task_ids,
)

log = logging.getLogger(__name__)

#: the marker file of the final check's engine, which runs what the nodes left queued
FINAL_INSTANCE = "stress-check.final"


@attrs.frozen
class StressConfig:
    db: str
    clients: int = 48
    tasks: int = 16
    #: stop after this many acknowledged executions ...
    count: int | None = None
    #: ... or after this many seconds (one of the two)
    duration: float | None = 10.0
    #: mean seconds between SIGKILLs of the engine's process; None runs in process
    crash_every: float | None = None
    workers: int = 4
    #: the engine's default for ``db`` unless given (two lanes on PostgreSQL: what a node runs)
    counter_actors: int = attrs.field(
        default=attrs.Factory(lambda cfg: default_counter_actors(cfg.db), takes_self=True))
    seed: int = 0
    settings: Settings = attrs.Factory(Settings)
    #: the final check gives up waiting for executions after this many seconds
    final_timeout: float = 120.0
    #: seconds a graceful stop (clients, then engine.close) may take
    stop_timeout: float = 60.0
    #: share of kills aimed at the child's start-up (engine open and recovery)
    early_kill_share: float = 0.1
    #: run this many node processes on one PostgreSQL database (taskengine.tools.stress.nodes)
    nodes: int | None = None
    #: each node's lease, seconds (a node paused longer loses it)
    lease: float = 2.0
    #: node mode: the share of chaos events that pause a node past its lease (the others kill one)
    pause_share: float = 0.3
    #: node mode: each node place in a network namespace of its own; half the pauses then cut the
    #: node off the network instead of stopping it (taskengine.tools.stress.netns; root only)
    netns: bool = False
    #: with ``netns``: the share of pauses that are cuts
    cut_share: float = 0.5
    #: the workload's engines' backpressure bound (Engine.open(max_queued=...)); None: none
    max_queued: int | None = None
    #: the workload's engines' retention policy (Engine.open(keep_last=...)); None: none
    keep_last: int | None = None


@attrs.frozen
class Progress:
    elapsed: float
    acknowledged: int
    crashes: int
    violations: int

    @property
    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


def reached(cfg: StressConfig, ledger: Ledger, started: float) -> bool:
    """Has a run begun at ``started`` (monotonic) reached its count or duration?"""
    if cfg.count is not None:
        return ledger.acknowledged >= cfg.count
    assert cfg.duration is not None
    return time.monotonic() - started >= cfg.duration


def _open_engine(cfg: StressConfig, jobs: Mapping[str, Job] = JOBS, node_id: str | None = None,
                 workload: bool = False) -> Engine:
    """The driver's own engine (setting up, the final check); in node mode a node of its own.
    ``workload``: it runs the workload too (in process), with the run's backpressure bound."""
    kwargs: dict[str, Any] = {"node_id": NODE_ID}
    if node_id is not None and cfg.nodes is not None:
        kwargs = {"node_id": node_id, "node_lease": cfg.lease}
    if workload and cfg.max_queued is not None:
        kwargs["max_queued"] = cfg.max_queued
    if workload and cfg.keep_last is not None:
        kwargs["keep_last"] = cfg.keep_last
    try:
        return Engine.open(cfg.db, jobs=jobs, workers=cfg.workers, counter_actors=cfg.counter_actors, **kwargs)
    except StorageLocked:
        raise ToolError(locked_message(shown(cfg.db)), EXIT_USAGE) from None
    except EngineError as e:  # NotADatabase, UnknownSchema, an unreadable directory
        raise ToolError(str(e), EXIT_USAGE) from None


def execute(
    cfg: StressConfig,
    on_progress: ProgressCallback | None = None,
    tick: float = 0.5,
    after_workload: Callable[[], None] | None = None,
) -> StressReport:
    """Run the workload, check every acknowledgement on a reopened engine, run the replay
    check, and return the report. ``after_workload`` is called between the workload's end and
    the checks (a harness that restarts the server waits there for a restart under way)."""
    with HidePlannedFailures():
        if cfg.nodes is not None:
            with tempfile.TemporaryDirectory(prefix="taskengine-stress-nodes-") as workdir:
                return _execute(cfg, on_progress, tick, after_workload, workdir)
        return _execute(cfg, on_progress, tick, after_workload, None)


def _execute(cfg: StressConfig, on_progress: ProgressCallback | None, tick: float,
             after_workload: Callable[[], None] | None, workdir: str | None) -> StressReport:
    ids = task_ids(cfg.tasks)
    engine = _open_engine(cfg, node_id="stress-setup", workload=not cfg.nodes and not cfg.crash_every)
    try:
        ensure_tasks(engine, ids)
    except WorkloadError as e:
        engine.close()
        raise ToolError(str(e), EXIT_USAGE) from None
    ledger = Ledger(ids)
    report = StressReport(
        db=shown(cfg.db),  # a URL without its password
        mode="nodes" if cfg.nodes else "crash" if cfg.crash_every else "in-process",
        clients=cfg.clients,
        tasks=cfg.tasks,
        workers=cfg.workers,
        counter_actors=cfg.counter_actors,
        seed=cfg.seed,
        crash_every=cfg.crash_every,
        max_queued=cfg.max_queued,
        keep_last=cfg.keep_last,
    )
    from .nodes import NodeSupervisor

    supervisor: NodeSupervisor | None = None
    final_jobs: Mapping[str, Job] = JOBS
    if cfg.nodes is not None:
        assert workdir is not None
        engine.close()
        supervisor = NodeSupervisor(cfg, ledger, workdir, on_progress, tick)
        report.elapsed = supervisor.run()
        report.nodes = supervisor.counts
        report.crashes = supervisor.counts.kills
        report.engine_log_lines, report.engine_log = supervisor.log_lines, supervisor.log_sample
        final_jobs = marked_jobs(marker_path(supervisor.markers, FINAL_INSTANCE), FINAL_INSTANCE)
    elif cfg.crash_every:
        engine.close()
        crasher = _Supervisor(cfg, ledger, on_progress, tick)
        report.elapsed, report.crashes, report.startup_crashes = crasher.run()
        report.engine_log_lines, report.engine_log = crasher.log_lines, crasher.log_sample
        report.crash_replays = crasher.crash_replays
    else:
        report.elapsed = _run_in_process(cfg, engine, ids, ledger, on_progress, tick)
    if after_workload is not None:
        after_workload()
    # what the last stop (or crash) left unfinished for the reopened engine to recover
    with open_database(cfg.db) as db:
        live = sum(1 for _ in db.iter_live())
    # the final check: the engine once more, with the jobs registered
    engine = _open_engine(cfg, final_jobs, node_id="stress-check")
    unfinished = Unfinished(cfg.db, None if supervisor is None else supervisor.history)
    try:
        checked = final_check(engine, ledger, ids, cfg.final_timeout, crashes=bool(cfg.crash_every),
                              diagnose=unfinished)
        report.final = attrs.evolve(checked, live_at_reopen=live)
    finally:
        engine.close()
    report.diagnostics = unfinished.render()
    _replay(cfg.db, ids, report, ledger)
    if supervisor is not None:
        with open_database(cfg.db) as db:
            report.markers = check_marks(db, supervisor.markers, supervisor.killed, supervisor.paused,
                                         ledger.add_violation, supervisor.cut)
    report.acknowledged = ledger.acknowledged
    report.acknowledged_nonblocking = ledger.acknowledged_nonblocking
    report.acknowledged_blocking = ledger.acknowledged_blocking
    report.acknowledged_blocking_timed_out = ledger.acknowledged_blocking_timed_out
    report.acknowledged_by_repeat = ledger.acknowledged_by_repeat
    report.ack_latency = Latency.of(ledger.ack_latency)
    report.blocking_latency = Latency.of(ledger.blocking_latency)
    ledger.throughput.extend_to(report.elapsed - 1e-9)
    report.throughput = ledger.throughput.to_json()
    report.events = {k: list(v.items) for k, v in ledger.events.items()}
    report.deletions = ledger.deletions
    report.idempotent_retries = ledger.retries
    report.rejected = ledger.rejected
    report.queue_full = ledger.queue_full
    report.blocking_timeouts = ledger.blocking_timeouts
    report.violations = ledger.violations
    return report


def _replay(db_path: str, ids: list[str], report: StressReport, ledger: Ledger) -> None:
    with open_database(db_path) as db:
        result = replay.check(db)
    totals = result.totals()
    report.replay = {"ok": result.ok, **totals, "elapsed": round(result.elapsed, 3)}
    ledger.add_replay(result, "replay: ")
    ours = set(ids)  # other tasks of the database may wait for jobs this run does not have
    live = [(t.task_id, t.pending, t.running) for t in result.tasks if t.task_id in ours and (t.pending or t.running)]
    for task_id, pending, running in live:
        ledger.add_violation(
            f"replay: task {task_id!r} has {pending} PENDING and {running} RUNNING executions left "
            "after the final check waited for every one"
        )


def _run_in_process(
    cfg: StressConfig,
    engine: Engine,
    ids: list[str],
    ledger: Ledger,
    on_progress: ProgressCallback | None,
    tick: float,
) -> float:
    control = Control(cfg.count)
    workload = Workload(engine, ids, cfg.clients, cfg.seed, ledger.ingest, control, TaskBook(ids), cfg.settings)
    started = time.monotonic()
    ledger.begin()
    end = None if cfg.duration is None else started + cfg.duration
    errors = _ErrorLog(ledger)
    try:
        workload.start()
        while not control.done.is_set():
            now = time.monotonic()
            if end is not None and now >= end:
                break
            control.done.wait(tick if end is None else min(tick, end - now))
            if on_progress is not None:
                on_progress(Progress(time.monotonic() - started, ledger.acknowledged, 0, ledger.violation_count))
    finally:
        for problem in workload.stop(cfg.stop_timeout, close_engine=True):
            ledger.add_violation(problem)
        elapsed = time.monotonic() - started
        engine.close()  # idempotent
        errors.detach()
    return elapsed


class _ErrorLog(logging.Handler):
    """In process: every ERROR or CRITICAL record of the engine's loggers is a violation (the
    engine logs those only for inconsistencies and failures it cannot answer to a caller)."""

    LOGGERS = ("taskengine.actors", "taskengine.storage")

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(logging.ERROR)
        self.ledger = ledger
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.ledger.add_violation(f"the engine logged an error: {record.levelname} {record.getMessage()}")

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


class Child:
    """One run of ``taskengine.tools.stress.child``; a thread feeds its lines to the ledger."""

    def __init__(
        self,
        cfg: StressConfig,
        ledger: Ledger,
        seed: int,
        stderr: IO[bytes],
        wake: threading.Event,
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        db: str | None = None,
    ) -> None:
        self.ledger = ledger
        self.wake = wake
        self.count = cfg.count
        self.ready_at: float | None = None
        #: its node's epoch, as it said when ready (PostgreSQL)
        self.epoch: int | None = None
        self.closed = False
        self.error: str | None = None
        #: the first write refusal its clients met (a node fenced after it lost its lease)
        self.refused: str | None = None
        self.cut_lines = 0
        db = db or cfg.db
        cmd = [
            *prefix, sys.executable, "-m", "taskengine.tools.stress.child",
            "--db", db if is_url(db) else os.path.abspath(db),
            "--clients", str(cfg.clients),
            "--tasks", str(cfg.tasks),
            "--workers", str(cfg.workers),
            "--counter-actors", str(cfg.counter_actors),
            "--seed", str(seed),
            "--generations", json.dumps(ledger.base_generations(), separators=(",", ":")),
            *([] if cfg.max_queued is None else ["--max-queued", str(cfg.max_queued)]),
            *([] if cfg.keep_last is None else ["--keep-last", str(cfg.keep_last)]),
            *extra,
        ]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        self.reader = threading.Thread(target=self._read, name="stress-child-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                if not raw.endswith(b"\n"):
                    self.cut_lines += 1  # the kill cut it: never acknowledged to anyone
                    break
                try:
                    ev = json.loads(raw)
                except ValueError:
                    self.ledger.add_violation(f"stress child printed an unreadable line: {raw[:200]!r}")
                    continue
                kind = ev.get("ev")
                if kind == "ready":
                    self.ready_at = time.monotonic()
                    self.epoch = ev.get("epoch")
                    self.ledger.mark("ready")
                    self.wake.set()
                elif kind == "closed":
                    self.closed = True
                elif kind == "error":
                    self.error = str(ev.get("msg"))
                elif kind == "refused":
                    if self.refused is None:
                        self.refused = str(ev.get("msg"))
                    self.wake.set()
                else:
                    self.ledger.ingest(ev)
                    if self.count is not None and kind == "ack" and self.ledger.acknowledged >= self.count:
                        self.wake.set()
        finally:
            self.proc.stdout.close()
            self.wake.set()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.reader.is_alive()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait()
        self.reader.join()
        self.close_stdin()

    def stop(self, timeout: float) -> bool:
        """Ask for a graceful stop (end of stdin); False if it did not stop in time (then killed)."""
        self.close_stdin()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        self.reader.join()
        return True

    def close_stdin(self) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except OSError:
            pass


def tail(f: IO[bytes], lines: int = 3) -> str:
    f.flush()
    f.seek(0)
    last = collections.deque((ln.decode(errors="replace").rstrip() for ln in f), maxlen=lines)
    f.seek(0, os.SEEK_END)
    return " | ".join(x for x in last if x) or "nothing on stderr"


def read_log(f: IO[bytes], keep: int = 10) -> tuple[int, list[str], list[str]]:
    """The children's stderr: line count, the first ``keep`` distinct lines, and every line of
    an ERROR or CRITICAL log record (the engine logs those only for inconsistencies)."""
    f.flush()
    f.seek(0)
    count, sample, errors = 0, list[str](), list[str]()
    for raw in f:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        count += 1
        if len(sample) < keep and line not in sample:
            sample.append(line)
        if line.startswith(("stress-child: ERROR", "stress-child: CRITICAL")):
            errors.append(line.removeprefix("stress-child: "))
    return count, sample, errors


class _Supervisor:
    """Starts the child, SIGKILLs it at random moments (uniform in 0.5..1.5 x crash_every after
    it reported ready, a share of them during its start-up instead), restarts it on the same
    database, and stops it gracefully once the count or duration is reached."""

    def __init__(self, cfg: StressConfig, ledger: Ledger, on_progress: ProgressCallback | None, tick: float) -> None:
        assert cfg.crash_every is not None
        self.cfg = cfg
        self.every = cfg.crash_every
        self.ledger = ledger
        self.on_progress = on_progress
        self.tick = tick
        self.rng = random.Random(cfg.seed)
        self.crashes = 0
        #: kills that hit the child before it reported ready (engine open, recovery)
        self.startup_crashes = 0
        self.started = 0.0
        self.wake = threading.Event()
        #: what the children wrote on stderr (engine warnings): how many lines, the first few
        self.log_lines = 0
        self.log_sample: list[str] = []
        #: replay checks run on the files a kill left behind
        self.crash_replays = 0

    def finished(self) -> bool:
        return reached(self.cfg, self.ledger, self.started)

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(
                Progress(time.monotonic() - self.started, self.ledger.acknowledged, self.crashes,
                         self.ledger.violation_count)
            )

    def run(self) -> tuple[float, int, int]:
        self.started = time.monotonic()
        self.ledger.begin()
        with tempfile.TemporaryFile(prefix="taskengine-stress-child-") as stderr:
            runs = 0
            while not self.finished():
                child = Child(self.cfg, self.ledger, self.cfg.seed * 7919 + runs, stderr, self.wake)
                runs += 1
                try:
                    if not self._supervise(child, stderr):
                        break
                finally:
                    if child.proc.poll() is None:
                        child.kill()
            elapsed = time.monotonic() - self.started
            self.log_lines, self.log_sample, errors = read_log(stderr)
        for line in errors:
            self.ledger.add_violation(f"the engine logged an error: {line}")
        return elapsed, self.crashes, self.startup_crashes

    def _supervise(self, child: Child, stderr: IO[bytes]) -> bool:
        """Run one child until it is killed (True: go on) or stopped / failed (False)."""
        kill_at: float | None = None
        if self.rng.random() < self.cfg.early_kill_share:
            kill_at = child.started_at + self.rng.uniform(0.05, 0.6)
        next_tick = time.monotonic() + self.tick
        while True:
            self.wake.clear()  # before looking, so a wake-up while we look is not lost
            now = time.monotonic()
            if not child.alive():
                child.proc.wait()
                child.reader.join()
                why = child.error or f"exit status {child.proc.returncode}; {tail(stderr)}"
                self.ledger.add_violation(f"the stress child stopped by itself: {why}")
                return False
            if self.finished():
                self._stop(child)
                return False
            if kill_at is None and child.ready_at is not None:
                kill_at = child.ready_at + self.rng.uniform(0.5, 1.5) * self.every
            if kill_at is not None and now >= kill_at:
                if child.ready_at is None:
                    self.startup_crashes += 1
                child.kill()
                self.ledger.mark("killed")
                self.crashes += 1
                self._replay_after_crash()
                return True
            if now >= next_tick:
                self._progress()
                next_tick = now + self.tick
            waits = [next_tick - now]
            if kill_at is not None:
                waits.append(kill_at - now)
            if self.cfg.duration is not None:
                waits.append(self.started + self.cfg.duration - now)
            self.wake.wait(max(0.001, min(waits)))

    def _replay_after_crash(self) -> None:
        """The guarantees hold at every moment, so also on the files a SIGKILL left behind: run the
        replay check on them before the next process opens (and recovers) the database."""
        try:
            with open_database(self.cfg.db) as db:
                result = replay.check(db)
        except ToolError as e:
            self.ledger.add_violation(f"after crash {self.crashes}: the database cannot be opened: {e.message}")
            return
        self.crash_replays += 1
        self.ledger.add_replay(result, f"after crash {self.crashes}: replay: ")

    def _stop(self, child: Child) -> None:
        if not child.stop(self.cfg.stop_timeout):
            self.ledger.add_violation(
                f"the stress child did not stop within {self.cfg.stop_timeout:.0f} s of being asked "
                "(clients stuck or engine.close() hung); it was killed"
            )
        elif child.proc.returncode != 0 or not child.closed:
            self.ledger.add_violation(
                f"the stress child did not close cleanly (exit status {child.proc.returncode})"
            )
        self._progress()


__all__ = ["Progress", "StressConfig", "execute"]
