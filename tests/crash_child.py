"""A process the crash tests kill with SIGKILL (the nothing-lost guarantee).

usage: crash_child.py DB TASK MODE [THREADS]

Opens an engine at DB (sync=True, 2 workers), creates TASK if it does not exist, prints
``READY``, then triggers until killed, printing one line per acknowledged execution:

    ACK <execution id> <index> <kind> <blocking 0|1>

kind ``fast`` returns at once; kind ``block`` blocks forever, so at the kill some executions
are finished, two are RUNNING and the rest are PENDING; kind ``slow`` takes 20 ms.

MODE ``nonblocking``: one thread, non-blocking triggers only (every ack is a PENDING execution
with its index). MODE ``mixed``: THREADS threads, blocking and non-blocking triggers (fast and
slow jobs only, so blocking triggers can finish). MODE ``multi``: the same over four tasks
whose ids share TASK as prefix, one thread deleting and re-creating them (``DEL <task>``). MODE ``prune``:
THREADS threads trigger (mixed, fast jobs), the engine's retention policy keeps the last 5, and one
more thread prunes in a loop in steps of 5 executions, printing ``PRUNED <removed> <mark>`` after each
prune returns (the mark it read afterwards is durable). Exits when stdin is closed. The engine
opens as node ``crash-child``.
"""

from __future__ import annotations

import sys
import threading

from taskengine import Engine, errors

FOREVER = threading.Event()
#: the node id of every life of this child (tests reopen the database under it)
NODE_ID = "crash-child"
PRINT = threading.Lock()


def job(ctx):  # type: ignore[no-untyped-def]
    if ctx.data["kind"] == "block":
        FOREVER.wait()
    elif ctx.data["kind"] == "slow":
        FOREVER.wait(0.02)  # a slow job, so some are RUNNING when the process is killed
    return {"ran": "child", "index": ctx.index}


def say(line: str) -> None:
    with PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    path, task_id, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    n_threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    if mode == "prune":
        from taskengine.actors import retention

        retention.PRUNE_CHUNK = 5  # many small prune writes: a kill lands in the middle of one
    keep_last = 5 if mode == "prune" else None
    # a restarted node keeps its node id (as under systemd): on PostgreSQL the restart takes over
    # from the killed process at once, rather than after its lease
    engine = Engine.open(path, jobs={"crashjob": job}, workers=2, sync=True, keep_last=keep_last, node_id=NODE_ID)
    engine.create_task(task_id, job="crashjob", exist_ok=True)
    say("READY")

    if mode == "nonblocking":
        for i in range(100_000):
            kind = "fast" if (i < 4 or i % 3 == 0) else "block"
            ex = engine.trigger(task_id, data={"kind": kind, "seq": i}, blocking=False)
            say(f"ACK {ex.id} {ex.index} {kind} 0")
    elif mode == "mixed":

        def client(c: int) -> None:
            for i in range(100_000):
                blocking = (c + i) % 2 == 0
                kind = "slow" if i % 4 == 0 else "fast"
                ex = engine.trigger(task_id, data={"kind": kind, "c": c, "seq": i}, blocking=blocking, timeout=60)
                say(f"ACK {ex.id} {ex.index} {kind} {int(blocking)}")

        for c in range(n_threads):
            threading.Thread(target=client, args=(c,), daemon=True).start()
    elif mode == "multi":
        tasks = [task_id + suffix for suffix in ("", ":", ":1", "/x")]
        for tid in tasks:
            try:
                engine.create_task(tid, job="crashjob")
            except errors.TaskAlreadyExists:
                pass

        def multi(c: int) -> None:
            for i in range(100_000):
                tid = tasks[(c * 7 + i) % len(tasks)]
                try:
                    if c == 0 and i % 25 == 24:
                        engine.delete_task(tid)
                        say(f"DEL {tid}")
                        engine.create_task(tid, job="crashjob")
                        continue
                    blocking = (c + i) % 2 == 0
                    kind = "fast" if blocking or i % 4 else "slow"
                    ex = engine.trigger(tid, data={"kind": kind, "c": c}, blocking=blocking, timeout=60)
                    say(f"ACK {ex.id} {ex.index} {kind} {int(blocking)} {tid}")
                except (errors.TaskNotFound, errors.TaskAlreadyExists):
                    pass

        for c in range(n_threads):
            threading.Thread(target=multi, args=(c,), daemon=True).start()
    elif mode == "prune":

        def pruner() -> None:
            while True:
                removed = engine.prune(task_id, keep_last=3)
                say(f"PRUNED {removed} {engine.get_task(task_id).prune_mark}")

        def triggers(c: int) -> None:
            for i in range(100_000):
                blocking = (c + i) % 3 == 0
                ex = engine.trigger(task_id, data={"kind": "fast", "c": c}, blocking=blocking, timeout=60)
                say(f"ACK {ex.id} {ex.index} fast {int(blocking)}")

        threading.Thread(target=pruner, daemon=True).start()
        for c in range(n_threads):
            threading.Thread(target=triggers, args=(c,), daemon=True).start()
    sys.stdin.read()  # the parent closes stdin (or kills us)


if __name__ == "__main__":
    main()
