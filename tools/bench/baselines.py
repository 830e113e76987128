"""Baselines of ``taskengine bench``, measured in the same run as the engine.

* bare pykka ``ask`` round trips to a trivial actor: one caller in sequence, one caller
  pipelining a window of asks, and 64 callers asking one actor;
* the naive design: one pykka actor per task that takes the next index and writes the
  same assignment batch as the engine (``storage.changes.assign``) with its own synced
  LevelDB write, no batching;
* a plain plyvel loop under a lock: take the next index, write the assignment batch
  (synced, and unsynced: the ceiling of any design in Python on this disk), and bare
  synced one-key puts (what one fsync of this disk costs);
* the floor: callers asking an actor on the engine's mailbox that group-commits one synced
  write per turn, with none of the engine's work (its CPU and thread hand-offs per round trip).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any

import attrs
import plyvel
import pykka
import ulid

from taskengine.actors.mailbox import EngineActor, Reply
from taskengine.storage import Execution, ExecutionStatus, changes

from ..histogram import Histogram
from .measure import CallerRun, put_ops, run_callers

CALLER_COUNTS = (1, 8, 64)
TASK_COUNTS = (1, 100)


class _Echo(pykka.ThreadingActor):
    use_daemon_thread = True

    def on_receive(self, message: Any) -> Any:
        return message


def new_execution(task_id: str) -> Execution:
    """What a trigger builds before it asks for an index (the engine does the same)."""
    return Execution(
        id=str(ulid.ULID()),
        task_id=task_id,
        index=None,
        status=ExecutionStatus.PENDING,
        blocking=False,
        created_at=time.time(),
    )


def _write_assign(db: Any, ex: Execution, sync: bool) -> None:
    with db.write_batch(sync=sync) as batch:
        put_ops(batch, changes.assign(ex))


class _NaiveCounter(pykka.ThreadingActor):
    """The naive design: one actor per task, one synced write per assignment."""

    use_daemon_thread = True

    def __init__(self, db: Any) -> None:
        super().__init__()
        self._db = db
        self._counter = 0

    def on_receive(self, message: Any) -> Any:
        ex = attrs.evolve(message, index=self._counter)
        self._counter += 1
        _write_assign(self._db, ex, True)
        return ex


def _rounds(opts: Any, callers: int, op: Any, record_latency: bool = True) -> list[CallerRun]:
    return [
        run_callers(callers, op, duration=opts.duration, warmup=opts.warmup, record_latency=record_latency)
        for _ in range(opts.rounds)
    ]


class EchoActor:
    """A bare pykka actor that answers every ask with the message: ``op(k, i)`` is one ask."""

    def __init__(self) -> None:
        self._ref = _Echo.start()

    def op(self, k: int, i: int) -> Any:
        return self._ref.ask(i)

    def close(self) -> None:
        self._ref.stop()


def pykka_asks(opts: Any, out: dict[str, Any], with_64_callers: bool = True) -> None:
    """``with_64_callers=False``: the acks benchmark measures that one, interleaved with the engine."""
    ref = _Echo.start()
    try:
        out["pykka_ask_sequential"] = rate_entry(_rounds(opts, 1, lambda k, i: ref.ask(i)), "asks/s", callers=1)
        window = 256

        def pipelined(k: int, i: int) -> None:
            futures = [ref.ask(j, block=False) for j in range(window)]
            for f in futures:
                f.get()

        entry = rate_entry(_rounds(opts, 1, pipelined, record_latency=False), "asks/s", callers=1, window=window)
        entry["value"] *= window
        entry["rounds"] = [round(r * window, 1) for r in entry["rounds"]]
        out["pykka_ask_pipelined"] = entry
        if with_64_callers:
            out["pykka_ask_64_callers"] = rate_entry(_rounds(opts, 64, lambda k, i: ref.ask(i)), "asks/s",
                                                     callers=64)
    finally:
        ref.stop()


class _GroupCommitEcho(EngineActor):
    """Like a counter actor with none of its work: takes every message waiting, makes one synced
    write, answers them all."""

    def __init__(self, db: Any) -> None:
        super().__init__()
        self._db = db

    def on_receive(self, message: Any) -> None:
        replies = [message]
        inbox = self.actor_inbox
        while not inbox.empty():
            envelope = inbox.get()
            if envelope.reply_to is not None:  # pykka's stop: after this turn
                inbox.put(envelope)
                break
            replies.append(envelope.message)
        self._db.put(b"k", b"v" * 64, sync=True)
        for reply in replies:
            reply.set(None)


class GroupCommitFloor:
    """The floor under an acknowledgement: callers ask an actor on the engine's own mailbox
    (``actors/mailbox.py``) that group-commits one synced write per turn. ``op(k, i)`` is one
    round trip; its CPU and thread hand-offs are what any design with the engine's shape pays."""

    def __init__(self, path: str) -> None:
        self._db = plyvel.DB(path, create_if_missing=True)
        self._ref = _GroupCommitEcho.start(self._db)

    def op(self, k: int, i: int) -> None:
        reply: Reply[None] = Reply()
        self._ref.tell(reply)
        reply.get()

    def close(self) -> None:
        self._ref.stop()
        self._db.close()


