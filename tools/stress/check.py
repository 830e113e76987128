"""What a stress run remembers, and the final check against a reopened engine.

:class:`Ledger` takes the workload's events (``taskengine.tools.stress.workload``) — straight from the
clients in process, or parsed from the child's JSON lines in crash mode — and keeps every
execution acknowledged to a client with its index, the deletions seen, the latencies and
the violations, and keeps its figures in bounded memory (latency histograms, a rate series).
:func:`final_check` then holds a reopened engine to every acknowledgement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from taskengine import Engine, Execution, ExecutionStatus
from taskengine.actors.errors import EngineError, ExecutionNotFound, ExecutionTimeout, TaskNotFound

from ..common import Bounded
from ..histogram import Histogram, RateSeries
from ..invariants import Report
from .report import FinalCheck
from .workload import INTERRUPTED_PREFIX, PLANNED_FAILURE, Event, check_outcome

#: violations kept; beyond this they are only counted
MAX_VIOLATIONS = 1000
#: crash and restart times kept for the report's picture; beyond this they are only counted
MAX_EVENTS = 2000


@attrs.define
class Ack:
    """An execution acknowledged to a client."""

    task: str
    #: the task's generation when it was triggered (see taskengine.tools.stress.workload)
    gen: int
    id: str
    index: int
    blocking: bool
    key: str | None
    #: whether the trigger asked the job to fail (None: unknown)
    fail: bool | None


class Ledger:
    """Thread-safe record of a run's events."""

    def __init__(self, tasks: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self.acks: dict[str, Ack] = {}
        #: per task: deletions begun (``deleting`` events), over the whole run
        self.deletions_started: dict[str, int] = dict.fromkeys(tasks, 0)
        self.deletions = 0
        self.ack_latency = Histogram()
        self.blocking_latency = Histogram()
        #: new executions acknowledged, by time since :meth:`begin`
        self.throughput = RateSeries()
        #: seconds since :meth:`begin` of each SIGKILL and of each time an engine was ready
        self.events: dict[str, Bounded[float]] = {"killed": Bounded(MAX_EVENTS), "ready": Bounded(MAX_EVENTS)}
        self._t0 = time.monotonic()
        # every acknowledged execution is in exactly one of these four
        self.acknowledged_nonblocking = 0
        self.acknowledged_blocking = 0
        #: blocking triggers that timed out on the client after their execution got an index
        self.acknowledged_blocking_timed_out = 0
        #: executions first made by an idempotent repeat (its first trigger got no answer)
        self.acknowledged_by_repeat = 0
        self.retries = 0
        self.rejected = 0
        self.queue_full = 0
        self.blocking_timeouts = 0
        self._violations: Bounded[str] = Bounded(MAX_VIOLATIONS)

    # -- events --------------------------------------------------------------------------

    def begin(self) -> None:
        """The workload starts now: times of the series and events count from here."""
        with self._lock:
            self._t0 = time.monotonic()

    def mark(self, what: str) -> None:
        """Record that the engine's process was ``killed`` or an engine is ``ready``, now."""
        with self._lock:
            self.events[what].add(round(time.monotonic() - self._t0, 3))

    def ingest(self, ev: Event) -> None:
        kind = ev.get("ev")
        with self._lock:
            if kind == "ack":
                self._ack(ev)
            elif kind == "deleting":
                task = ev["t"]
                n = int(ev["n"])
                if n > self.deletions_started.get(task, 0):
                    self.deletions += n - self.deletions_started.get(task, 0)
                    self.deletions_started[task] = n
            elif kind == "retry":
                self.retries += 1
            elif kind == "rejected":
                self.rejected += 1
            elif kind == "queue_full":
                self.queue_full += 1
            elif kind == "blocking_timeout":
                self.blocking_timeouts += 1
            elif kind == "violation":
                self._add(str(ev.get("msg")))

    def _ack(self, ev: Event) -> None:
        eid, index, task = ev["id"], ev["i"], ev["t"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            self._add(f"execution {eid} of {task!r} acknowledged with a bad index {index!r}")
            return
        seen = self.acks.get(eid)
        if seen is not None:
            if seen.task != task or seen.index != index:
                self._add(
                    f"execution {eid} acknowledged as index {seen.index} of {seen.task!r} and later "
                    f"as index {index} of {task!r}"
                )
            return
        self.acks[eid] = Ack(task, int(ev["g"]), eid, index, bool(ev["b"]), ev.get("k"), ev.get("f"))
        self.throughput.add(time.monotonic() - self._t0)
        if ev.get("retry"):
            self.acknowledged_by_repeat += 1
        elif ev.get("timeout"):
            self.acknowledged_blocking_timed_out += 1
        elif ev["b"]:
            self.acknowledged_blocking += 1
            self.blocking_latency.add(float(ev["lat"]))
        else:
            self.acknowledged_nonblocking += 1
            self.ack_latency.add(float(ev["lat"]))

    def add_violation(self, msg: str) -> None:
        with self._lock:
            self._add(msg)

    def add_replay(self, report: Report, prefix: str) -> None:
        """The violations of a replay check, each after ``prefix``."""
        for v in report.violations:
            self.add_violation(f"{prefix}{v}")
        if report.violations_omitted:
            self.add_violation(f"{prefix}... and {report.violations_omitted} more")

    def _add(self, msg: str) -> None:
        self._violations.add(msg)

    # -- reading -------------------------------------------------------------------------

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self.acks)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            out = list(self._violations.items)
            if self._violations.omitted:
                out.append(f"... and {self._violations.omitted} more violations not kept")
            return out

    @property
    def violation_count(self) -> int:
        with self._lock:
            return len(self._violations)

    def base_generations(self) -> dict[str, int]:
        """Deletions begun per task: where a restarted child's counts continue from (a deletion
        cut short by a crash counts as done: the next process sees its outcome, whichever)."""
        with self._lock:
            return dict(self.deletions_started)

    def exempt(self, ack: Ack) -> bool:
        """May the acknowledged execution be gone? Only if its task's deletion began after it
        was triggered."""
        return self.deletions_started.get(ack.task, 0) > ack.gen


#: what the final check calls for each execution it gives up waiting for: (task id, execution id,
#: the engine's record read then or None, seconds waited for it, seconds since the check began)
Diagnose = Callable[[str, str, "Execution | None", float, float], None]


def final_check(
    engine: Engine, ledger: Ledger, tasks: list[str], timeout: float, *, crashes: bool = True,
    diagnose: Diagnose | None = None,
) -> FinalCheck:
    """Hold the engine to every acknowledged execution: it exists with the same index and
    finishes (SUCCESS, planned FAILED, or FAILED as interrupted), unless its task was deleted
    after it was acknowledged (then it may be gone, and if present keeps its index). Repeats
    every acknowledged idempotency key (same execution expected). Then waits for every other
    unfinished execution of the tasks, so nothing is left live. Violations go to the ledger.

    Without ``crashes`` (an in-process run, closed with ``engine.close()``, which waits for
    running jobs) an execution finished as interrupted is a violation too. The waits share one
    deadline, ``timeout`` seconds, renewed while the engine goes on finishing executions (see
    :class:`_Deadline`). ``diagnose`` is told of each execution still unfinished when the
    check's time is up, at that moment (a message says how long the check waited for that
    execution itself), or when the check's engine cannot wait for it (it stopped writing: on a
    loaded machine it can lose its lease too), which is then a violation, not an exception out
    of the check."""
    deadline = _Deadline(engine, timeout)
    started = deadline.started
    gave_up = _GaveUp(deadline, diagnose)
    counts: dict[str, int] = dict.fromkeys(
        ("checked", "success", "failed", "interrupted", "deleted", "pruned", "waited", "idempotent_rechecked"), 0
    )
    pruned: set[str] = set()
    violation = ledger.add_violation
    acks = sorted(ledger.acks.values(), key=lambda a: (a.task, a.index))
    by_index: dict[tuple[str, int], str] = {}
    for ack in acks:
        counts["checked"] += 1
        exempt = ledger.exempt(ack)
        where = f"execution {ack.id} of {ack.task!r} (acknowledged index {ack.index})"
        began = time.monotonic()  # reset as its wait begins
        if not exempt:
            other = by_index.setdefault((ack.task, ack.index), ack.id)
            if other != ack.id:
                violation(f"{where}: index {ack.index} was also acknowledged to execution {other}")
        try:
            ex = engine.get_execution(ack.task, ack.id)
            if ex.index != ack.index:
                violation(f"{where}: stored with index {ex.index}")
            if not ex.status.is_finished:
                counts["waited"] += 1
                began = time.monotonic()
                ex = deadline.wait(ack.task, ack.id)
                if ex.index != ack.index:
                    violation(f"{where}: finished with index {ex.index}")
        except (TaskNotFound, ExecutionNotFound) as e:
            if exempt:
                counts["deleted"] += 1
            elif isinstance(e, ExecutionNotFound) and pruned_past(engine, ack.task, ack.index):
                counts["pruned"] += 1  # retention (--keep-last) removed it, once it had finished
                pruned.add(ack.id)
            else:
                violation(f"{where}: lost after the run ({e})")
            continue
        except ExecutionTimeout:
            violation(f"{where}: still unfinished {deadline.spent():.0f} s after the engine was reopened "
                      f"({gave_up(ack.task, ack.id, began)})")
            continue
        except EngineError as e:  # the check's own engine stopped (it lost its lease on a loaded machine)
            violation(f"{where}: unfinished, and the check's engine could not wait for it: {type(e).__name__}: "
                      f"{e} ({gave_up(ack.task, ack.id, began)})")
            continue
        if ex.status is ExecutionStatus.CANCELLED:
            if exempt:
                counts["deleted"] += 1
            else:
                violation(f"{where}: CANCELLED although its task was not deleted ({ex.error})")
            continue
        problem = check_outcome(ex, ack.fail)
        if problem:
            violation(f"{where}: {problem}")
        elif ex.status is ExecutionStatus.SUCCESS:
            counts["success"] += 1
        elif (ex.error or "").startswith(INTERRUPTED_PREFIX):
            counts["interrupted"] += 1
            if not crashes:
                violation(f"{where}: interrupted although the engine was never killed ({ex.error})")
        elif (ex.error or "").startswith(PLANNED_FAILURE):
            counts["failed"] += 1
    # idempotency keys survive restarts: a repeat answers the first execution, never a new one
    for ack in acks:
        if ack.key is None or ledger.exempt(ack) or ack.id in pruned:
            continue  # a pruned execution's key is forgotten with it
        try:
            again = engine.trigger(ack.task, {"recheck": True}, idempotency_key=ack.key)
        except EngineError as e:
            violation(f"repeating idempotency key {ack.key!r} of {ack.task!r} failed: {type(e).__name__}: {e}")
            continue
        counts["idempotent_rechecked"] += 1
        if again.id != ack.id or again.index != ack.index:
            violation(
                f"idempotency key {ack.key!r} of {ack.task!r}: acknowledged execution {ack.id} (index "
                f"{ack.index}), a repeat after the run answered {again.id} (index {again.index})"
            )
    unacked = _finish_live(engine, tasks, gave_up, violation)
    return FinalCheck(
        **counts, unacknowledged_waited=unacked, seconds=time.monotonic() - started
    )


def pruned_past(engine: Engine, task: str, index: int) -> bool:
    """Is ``index`` below the task's prune mark (retention removed it; it had finished)? A task
    that is gone has no mark to pass (a deletion explains the execution, or nothing does). Any
    other error propagates: an engine closed under a client's read (the workload stopping) is no
    answer, and taken as "not pruned" it would report a pruned execution as vanished."""
    try:
        return engine.get_task(task).prune_mark > index
    except TaskNotFound:
        return False


class _Deadline:
    """The final check's time: ``timeout`` seconds, renewed for another ``timeout`` each time it
    runs out while the engine has finished executions since the last renewal (a slow engine on a
    loaded machine is still working through what the run left; a stuck one finishes nothing),
    and never past ``RENEWALS`` renewals, so the check stays bounded."""

    RENEWALS = 4

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.engine = engine
        self.timeout = timeout
        self.started = time.monotonic()
        self.at = self.started + timeout
        self.renewals = 0
        self.finished = self._finished()

    def wait(self, task: str, execution_id: str) -> Execution:
        """``engine.wait`` for the execution until the deadline, renewed while there is progress;
        ExecutionTimeout once there is none."""
        while True:
            try:
                return self.engine.wait(task, execution_id, timeout=max(0.0, self.at - time.monotonic()))
            except ExecutionTimeout:
                if not self._renew():
                    raise

    def spent(self) -> float:
        return time.monotonic() - self.started

    def _renew(self) -> bool:
        finished = self._finished()
        if self.renewals >= self.RENEWALS or finished <= self.finished:
            return False
        self.renewals += 1
        self.finished = finished
        self.at = time.monotonic() + self.timeout
        return True

    def _finished(self) -> int:
        try:
            return self.engine.stats().finished
        except EngineError:
            return -1


class _GaveUp:
    """What the final check says of an execution it gave up waiting for, having told ``diagnose``."""

    def __init__(self, deadline: _Deadline, diagnose: Diagnose | None) -> None:
        self.engine = deadline.engine
        self.deadline = deadline
        self.diagnose = diagnose

    def __call__(self, task: str, execution_id: str, began: float) -> str:
        now = time.monotonic()
        if self.diagnose is not None:
            try:
                seen: Execution | None = self.engine.get_execution(task, execution_id)
            except EngineError:
                seen = None
            self.diagnose(task, execution_id, seen, now - began, now - self.deadline.started)
        said = f"the check waited {now - began:.1f} s for this one"
        return f"{said}; diagnostics follow the report" if self.diagnose is not None else said


def _finish_live(engine: Engine, tasks: list[str], gave_up: _GaveUp, violation: Any) -> int:
    """Wait for every unfinished execution of the workload's tasks (crashes cut triggers whose
    executions nobody was told about; they must finish too). Returns how many were waited for."""
    deadline = gave_up.deadline
    waited = 0
    for task in tasks:
        after: int | None = None
        while True:
            try:
                page = engine.list_executions(task, after=after, limit=5000)
            except TaskNotFound:
                break  # a crash between a deletion and its re-creation
            for ex in page:
                if ex.status.is_finished:
                    continue
                waited += 1
                began = time.monotonic()
                try:
                    deadline.wait(task, ex.id)
                except ExecutionTimeout:
                    violation(
                        f"execution {ex.id} of {task!r} (index {ex.index}) still {ex.status} "
                        f"{deadline.spent():.0f} s after the engine was reopened ({gave_up(task, ex.id, began)})"
                    )
                except (TaskNotFound, ExecutionNotFound) as e:
                    violation(f"execution {ex.id} of {task!r} (index {ex.index}) vanished while waited for: {e}")
                except EngineError as e:
                    violation(f"execution {ex.id} of {task!r} (index {ex.index}) still {ex.status}, and the check's "
                              f"engine could not wait for it: {type(e).__name__}: {e} ({gave_up(task, ex.id, began)})")
            if len(page) < 5000:
                break
            after = page[-1].index
    return waited
