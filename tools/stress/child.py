"""The process ``taskengine stress --crash-every`` kills: an engine and its client actors.

``python -m taskengine.tools.stress.child --db PATH --clients N --tasks M --workers W --counter-actors C --seed S
[--generations JSON]`` opens the engine (which recovers queued work), makes sure the
workload's tasks exist, prints ``{"ev": "ready", ...}`` and starts the clients. Every event
of the workload (``taskengine.tools.stress.workload``) is printed to stdout as one JSON line, flushed,
after the engine has answered it, so a line the parent reads is an acknowledgement the
engine gave. It runs until stdin reaches end of file (or a ``stop`` line, or SIGTERM), then
stops the clients, closes the engine, prints ``{"ev": "closed"}`` and exits 0.

A failure to start (a locked database, a task id taken by another job) prints
``{"ev": "error", "msg": ...}`` and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

from taskengine import Engine
from taskengine.actors.errors import EngineError

from .workload import (
    JOBS,
    NODE_ID,
    Control,
    HidePlannedFailures,
    TaskBook,
    Workload,
    WorkloadError,
    ensure_tasks,
    task_ids,
)


class _Stop(Exception):
    pass


class LineSink:
    """Writes events as JSON lines, one flushed write each (a whole line or nothing reaches
    the pipe when the process is killed, as lines are far below PIPE_BUF)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._encode = json.JSONEncoder(separators=(",", ":")).encode

    def __call__(self, ev: dict[str, Any]) -> None:
        line = self._encode(ev) + "\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskengine.tools.stress.child")
    parser.add_argument("--db", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--counter-actors", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generations", default="{}", help="JSON {task: deletions begun so far}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="stress-child: %(levelname)s %(message)s")
    HidePlannedFailures().__enter__()  # for the life of the process
    sink = LineSink(sys.stdout)

    def on_term(signum: int, frame: Any) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    ids = task_ids(args.tasks)
    t0 = time.perf_counter()
    try:
        engine = Engine.open(args.db, jobs=JOBS, workers=args.workers, counter_actors=args.counter_actors,
                             node_id=NODE_ID)
    except EngineError as e:
        sink({"ev": "error", "msg": f"{type(e).__name__}: {e}"})
        return 2
    workload = None
    try:
        try:
            ensure_tasks(engine, ids)
        except WorkloadError as e:
            sink({"ev": "error", "msg": str(e)})
            return 2
        sink({"ev": "ready", "open_s": round(time.perf_counter() - t0, 6)})
        book = TaskBook(ids, json.loads(args.generations))
        workload = Workload(engine, ids, args.clients, args.seed, sink, Control(None), book)
        workload.start()
        try:
            for line in sys.stdin:
                if line.strip() == "stop":
                    break
        except _Stop:
            pass
        # from here on a SIGTERM must not cut the orderly close
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for problem in workload.stop(close_engine=True):
            sink({"ev": "violation", "msg": problem})
        workload = None
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if workload is not None:
            workload.stop()
    finally:
        engine.close()
    sink({"ev": "closed"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
