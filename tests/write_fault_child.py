"""The process ``test_write_faults.py`` runs with a failed write(2) or fsync injected (LD_PRELOAD).

usage: write_fault_child.py SCENARIO DB

Prints one line per event on stdout (a pipe, outside the file system under test), then
``DONE`` and exits without closing (as a node that dies after the failure would):

    ACK <task> <execution id> <index>          an acknowledged execution
    FAILED <task> <key> <outcome_unknown 0|1> <message>   the write that failed
    REFUSED <count> <distinct> <max frames>    later calls: all refused, fresh exceptions
    WAITER <name> <exception type or OK> <outcome_unknown> <message>   a waiter's answer
    STATS <json>                               stats() after the failure

Scenarios:
- ``acks``: two counter actors; two tasks on each; the one worker held by a job that never
  returns, so every later write holds callers' triggers; four threads trigger with idempotency
  keys until the first failure, then call on (refused) a while. Tasks ``t0``, ``t1`` hash to
  one counter actor and ``t4``, ``t5`` to the other.
- ``waiters``: one worker blocked on a gate; then a blocking trigger with no timeout, one with a
  long timeout, and ``wait()`` with no timeout on an acknowledged PENDING execution, all
  queued behind it with more work; then triggers until a write fails. Every waiter must be
  answered; then the gate opens and the freed worker must not churn through the queued work.
- ``started``: four idle workers and no-op jobs, one caller: each trigger's write starts its
  execution on an idle executor (held for it until the write is durable); triggers until a write
  fails. The executors held for the failed write must be let go: ``running`` falls to 0 and the
  engine closes (``CLOSED``).
- ``open``: create a new database (``OPENED``, or ``OPENFAIL <exception class> <message>``).
"""

from __future__ import annotations

import json
import sys
import threading
import traceback

from taskengine import Engine, errors

GATE = threading.Event()
PRINT = threading.Lock()
ACK_TASKS = ("t0", "t4", "t1", "t5")
AFTER_FAILURE = 200  # calls each thread makes after the failure
MAX_TRIGGERS = 500  # a thread that is never refused stops there


def say(*parts: object) -> None:
    with PRINT:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()


def job(ctx):  # type: ignore[no-untyped-def]
    if ctx.data and ctx.data.get("gate"):
        GATE.wait()
    return None


def acks(path: str) -> None:
    engine = Engine.open(path, jobs={"j": job}, counter_actors=2, workers=1)
    for t in ACK_TASKS:
        engine.create_task(t, job="j")
    engine.trigger("t0", data={"gate": True})  # holds the only worker: every later write is a caller's
    while engine.stats().running < 1:
        threading.Event().wait(0.01)
    say("READY")
    refused: list[BaseException] = []

    def caller(task: str) -> None:
        for n in range(1, MAX_TRIGGERS + 1):
            key = f"{task}-{n}"
            try:
                ex = engine.trigger(task, idempotency_key=key)
            except errors.StorageError as e:
                say("FAILED", task, key, int(getattr(e, "outcome_unknown", False)), str(e).replace("\n", " "))
                break
            say("ACK", task, ex.id, ex.index)
        else:
            return
        for _ in range(AFTER_FAILURE):
            try:
                ex = engine.trigger(task)
            except errors.StorageError as e:
                refused.append(e)
            else:
                say("ACK", task, ex.id, ex.index)
                say("ACCEPTED-AFTER-FAILURE", task)

    threads = [threading.Thread(target=caller, args=(t,)) for t in ACK_TASKS]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    frames = max((len(traceback.extract_tb(e.__traceback__)) for e in refused), default=0)
    unknown = sum(1 for e in refused if getattr(e, "outcome_unknown", True))
    say("REFUSED", len(refused), len({id(e) for e in refused}), frames, unknown)
    say("STATS", json.dumps(engine.stats().to_json()))


def waiters(path: str) -> None:
    engine = Engine.open(path, jobs={"j": job}, workers=1)
    for t in ("gate", "b", "p", "q", "x"):
        engine.create_task(t, job="j")
    engine.trigger("gate", data={"gate": True})  # holds the only worker
    pending = engine.trigger("p")  # acknowledged, PENDING behind the gate
    for _ in range(10):  # more queued work: the executor must not churn through it after the failure
        engine.trigger("q")
    say("READY")

    def waiter(name: str, call) -> None:  # type: ignore[no-untyped-def]
        try:
            call()
        except Exception as e:  # noqa: BLE001 - reported to the test
            text = str(e).replace("\n", " ")
            say("WAITER", name, type(e).__name__, int(getattr(e, "outcome_unknown", False)), text)
        else:
            say("WAITER", name, "OK", 0, "")

    calls = {
        "blocking": lambda: engine.trigger("b", blocking=True),
        "blocking-timeout": lambda: engine.trigger("b", blocking=True, timeout=3600),
        "wait": lambda: engine.wait("p", pending.id),
    }
    threads = [threading.Thread(target=waiter, args=item, daemon=True) for item in calls.items()]
    for th in threads:
        th.start()
    while engine.stats().queued_blocking < 2 or engine.stats().waiters < 3:  # all are waiting
        threading.Event().wait(0.01)
    say("WAITING")
    try:
        while True:
            engine.trigger("x")
    except errors.StorageError as e:
        say("FAILED", "x", "-", int(getattr(e, "outcome_unknown", False)), str(e).replace("\n", " "))
    for th in threads:
        th.join(60)
        if th.is_alive():
            say("HUNG")
    GATE.set()  # the one worker is free again, with work queued before the failure
    for _ in range(3000):
        stats = engine.stats()
        if not stats.running and not stats.queued:
            break
        threading.Event().wait(0.01)
    say("STATS", json.dumps(engine.stats().to_json()))
    engine.close(timeout=60)  # a failed engine still closes, and frees its database
    Engine.open(path).close()
    say("CLOSED")


def started(path: str) -> None:
    engine = Engine.open(path, jobs={"j": job}, workers=4)
    engine.create_task("s", job="j")
    say("READY")
    try:
        while True:
            ex = engine.trigger("s")
            say("ACK", "s", ex.id, ex.index)
    except errors.StorageError as e:
        say("FAILED", "s", "-", int(getattr(e, "outcome_unknown", False)), str(e).replace("\n", " "))
    for _ in range(1000):
        if not engine.stats().running:
            break
        threading.Event().wait(0.01)
    say("STATS", json.dumps(engine.stats().to_json()))
    engine.close(timeout=20)
    say("CLOSED")


def open_new(path: str) -> None:
    try:
        Engine.open(path).close()
    except Exception as e:  # noqa: BLE001 - the test checks what kind it is
        say("OPENFAIL", f"{type(e).__module__}.{type(e).__qualname__}", str(e).replace("\n", " "))
    else:
        say("OPENED")


def main() -> None:
    scenario, path = sys.argv[1], sys.argv[2]
    try:
        {"acks": acks, "waiters": waiters, "started": started, "open": open_new}[scenario](path)
    except Exception:  # noqa: BLE001 - the test shows it
        say("CRASH", traceback.format_exc().replace("\n", " | "))
    say("DONE")
    sys.stdout.flush()
    import os

    os._exit(0)


if __name__ == "__main__":
    main()
