"""A node process that triggers one task from several threads as fast as it can, for the tests
that pause it (SIGSTOP) in the middle of a write on a PostgreSQL database.

usage: trigger_child.py URL NODE_ID TASK THREADS LEASE

Opens an engine at URL as node NODE_ID (lease LEASE seconds), creates TASK (job ``noop``) if it
does not exist, prints ``READY``, and then each of THREADS threads triggers TASK (non-blocking)
in a loop, printing ``ACK <id> <index>`` for each acknowledged execution, until the line ``STOP``
arrives on stdin or a trigger fails (then ``ERR <type>: <message>``, and that thread ends).
Once every thread has ended it prints ``DONE`` and exits when stdin is closed.
"""

from __future__ import annotations

import sys
import threading

from node_child import say  # one line at a time to the test, from any thread
from taskengine import Engine, JobContext, errors

STOP = threading.Event()


def noop(ctx: JobContext) -> None:
    return None


def read_stdin(closed: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "STOP":
            STOP.set()
    STOP.set()
    closed.set()


def trigger_loop(engine: Engine, task_id: str) -> None:
    while not STOP.is_set():
        try:
            ex = engine.trigger(task_id)
        except errors.EngineError as e:
            say(f"ERR {type(e).__name__}: {e}")
            return
        say(f"ACK {ex.id} {ex.index}")


def main() -> None:
    url, node_id, task_id, threads, lease = sys.argv[1:6]
    closed = threading.Event()
    threading.Thread(target=read_stdin, args=(closed,), daemon=True).start()
    engine = Engine.open(url, jobs={"noop": noop}, node_id=node_id, node_lease=float(lease))
    engine.create_task(task_id, job="noop", exist_ok=True)
    say("READY")
    workers = [threading.Thread(target=trigger_loop, args=(engine, task_id)) for _ in range(int(threads))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    say("DONE")
    closed.wait()
    engine.close(timeout=1)


if __name__ == "__main__":
    main()
