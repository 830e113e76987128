"""A node process the multi-node tests kill (SIGKILL) or pause (SIGSTOP) on a PostgreSQL database.

usage: node_child.py URL NODE_ID TASK N

Opens an engine at URL as node NODE_ID (lease 1 s, 2 workers), creates TASK if it does not
exist, triggers N non-blocking executions of job ``hold`` and prints ``ACK <id> <index>`` for
each, then ``READY``. Each job prints ``RUNNING <id>`` and blocks until the line ``GO`` arrives
on stdin, so with N > 2 two executions are RUNNING and the rest PENDING. After ``GO`` the main
thread waits for each acknowledged execution (5 s each) and prints ``WAIT <id> <status or error
type>``, then ``STATS <write_failure>``, then ``TRIGGER <index or error type: message>`` for one
more trigger, then ``DONE``. Exits when stdin is closed.
"""

from __future__ import annotations

import sys
import threading

from taskengine import Engine, JobContext, errors

GO = threading.Event()
PRINT = threading.Lock()


def say(line: str) -> None:
    with PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def hold(ctx: JobContext) -> dict[str, int]:
    say(f"RUNNING {ctx.execution_id}")
    GO.wait(120)
    return {"index": ctx.index}


def read_stdin(closed: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "GO":
            GO.set()
    closed.set()


def main() -> None:
    url, node_id, task_id, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    closed = threading.Event()
    threading.Thread(target=read_stdin, args=(closed,), daemon=True).start()
    engine = Engine.open(url, jobs={"hold": hold}, workers=2, node_id=node_id, node_lease=1.0)
    engine.create_task(task_id, job="hold", exist_ok=True)
    acked = []
    for i in range(n):
        ex = engine.trigger(task_id, data={"i": i})
        acked.append(ex.id)
        say(f"ACK {ex.id} {ex.index}")
    say("READY")
    GO.wait(120)
    for eid in acked:
        try:
            outcome = engine.wait(task_id, eid, timeout=5).status.value
        except errors.EngineError as e:
            outcome = type(e).__name__
        say(f"WAIT {eid} {outcome}")
    say(f"STATS {engine.stats().write_failure}")
    try:
        say(f"TRIGGER {engine.trigger(task_id).index}")
    except errors.EngineError as e:
        say(f"TRIGGER {type(e).__name__}: {e}")
    say("DONE")
    closed.wait()
    engine.close(timeout=1)


if __name__ == "__main__":
    main()