class NaiveDesign:
    """The naive design over ``tasks`` tasks, on its own database: ``op(k, i)`` is one trigger."""

    def __init__(self, path: str, tasks: int) -> None:
        self._db = plyvel.DB(path, create_if_missing=True)
        self._refs = [_NaiveCounter.start(self._db) for _ in range(tasks)]
        self._ids = [f"naive-{t}" for t in range(tasks)]
        self._tasks = tasks

    def op(self, k: int, i: int) -> Any:
        t = (k * 31 + i) % self._tasks
        return self._refs[t].ask(new_execution(self._ids[t]))

    def close(self) -> None:
        for ref in self._refs:
            ref.stop()
        self._db.close()


def naive_entry(runs: list[CallerRun], callers: int, tasks: int) -> dict[str, Any]:
    return rate_entry(runs, "acks/s", callers=callers, tasks=tasks)


def rate_entry(runs: list[CallerRun], unit: str, **extra: Any) -> dict[str, Any]:
    """A figure measured in one or more rounds: the median rate; latencies of all rounds (one
    histogram); the throughput series of each round."""
    lat = Histogram()
    for r in runs:
        lat.merge(r.latency)
    entry: dict[str, Any] = {
        "value": statistics.median(r.rate for r in runs), "unit": unit, **extra,
        "rounds": [round(r.rate, 1) for r in runs],
        "p50_us": _us(lat.quantile(0.5)), "p99_us": _us(lat.quantile(0.99)),
        "latency_histogram": lat.to_json() if lat.count else None,
        "throughput": [r.throughput.to_json() for r in runs],
        "errors": sum(r.errors for r in runs),
        "cpu_percent": round(statistics.median(r.cpu_percent for r in runs)),
        "cpu_us_per_op": _median_of(r.cpu_us_per_op for r in runs),
        "handoffs_per_op": _median_of(r.handoffs_per_op for r in runs),
    }
    first = next((r.first_error for r in runs if r.first_error), None)
    if first:
        entry["first_error"] = first
    return entry


def _median_of(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def floor(opts: Any, out: dict[str, Any]) -> None:
    """The floor alone (when ``acks`` is not selected; otherwise it interleaves with the engine's
    64 callers over 100 tasks)."""
    design = GroupCommitFloor(os.path.join(opts.workdir, "floor"))
    try:
        out["floor_64c"] = rate_entry(_rounds(opts, 64, design.op), "round trips/s", callers=64)
    finally:
        design.close()


def naive(opts: Any, out: dict[str, Any]) -> None:
    """The naive design alone (when ``acks`` is not selected; otherwise ``acks`` measures it
    interleaved with the engine, config by config)."""
    for tasks in TASK_COUNTS:
        design = NaiveDesign(os.path.join(opts.workdir, f"naive-{tasks}"), tasks)
        try:
            for callers in CALLER_COUNTS:
                runs = [run_callers(callers, design.op, duration=opts.duration, warmup=opts.warmup)
                        for _ in range(opts.rounds)]
                out[f"naive_acks_{callers}c_{tasks}t"] = naive_entry(runs, callers, tasks)
        finally:
            design.close()


def plyvel_loop(opts: Any, out: dict[str, Any]) -> None:
    path = os.path.join(opts.workdir, "plyvel-loop")
    db = plyvel.DB(path, create_if_missing=True)
    lock = threading.Lock()
    state = {"counter": 0}
    try:
        for sync in (False, True):

            def op(k: int, i: int, sync: bool = sync) -> None:
                ex = new_execution("loop")
                with lock:
                    n = state["counter"]
                    state["counter"] = n + 1
                    _write_assign(db, attrs.evolve(ex, index=n), sync)

            out["plyvel_loop_synced" if sync else "plyvel_loop_unsynced"] = rate_entry(
                _rounds(opts, 1, op), "indexes/s", callers=1, sync=sync
            )

        def put(k: int, i: int) -> None:
            db.put(b"fsync-probe", b"%d" % i, sync=True)

        out["fsync_put"] = rate_entry(_rounds(opts, 1, put), "puts/s", callers=1)
    finally:
        db.close()


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)
