"""Opens an engine on a PostgreSQL URL with room for 0, 1, 2, ... more threads, until one open
succeeds, and says after each failed open what it left (thread-limit tests).

usage: thread_budget_child.py URL  (run with MALLOC_ARENA_MAX=1)

Each new thread's stack is made large (``threading.stack_size``) and the address space limited
(RLIMIT_AS) to what the process maps now, plus ``ROOM`` for everything but stacks, plus ``k``
stacks: the ``k+1``-th thread the open starts is refused by the system, as in a process at its
limit of threads. Prints one JSON line per attempt: ``k``, the outcome (the exception's class
and message, or "opened"), and what was left once the threads the open started had ended:
threads, file descriptors, and whether the node's row still holds a lease.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any

import psycopg

from taskengine import Engine, JobContext, errors

STACK = 256 * 2**20
#: for the allocations of an open other than thread stacks (far more than one takes)
ROOM = 128 * 2**20
NODE = "thread-budget"
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


def job(ctx: JobContext) -> int:
    return ctx.index


def mapped() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle(python_threads: set[threading.Thread], count: int) -> int:
    """Wait (5 s at most) for the threads an open left to end: the Python ones, then the system's,
    whose stacks are unmapped as they end. How many system threads are left."""
    deadline = time.monotonic() + 5
    for t in threading.enumerate():
        if t not in python_threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
    while os_threads() > count and time.monotonic() < deadline:
        time.sleep(0.005)  # a thread past its Python end is in its last system calls
    return os_threads() - count


def lease(check: Any) -> Any:
    row = check.execute("SELECT alive FROM taskengine.nodes WHERE id = %s", (NODE,)).fetchone()
    return None if row is None else row[0]


def main() -> None:
    url = sys.argv[1]
    Engine.open(url, workers=1, jobs={"j": job}).close()  # everything imported, the schema made
    check = psycopg.connect(url, autocommit=True)
    threading.stack_size(STACK)
    python_threads, count, open_fds = set(threading.enumerate()), os_threads(), fds()
    for k in range(64):
        resource.setrlimit(resource.RLIMIT_AS, (mapped() + ROOM + k * STACK, resource.RLIM_INFINITY))
        try:
            engine = Engine.open(url, workers=1, counter_actors=1, node_id=NODE, jobs={"j": job})
        except errors.EngineError as e:
            outcome = f"{type(e).__name__}: {e}"
        else:
            outcome = "opened"
        resource.setrlimit(resource.RLIMIT_AS, UNLIMITED)
        if outcome == "opened":
            with engine:
                engine.create_task("t", job="j", exist_ok=True)
                result = engine.trigger("t", blocking=True, timeout=30).result
            print(json.dumps({"k": k, "outcome": outcome, "result": result, "alive": lease(check)}), flush=True)
            return
        left = settle(python_threads, count)
        print(json.dumps({"k": k, "outcome": outcome, "threads": left, "fds": fds() - open_fds,
                          "alive": lease(check)}), flush=True)


if __name__ == "__main__":
    main()
