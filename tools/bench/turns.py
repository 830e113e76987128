"""One execution's Python, without the threads: a counter actor's turns and an executor's loop,
driven from one thread (``python -m taskengine.tools.bench.probe turn``).

On a shared machine the bench's CPU per execution moves by several microseconds from run to run,
and most of it is thread hand-offs (BENCHMARKS.md). These drivers measure what the engine's own
code costs per execution, which a change to that code moves and the machine's load barely does:

- **counter actor**: the engine's real ``CounterActor``, its thread left parked on an inbox nobody
  uses any more, is handed turns of ``batch`` triggers (what an ack costs it), then turns of
  ``batch`` triggers plus ``batch`` starts that each carry the previous run's finish (the shape
  of the bench's e2e turns). The difference is what an execution's start and finish cost it.
  Nothing waits on the replies while it answers them, so no wake-up is counted; the writes are
  real LevelDB writes, without fsync unless ``sync``.
- **executor**: the real ``Executor`` runs a queue of no-op executions through its loop, the
  pending store and counter actor replaced by objects that answer each start at once.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import time
from typing import Any

import attrs
from pykka._envelope import Envelope

from taskengine import Engine
from taskengine.actors import messages as m
from taskengine.actors.board import CompletionBoard
from taskengine.actors.ids import new_id
from taskengine.actors.jobs import JobRegistry
from taskengine.actors.mailbox import Reply
from taskengine.actors.pool import Executor
from taskengine.actors.refs import ActorRefs
from taskengine.actors.workqueue import WorkQueue
from taskengine.storage import Execution, ExecutionStatus, Task, records

TASKS = 100


def counter_turns(workdir: str, *, e2e: bool, batch: int, turns: int, sync: bool) -> float:
    """CPU (us) per execution of ``turns`` counter-actor turns (the first tenth not counted)."""
    path = tempfile.mkdtemp(prefix="turns-", dir=workdir)
    engine = Engine.open(os.path.join(path, "db"), jobs={"noop": lambda ctx: None}, sync=sync)
    try:
        ids = [f"t{i}" for i in range(TASKS)]
        for tid in ids:
            engine.create_task(tid, job="noop")
        actor: Any = engine._refs.counters[0]._actor_weakref()
        assert actor is not None
        # nothing of the turns leaves the actor: no pending store, no pool, no executors
        actor._refs = attrs.evolve(actor._refs, work=None, pool=None, pending=None)
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        actor.actor_inbox = inbox  # its thread stays parked on the inbox it had
        incarnations = {tid: actor._cache[tid].task.incarnation for tid in ids}
        triggered: list[m.WorkItem] = []  # to start next turn
        running: list[m.Finish] = []  # started last turn, to finish with this turn's starts
        token, cpu, counted = 0, 0.0, 0
        for turn in range(turns):
            messages: list[Any] = []
            replies: list[tuple[Reply[Any], int | None]] = []
            for k in range(batch):
                reply: Reply[Any] = Reply()
                tid = ids[(turn * batch + k) % TASKS]
                messages.append(m.Trigger(new_id(), tid, None, False, time.time(), None, reply))
                replies.append((reply, None))
            if e2e:
                for j, item in enumerate(triggered):
                    token += 1
                    reply = Reply()
                    messages.append(m.Start(item, token, reply, running[j] if j < len(running) else None))
                    replies.append((reply, token))
            for message in messages[1:]:
                inbox.put(Envelope(message))  # taken by the turn, as an actor's inbox would be
            before = time.thread_time()
            actor.on_receive(messages[0])
            if turn >= turns // 10:
                cpu += time.thread_time() - before
                counted += batch
            triggered, running = [], []
            for reply, started_token in replies:
                value = reply.get(timeout=10)
                if started_token is None:
                    triggered.append(m.WorkItem(value, "noop", incarnations[value.task_id]))
                else:
                    ex = records.finished(value[0], ExecutionStatus.SUCCESS, time.time())
                    running.append(m.Finish(ex, incarnations[ex.task_id], started_token))
        return 1e6 * cpu / counted
    finally:
        engine.close()
        shutil.rmtree(path, ignore_errors=True)


class _AnswersAtOnce:
    """Stands in for the pending store and the counter actor: a start is answered as it is told."""

    def __init__(self, task: Task) -> None:
        self._task = task

    def is_alive(self) -> bool:
        return True

    def tell(self, message: Any) -> None:
        start = message.start if isinstance(message, m.ClaimThenStart) else message
        if isinstance(start, m.Start):
            start.reply.set((records.started(start.item.execution, time.time()), self._task))


def executor_loop(executions: int) -> float:
    """CPU (us) per execution of an executor's loop over ``executions`` queued no-op executions
    (the stand-in's answers included: ``records.started`` and a reply)."""
    task = Task("t", "noop", incarnation="i")
    other = _AnswersAtOnce(task)
    stand_in: Any = other
    refs = ActorRefs(counters=[stand_in], pending=stand_in)
    jobs = JobRegistry()
    jobs.add("noop", lambda ctx: None)
    work = WorkQueue(None, lambda urn, token: None)
    executor = Executor(None, refs, jobs, CompletionBoard(), work)  # type: ignore[arg-type]
    work.add_slot(executor.actor_urn, None)
    now = time.time()
    items = [
        m.WorkItem(Execution(new_id(), "t", i, ExecutionStatus.PENDING, False, created_at=now), "noop", "i")
        for i in range(executions + 1)
    ]
    _, first, token = work.offer(items)[0]
    before = time.thread_time()
    executor.on_receive(m.Run(first, token))
    return 1e6 * (time.thread_time() - before) / (executions + 1)


def lines(workdir: str, *, batch: int = 20, turns: int = 600, executions: int = 30_000, rounds: int = 3,
          sync: bool = False) -> list[str]:
    """The median of ``rounds`` of each driver, acks-only and e2e turns alternating."""
    acks, e2e, loop = [], [], []
    for _ in range(rounds):
        acks.append(counter_turns(workdir, e2e=False, batch=batch, turns=turns, sync=sync))
        e2e.append(counter_turns(workdir, e2e=True, batch=batch, turns=turns, sync=sync))
        loop.append(executor_loop(executions))
    a, e, x = (sorted(v)[len(v) // 2] for v in (acks, e2e, loop))
    return [
        f"one execution's Python, one thread, no hand-offs (median of {rounds}; LevelDB writes "
        f"{'with' if sync else 'without'} fsync):",
        f"  counter actor, turns of {batch} triggers:                       {a:6.1f} us per trigger",
        f"  counter actor, turns of {batch} triggers, starts and finishes:  {e:6.1f} us per execution",
        f"    of which an execution's start and finish:                  {e - a:6.1f} us",
        f"  executor loop (claim, start, run a no-op job, finish, next):  {x:6.1f} us per execution",
    ]
