"""The stress workload: the job, the client actors that drive an engine, and their events.

The same code runs in-process and inside the crash-injected child (``taskengine.tools.stress.child``);
only the *sink* the clients report to differs (a :class:`taskengine.tools.stress.check.Ledger` in
process, JSON lines on stdout in the child). Events are plain dicts:

``{"ev": "ack", "t": task, "g": gen, "id": execution id, "i": index, "b": blocking,
"lat": seconds, "k": idempotency key or null, "st": final status (blocking) or null,
"f": whether the job was asked to fail, "retry": bool, "timeout": bool}``
    a trigger was answered with an execution that holds an index. ``lat`` is the
    acknowledgement latency (non-blocking: index durable; blocking: finished). ``retry``:
    the answer to an idempotent repeat; ``timeout``: a blocking trigger that timed out after
    its execution had been given an index (the index is held to all the same).
``{"ev": "deleting", "t": task, "n": k}`` / ``{"ev": "deleted", "t": task, "n": k}``
    the k-th deletion of a task (counted over the whole run, across restarts) is about to
    be asked for / has been answered.
``{"ev": "rejected", "t": task}``, ``{"ev": "blocking_timeout", "t": task}``
``{"ev": "violation", "msg": text}``
    something a client saw that breaks the contract.

``g`` (the task *generation*) is the number of delete-and-recreate cycles of the task that
had completed when the trigger was sent. An acknowledged execution may legitimately
disappear only if a deletion of its task started after that, i.e. if the number of
``deleting`` events of the task ever seen exceeds ``g``.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pykka

from taskengine import Engine, Execution, ExecutionStatus, JobContext
from taskengine.actors.errors import (
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    ExecutionTimeout,
    QueueFull,
    StorageError,
    TaskAlreadyExists,
    TaskNotFound,
)

Event = dict[str, Any]
Sink = Callable[[Event], None]

JOB_NAME = "stress"
TASK_PREFIX = "stress-"
#: the error of a planned job failure starts with this
PLANNED_FAILURE = "RuntimeError: stress: planned failure"
#: the error the engine gives an execution that was running when its process died
INTERRUPTED_PREFIX = "interrupted"
#: the node id of every engine the stress run opens (its child's lives and the final check): on
#: PostgreSQL each restart takes over from the killed life at once (as a node under systemd
#: keeps its id), rather than after its lease
NODE_ID = "taskengine-stress"


class HidePlannedFailures(logging.Filter):
    """The engine logs each failed job at WARNING with its traceback; the workload's planned
    failures are not news (the report counts them), and thousands of tracebacks would bury
    the lines that are. Any other failure still gets through."""

    #: the logger of the engine's module that logs failed jobs
    LOGGER = "taskengine.actors.pool"

    def filter(self, record: logging.LogRecord) -> bool:
        return PLANNED_FAILURE not in record.getMessage()

    def __enter__(self) -> HidePlannedFailures:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


class WorkloadError(Exception):
    """The workload cannot run on this database (e.g. a task id it needs is taken)."""


def stress_job(ctx: JobContext) -> Any:
    """The workload's job: sleep a little if asked (slow jobs), fail if asked, else report
    what it saw, so the final check can compare the index the job ran with to the stored one."""
    data = ctx.data if isinstance(ctx.data, dict) else {}
    sleep_ms = data.get("sleep_ms", 0)
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    if data.get("fail"):
        raise RuntimeError(f"stress: planned failure (execution {ctx.execution_id}, index {ctx.index})")
    return {"index": ctx.index, "id": ctx.execution_id}


JOBS: dict[str, Callable[[JobContext], Any]] = {JOB_NAME: stress_job}


def task_ids(count: int) -> list[str]:
    return [f"{TASK_PREFIX}{i:03d}" for i in range(count)]


def churn_tasks(ids: list[str]) -> frozenset[str]:
    """The tasks that may be deleted and re-created: every fourth one (at least one when
    there are two or more), so most tasks keep their whole history for the final check."""
    churn = {t for i, t in enumerate(ids) if i % 4 == 3}
    if not churn and len(ids) >= 2:
        churn = {ids[-1]}
    return frozenset(churn)


def ensure_tasks(engine: Engine, ids: Iterable[str]) -> int:
    """Create the workload's tasks that do not exist; returns how many were created.
    A task id that exists with another job is a :class:`WorkloadError`."""
    created = 0
    for tid in ids:
        while True:
            try:
                engine.create_task(tid, job=JOB_NAME)
                created += 1
                break
            except TaskAlreadyExists:
                try:
                    job = engine.get_task(tid).job
                except TaskNotFound:
                    continue  # another node deleted it meanwhile: create it again
                if job != JOB_NAME:
                    raise WorkloadError(
                        f"task {tid!r} exists in this database with job {job!r}, not {JOB_NAME!r}; "
                        "use a fresh database for stress runs"
                    ) from None
                break
    return created


def check_outcome(ex: Execution, fail_planned: bool | None) -> str | None:
    """Why a finished execution's outcome is wrong, or None. ``fail_planned`` is what its
    trigger asked the job to do (None: unknown). CANCELLED is judged by the caller."""
    if ex.status is ExecutionStatus.SUCCESS:
        if fail_planned:
            return "succeeded although its job was asked to fail"
        res = ex.result
        if not isinstance(res, dict) or res.get("index") != ex.index or res.get("id") != ex.id:
            return f"its job ran with another id/index than the stored one (job result {res!r})"
        return None
    if ex.status is ExecutionStatus.FAILED:
        err = ex.error or ""
        if err.startswith(INTERRUPTED_PREFIX):
            return None
        if err.startswith(PLANNED_FAILURE):
            if fail_planned is False:
                return f"failed although its job was not asked to: {err}"
            return None
        return f"failed with an unexpected error: {err!r}"
    return None


class TaskBook:
    """Per-task delete-and-recreate cycles, shared by the clients of one process.

    ``started`` counts deletions begun, ``done`` cycles finished (deleted *and* re-created).
    Both start at the counts of earlier processes of the same run (crash mode).
    """

    def __init__(self, ids: Iterable[str], base: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        base = base or {}
        self._started = {t: int(base.get(t, 0)) for t in ids}
        self._done = dict(self._started)

    def gen(self, task: str) -> int:
        with self._lock:
            return self._done[task]

    def started(self, task: str) -> int:
        with self._lock:
            return self._started[task]

    def deleted_since(self, task: str, gen: int) -> bool:
        """Has a deletion of the task begun that had not completed at generation ``gen``?"""
        with self._lock:
            return self._started[task] > gen

    def busy(self, task: str) -> bool:
        with self._lock:
            return self._started[task] > self._done[task]

    def begin_delete(self, task: str) -> int | None:
        """The number of this deletion, or None if one of the task is under way."""
        with self._lock:
            if self._started[task] > self._done[task]:
                return None
            self._started[task] += 1
            return self._started[task]

    def end_delete(self, task: str, n: int) -> None:
        with self._lock:
            self._done[task] = n


class Control:
    """When clients stop: a stop flag and, with a count, a budget of new executions."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.acked = 0
        self._reserved = 0
        self._cond = threading.Condition()
        self.stopping = threading.Event()
        #: set once ``count`` executions have been acknowledged
        self.done = threading.Event()

    def reserve(self, n: int) -> int:
        """Reserve up to ``n`` new triggers; returns how many may be sent."""
        with self._cond:
            if self.stopping.is_set():
                return 0
            if self.count is None:
                return n
            granted = max(0, min(n, self.count - self.acked - self._reserved))
            self._reserved += granted
            return granted

    def settle(self, reserved: int, acked: int) -> None:
        """An operation that reserved ``reserved`` triggers got ``acked`` new executions."""
        with self._cond:
            if self.count is not None:
                self._reserved -= reserved
            self.acked += acked
            if self.count is not None and self.acked >= self.count:
                self.done.set()
            self._cond.notify_all()

    def wait_for_budget(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def stop(self) -> None:
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()


@attrs.frozen
class Settings:
    """The mix of the workload. Weights are relative."""

    weight_nonblocking: int = 40
    weight_blocking: int = 25
    weight_mixed: int = 10
    weight_idempotent: int = 15
    weight_read: int = 10
    #: per client step, on a churn task
    delete_probability: float = 0.01
    slow_probability: float = 0.15
    slow_ms: tuple[int, int] = (1, 8)
    fail_probability: float = 0.1
    #: unfinished non-blocking executions a client keeps before it waits for its oldest
    max_inflight: int = 6
    #: a blocking trigger or wait longer than this is counted as a timeout
    blocking_timeout: float = 30.0
    #: a non-blocking trigger not acknowledged within this is a violation (a hang)
    ack_timeout: float = 30.0
    #: a StorageError ends the workload with a ``refused`` event instead of a violation (a node
    #: of ``stress --nodes``, whose writes are refused once it lost its lease; the driver judges)
    refusal_ends: bool = False


#: the mix of a node of ``stress --nodes``: slower jobs (so a kill or a pause finds some running),
#: and a refused write ends the node instead of counting as a violation
NODE_SETTINGS = Settings(slow_probability=0.3, slow_ms=(2, 40), refusal_ends=True)


@attrs.define
class _Sent:
    task: str
    gen: int
    blocking: bool
    fail: bool
    key: str | None
    t0: float
    fut: Any
    ordered: bool = True


@attrs.define
class _Held:
    """An acknowledged non-blocking execution the client will wait for."""

    task: str
    gen: int
    id: str
    index: int
    fail: bool


_STEP = "step"


class StressClient(pykka.ThreadingActor):
    """One client: each message it sends itself is one operation on the engine."""

    use_daemon_thread = True

    def __init__(
        self,
        number: int,
        engine: Engine,
        ids: list[str],
        churn: frozenset[str],
        book: TaskBook,
        control: Control,
        sink: Sink,
        seed: int,
        settings: Settings,
    ) -> None:
        super().__init__()
        self.number = number
        self.engine = engine
        self.ids = ids
        self.churn = sorted(churn)
        self.book = book
        self.control = control
        self.sink = sink
        self.rng = random.Random(seed)
        self.s = settings
        self.inflight: collections.deque[_Held] = collections.deque()
        self.recent: collections.deque[_Held] = collections.deque(maxlen=32)
        #: per task: (last index acknowledged in order, its generation when sent, its id)
        self.last: dict[str, tuple[int, int, str]] = {}
        self._ops: list[Callable[[], None]] = [
            self._op_nonblocking,
            self._op_blocking,
            self._op_mixed,
            self._op_idempotent,
            self._op_read,
        ]
        self._weights = [
            settings.weight_nonblocking,
            settings.weight_blocking,
            settings.weight_mixed,
            settings.weight_idempotent,
            settings.weight_read,
        ]
        self._keys = 0
        #: acknowledgements of new executions emitted (what Control's budget counts)
        self.new_acks = 0

    # -- the loop ------------------------------------------------------------------------

    def on_start(self) -> None:
        self.actor_ref.tell(_STEP)

    def on_receive(self, message: Any) -> Any:
        if message != _STEP:
            return super().on_receive(message)
        if self.control.stopping.is_set():
            return None
        try:
            self._step()
        except EngineClosed:
            if not self.control.stopping.is_set():
                self._violation(f"client {self.number}: the engine closed under a running workload")
        except StorageError as e:
            if self.s.refusal_ends:
                self.sink({"ev": "refused", "msg": f"client {self.number}: {type(e).__name__}: {e}"})
                self.control.stop()
            else:
                self._violation(f"client {self.number}: unexpected {type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - an engine error nobody expected is a finding, not a crash
            self._violation(f"client {self.number}: unexpected {type(e).__name__}: {e}")
        if not self.control.stopping.is_set():
            self.actor_ref.tell(_STEP)
        return None

    def _step(self) -> None:
        if self.churn and self.rng.random() < self.s.delete_probability:
            self._op_delete(self.rng.choice(self.churn))
        else:
            self.rng.choices(self._ops, self._weights)[0]()
        while len(self.inflight) > self.s.max_inflight and not self.control.stopping.is_set():
            self._finish_oldest()

    # -- helpers -------------------------------------------------------------------------

    def _violation(self, msg: str) -> None:
        self.sink({"ev": "violation", "msg": msg})

    def _task(self) -> str:
        return self.rng.choice(self.ids)

    def _send(self, task: str, blocking: bool, key: str | None = None, ordered: bool = True) -> _Sent:
        fail = self.rng.random() < self.s.fail_probability
        data: dict[str, Any] = {"c": self.number}
        if fail:
            data["fail"] = True
        if self.rng.random() < self.s.slow_probability:
            data["sleep_ms"] = self.rng.randint(*self.s.slow_ms)
        gen = self.book.gen(task)
        t0 = time.perf_counter()
        fut = self.engine.trigger_future(task, data, blocking=blocking, idempotency_key=key)
        return _Sent(task, gen, blocking, fail, key, t0, fut, ordered)

    def _sync_trigger(self, task: str, blocking: bool) -> Execution | None:
        """A trigger through ``engine.trigger`` (not the future), with the same bookkeeping."""
        fail = self.rng.random() < self.s.fail_probability
        data: dict[str, Any] = {"c": self.number, "fail": fail} if fail else {"c": self.number}
        if self.rng.random() < self.s.slow_probability:
            data["sleep_ms"] = self.rng.randint(*self.s.slow_ms)
        gen = self.book.gen(task)
        t0 = time.perf_counter()
        sent = _Sent(task, gen, blocking, fail, None, t0, None)
        try:
            ex = self.engine.trigger(
                task, data, blocking=blocking, timeout=self.s.blocking_timeout if blocking else None
            )
        except (TaskNotFound, ExecutionNotFound) as e:
            self._not_found(sent, e)
            return None
        except ExecutionTimeout as e:
            self._timed_out(sent, e)
            return None
        except QueueFull:
            self.sink({"ev": "queue_full", "t": task})
            return None
        return self._acked(sent, ex, time.perf_counter() - t0)

    def _collect(self, sent: _Sent, retry: bool = False) -> Execution | None:
        """Wait for a trigger's answer; record and check it. None if it has no index."""
        try:
            ex: Execution = sent.fut.get(timeout=self.s.blocking_timeout if sent.blocking else self.s.ack_timeout)
        except (TaskNotFound, ExecutionNotFound) as e:
            # ExecutionNotFound: an idempotent repeat whose first execution a deletion removed
            self._not_found(sent, e, retry)
            return None
        except ExecutionTimeout as e:
            self._timed_out(sent, e)
            return None
        except QueueFull:  # --max-queued: refused, changing nothing
            self.sink({"ev": "queue_full", "t": sent.task})
            return None
        except pykka.Timeout:
            self._violation(
                f"non-blocking trigger of task {sent.task!r} not acknowledged within {self.s.ack_timeout} s"
            )
            return None
        return self._acked(sent, ex, time.perf_counter() - sent.t0, retry=retry)

    def _not_found(self, sent: _Sent, e: EngineError, retry: bool = False) -> None:
        if self.book.deleted_since(sent.task, sent.gen):
            self.sink({"ev": "rejected", "t": sent.task})
        else:
            what = "an idempotent repeat" if retry else "a trigger"
            self._violation(
                f"{what} of task {sent.task!r} raised {type(e).__name__} ({e}), but the task was not being deleted"
            )

    def _timed_out(self, sent: _Sent, e: ExecutionTimeout) -> None:
        self.sink({"ev": "blocking_timeout", "t": sent.task})
        if e.index is not None:  # the client was told an index: hold the engine to it
            self._emit_ack(sent, e.execution_id, e.index, None, time.perf_counter() - sent.t0, False)

    def _emit_ack(
        self, sent: _Sent, execution_id: str, index: int, status: str | None, latency: float, retry: bool
    ) -> None:
        if not retry:
            self.new_acks += 1
        self.sink(
            {
                "ev": "ack",
                "t": sent.task,
                "g": sent.gen,
                "id": execution_id,
                "i": index,
                "b": sent.blocking,
                "lat": round(latency, 6),
                "k": sent.key,
                "st": status,
                "f": sent.fail,
                "retry": retry,
                "timeout": status is None and sent.blocking,
            }
        )

    def _acked(self, sent: _Sent, ex: Execution, latency: float, retry: bool = False) -> Execution | None:
        task = sent.task
        deleted = self.book.deleted_since(task, sent.gen)
        if ex.task_id != task:
            self._violation(f"trigger of task {task!r} answered with an execution of task {ex.task_id!r}")
            return None
        if sent.blocking:
            if not ex.status.is_finished:
                # an idempotent repeat answered with a queued blocking execution is fine; nothing else
                if not (retry and ex.index is None):
                    self._violation(f"blocking trigger of {task!r} returned unfinished execution {ex.id} ({ex.status})")
                return ex
            if ex.status is ExecutionStatus.CANCELLED:
                if not deleted:
                    self._violation(f"blocking execution {ex.id} of {task!r} CANCELLED without a task deletion")
                if ex.index is None:
                    return ex
        elif ex.status is not ExecutionStatus.PENDING and not retry:
            self._violation(f"non-blocking trigger of {task!r} answered with status {ex.status}, not PENDING")
        if ex.index is None:
            if not retry:
                self._violation(f"trigger of {task!r} answered execution {ex.id} without an index")
            return ex
        if sent.blocking and ex.status is not ExecutionStatus.CANCELLED:
            problem = check_outcome(ex, None if retry else sent.fail)
            if problem:
                self._violation(f"execution {ex.id} of {task!r} (index {ex.index}) {problem}")
        if not retry and sent.ordered:
            self._check_order(sent, ex)
        self._emit_ack(sent, ex.id, ex.index, ex.status.value if sent.blocking else None, latency, retry)
        held = _Held(task, sent.gen, ex.id, ex.index, sent.fail)
        if not retry:
            self.recent.append(held)
            if not sent.blocking:
                self.inflight.append(held)
        return ex

    def _check_order(self, sent: _Sent, ex: Execution) -> None:
        """Ordered (README): one caller's successive triggers of a task get increasing indexes.
        Compared only when no deletion of the task began since the earlier one was sent."""
        assert ex.index is not None
        task = sent.task
        prev = self.last.get(task)
        if prev is not None and prev[1] == self.book.started(task) and ex.index <= prev[0]:
            self._violation(
                f"client {self.number}: task {task!r} gave index {ex.index} (execution {ex.id}, "
                f"{'blocking' if ex.blocking else 'non-blocking'}) to a trigger sent after one that got "
                f"index {prev[0]} (execution {prev[2]}); no deletion of the task began in between"
            )
        # compared later only if no deletion was under way at this send nor began since: a
        # deletion begun before the send may reach the engine after it
        self.last[task] = (ex.index, sent.gen, ex.id)

    def _finish_oldest(self) -> None:
        held = self.inflight.popleft()
        try:
            ex = self.engine.wait(held.task, held.id, timeout=self.s.blocking_timeout)
        except (TaskNotFound, ExecutionNotFound) as e:
            # the prune mark first: a deletion begun while it is read leaves the mark of a new task
            if not self._pruned(held.task, held.index) and not self.book.deleted_since(held.task, held.gen):
                self._violation(f"acknowledged execution {held.id} of {held.task!r} vanished: {e}")
            return
        except ExecutionTimeout:
            self.sink({"ev": "blocking_timeout", "t": held.task})
            return
        self._check_finished(held, ex)

    def _check_finished(self, held: _Held, ex: Execution) -> None:
        if ex.index != held.index:
            self._violation(
                f"execution {held.id} of {held.task!r} was acknowledged with index {held.index} "
                f"but finished with index {ex.index}"
            )
        if ex.status is ExecutionStatus.CANCELLED:
            if not self.book.deleted_since(held.task, held.gen):
                self._violation(f"execution {held.id} of {held.task!r} CANCELLED without a task deletion")
            return
        if not ex.status.is_finished:
            self._violation(f"wait() returned execution {held.id} of {held.task!r} unfinished ({ex.status})")
            return
        problem = check_outcome(ex, held.fail)
        if problem:
            self._violation(f"execution {held.id} of {held.task!r} (index {held.index}) {problem}")

    # -- operations ----------------------------------------------------------------------

    def _op_nonblocking(self) -> None:
        """A burst of 1-3 non-blocking triggers sent before any answer is read."""
        n = self.control.reserve(self.rng.randint(1, 3))
        if n == 0:
            self._idle()
            return
        before = self.new_acks
        try:
            if n == 1 and self.rng.random() < 0.5:
                self._sync_trigger(self._task(), False)
                return
            sent = [self._send(self._task(), False) for _ in range(n)]
            for s in sent:
                self._collect(s)
        finally:
            self.control.settle(n, self.new_acks - before)

    def _op_blocking(self) -> None:
        if self.control.reserve(1) == 0:
            self._idle()
            return
        before = self.new_acks
        try:
            if self.rng.random() < 0.5:
                self._sync_trigger(self._task(), True)
            else:
                self._collect(self._send(self._task(), True))
        finally:
            self.control.settle(1, self.new_acks - before)

    def _op_mixed(self) -> None:
        """Non-blocking, blocking and non-blocking triggers of one task at once must get three
        different indexes (never [0, 0, 1])."""
        n = self.control.reserve(3)
        if n < 3:
            self.control.settle(n, 0)
            self._idle()
            return
        task = self._task()
        got: list[Execution] = []
        gen = self.book.gen(task)
        before = self.new_acks
        try:
            sent = [
                self._send(task, False),
                self._send(task, True, ordered=False),
                self._send(task, False),
            ]
            for s in sent:
                ex = self._collect(s)
                if ex is not None and ex.index is not None:
                    got.append(ex)
        finally:
            self.control.settle(3, self.new_acks - before)
        indexes = [ex.index for ex in got]
        if len(set(indexes)) != len(indexes) and not self.book.deleted_since(task, gen):
            self._violation(f"concurrent mixed triggers of {task!r} got duplicate indexes {indexes}")

    def _op_idempotent(self) -> None:
        """A trigger with an idempotency key and a retry with the same key (sometimes sent
        concurrently): both must answer with the same execution id and index."""
        if self.control.reserve(1) == 0:
            self._idle()
            return
        task = self._task()
        self._keys += 1
        key = f"c{self.number}-{self._keys}-{self.rng.getrandbits(32):08x}"
        first_sent = self._send(task, self.rng.random() < 0.4, key)
        concurrent = self.rng.random() < 0.3
        retry_sent = self._send(task, self.rng.random() < 0.4, key, ordered=False) if concurrent else None
        first = None
        before = self.new_acks
        try:
            first = self._collect(first_sent)
        finally:
            self.control.settle(1, self.new_acks - before)
        if retry_sent is None:
            if first is None:
                return
            retry_sent = self._send(task, self.rng.random() < 0.4, key, ordered=False)
        retry_sent.gen = first_sent.gen
        retry = self._collect(retry_sent, retry=True)
        self.sink({"ev": "retry", "t": task})
        if first is None or retry is None:
            return
        if self.book.deleted_since(task, first_sent.gen):
            return  # a retry after a deletion may make a new execution of the new task
        if (retry.id != first.id or (
            retry.index is not None and first.index is not None and retry.index != first.index
        )) and not self._pruned(task, first.index) and not self.book.deleted_since(task, first_sent.gen):
            # a pruned execution's key is forgotten with it (a deletion may begin while the mark is read)
            self._violation(
                f"idempotency key {key!r} of {task!r}: first answer {first.id} (index {first.index}), "
                f"retry answer {retry.id} (index {retry.index})"
            )

    def _pruned(self, task: str, index: int | None) -> bool:
        """Retention (--keep-last) removed the execution of ``index``: it is below the prune mark."""
        from .check import pruned_past

        return index is not None and pruned_past(self.engine, task, index)

    def _op_read(self) -> None:
        """Reads never assign: re-read one of this client's executions and the counter."""
        if not self.recent:
            self._op_nonblocking()
            return
        held = self.rng.choice(self.recent)
        try:
            ex = self.engine.get_execution(held.task, held.id)
            counter = self.engine.next_index(held.task)
        except (TaskNotFound, ExecutionNotFound) as e:
            # the prune mark first: a deletion begun while it is read leaves the mark of a new task
            if not self._pruned(held.task, held.index) and not self.book.deleted_since(held.task, held.gen):
                self._violation(f"acknowledged execution {held.id} of {held.task!r} vanished: {e}")
            return
        if self.book.deleted_since(held.task, held.gen):
            return
        if ex.index != held.index:
            self._violation(
                f"execution {held.id} of {held.task!r} was acknowledged with index {held.index}, "
                f"now reads as index {ex.index}"
            )
        if counter <= held.index:
            self._violation(f"task {held.task!r}: counter {counter} is not above acknowledged index {held.index}")

    def _op_delete(self, task: str) -> None:
        """Delete the task and create it again. The cycle ends in the book only once both were
        answered: if either raises (the engine closed, or a node's writes were refused), the task
        may be gone, so the deletion stays under way, which only loosens the checks; a node of
        ``stress --nodes`` that takes this one's place finishes it (``_node_book``)."""
        n = self.book.begin_delete(task)
        if n is None:
            return
        self.sink({"ev": "deleting", "t": task, "n": n})
        t0 = time.perf_counter()
        try:
            self.engine.delete_task(task)
        except TaskNotFound:
            pass
        self.sink({"ev": "deleted", "t": task, "n": n, "lat": round(time.perf_counter() - t0, 6)})
        try:
            self.engine.create_task(task, job=JOB_NAME)
        except TaskAlreadyExists:
            self._violation(f"task {task!r} exists again right after its deletion, before re-creation")
        self.book.end_delete(task, n)
        # in-order checks restart with the new task
        self.last.pop(task, None)

    def _idle(self) -> None:
        """No budget left (count reached or others' triggers still pending): wait for a change."""
        if self.inflight:
            self._finish_oldest()
        else:
            self.control.wait_for_budget(0.05)


class Workload:
    """``clients`` StressClient actors driving ``engine``."""

    def __init__(
        self,
        engine: Engine,
        ids: list[str],
        clients: int,
        seed: int,
        sink: Sink,
        control: Control,
        book: TaskBook,
        settings: Settings | None = None,
        first_client: int = 0,
    ) -> None:
        self.engine = engine
        self.first_client = first_client
        self.ids = ids
        self.clients = clients
        self.seed = seed
        self.sink = sink
        self.control = control
        self.book = book
        self.settings = settings or Settings()
        self.refs: list[pykka.ActorRef[Any]] = []

    def start(self) -> None:
        churn = churn_tasks(self.ids)
        for n in range(self.first_client, self.first_client + self.clients):
            self.refs.append(
                StressClient.start(
                    n, self.engine, self.ids, churn, self.book, self.control, self.sink,
                    self.seed * 1_000_003 + n, self.settings,
                )
            )

    def stop(self, timeout: float = 60.0, close_engine: bool = True) -> list[str]:
        """Stop the clients; returns problems (a client that does not stop within ``timeout``
        is stuck in the engine).

        With ``close_engine`` the engine is closed first, under the clients' feet, as an
        embedding node shutting down would: calls in flight end with EngineClosed (expected
        now), acknowledged executions still queued stay PENDING on disk for the next open to
        recover. Otherwise each client finishes its current operation."""
        self.control.stop()
        problems = []
        deadline = time.monotonic() + timeout
        if close_engine:
            closer = threading.Thread(target=self.engine.close, name="stress-close", daemon=True)
            closer.start()
            closer.join(timeout)
            if closer.is_alive():
                problems.append(f"engine.close() did not return within {timeout} s")
        for ref in self.refs:
            try:
                ref.stop(block=True, timeout=max(0.1, deadline - time.monotonic()))
            except pykka.ActorDeadError:
                pass
            except pykka.Timeout:
                problems.append(f"a client actor did not stop within {timeout} s (stuck in an engine call)")
        self.refs.clear()
        return problems


__all__ = [
    "HidePlannedFailures",
    "JOBS",
    "JOB_NAME",
    "NODE_SETTINGS",
    "Control",
    "Settings",
    "StressClient",
    "TaskBook",
    "Workload",
    "WorkloadError",
    "ensure_tasks",
    "stress_job",
    "task_ids",
]
