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

As one node of ``stress --nodes`` (``--node-id``, with ``--slot``, ``--book`` and ``--markers``):
the engine opens with that node id and lease, its jobs mark each run in the marker file
(``taskengine.tools.stress.markers``), its clients share the task book of every node
(``taskengine.tools.stress.shared``), numbered from ``--first-client``. A write the engine
refuses (a ``StorageError``: the node lost its lease while paused, and is fenced) is printed as
``{"ev": "refused", "msg": ...}`` and ends the node: it closes and exits 3, and the driver
decides whether that was expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import attrs

from taskengine import Engine
from taskengine.actors.errors import EngineError, StorageError

from .markers import SUFFIX, marked_jobs
from .shared import SharedTaskBook
from .workload import (
    JOBS,
    NODE_ID,
    NODE_SETTINGS,
    Control,
    HidePlannedFailures,
    Settings,
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


def _open(args: argparse.Namespace, jobs: Any) -> Engine:
    kwargs: dict[str, Any] = {"node_id": NODE_ID}
    if args.node_id is not None:
        kwargs = {"node_id": args.node_id, "node_lease": args.lease}
    if args.max_queued is not None:
        kwargs["max_queued"] = args.max_queued
    if args.keep_last is not None:
        kwargs["keep_last"] = args.keep_last
    return Engine.open(args.db, jobs=jobs, workers=args.workers, counter_actors=args.counter_actors, **kwargs)


def _node_book(engine: Engine, path: str, ids: list[str], slot: int) -> SharedTaskBook:
    """The cluster's task book, and the tasks made that should exist: with the book held, so no
    deletion begins or ends meanwhile, the missing tasks that no other node is deleting (it
    creates them again itself), and those whose deletion an earlier node of this slot began and
    never finished (the driver made sure that node is gone from the server), that deletion
    then counted as done."""
    book = SharedTaskBook(path, ids, slot)
    with book.held():
        mine = dict(book.unfinished())
        ensure_tasks(engine, [t for t in ids if t in mine or not book.busy(t)])
        for task, n in mine.items():
            book.end_delete(task, n)
    return book


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskengine.tools.stress.child")
    parser.add_argument("--db", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--counter-actors", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generations", default="{}", help="JSON {task: deletions begun so far}")
    parser.add_argument("--node-id", default=None, help="run as this node of a cluster")
    parser.add_argument("--lease", type=float, default=None, help="the node's lease, seconds")
    parser.add_argument("--slot", type=int, default=1, help="the node's place in the cluster (1..N)")
    parser.add_argument("--book", default=None, help="the cluster's shared task book")
    parser.add_argument("--markers", default=None, help="the file this node's jobs mark their runs in")
    parser.add_argument("--first-client", type=int, default=0)
    parser.add_argument("--delete-probability", type=float, default=None)
    parser.add_argument("--max-queued", type=int, default=None, help="the engine's backpressure bound")
    parser.add_argument("--keep-last", type=int, default=None, help="the engine's retention policy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="stress-child: %(levelname)s %(message)s")
    HidePlannedFailures().__enter__()  # for the life of the process
    sink = LineSink(sys.stdout)
    stop = threading.Event()
    refused: list[str] = []

    def on_term(signum: int, frame: Any) -> None:
        raise _Stop()

    def node_sink(ev: dict[str, Any]) -> None:
        sink(ev)
        if ev.get("ev") == "refused":
            refused.append(str(ev.get("msg")))
            stop.set()

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    ids = task_ids(args.tasks)
    jobs: Any = JOBS
    settings = Settings()
    if args.node_id is not None:
        jobs = marked_jobs(args.markers, os.path.basename(args.markers).removesuffix(SUFFIX))
        settings = NODE_SETTINGS
    if args.delete_probability is not None:
        settings = attrs.evolve(settings, delete_probability=args.delete_probability)
    t0 = time.perf_counter()
    try:
        engine = _open(args, jobs)
    except EngineError as e:
        sink({"ev": "error", "msg": f"{type(e).__name__}: {e}"})
        return 2
    workload = None
    try:
        book: TaskBook
        try:
            if args.book is not None:
                book = _node_book(engine, args.book, ids, args.slot)
            else:
                ensure_tasks(engine, ids)
                book = TaskBook(ids, json.loads(args.generations))
        except WorkloadError as e:
            sink({"ev": "error", "msg": str(e)})
            return 2
        except StorageError as e:
            if args.node_id is None:
                raise
            # a node paused past its lease before it was ready: the driver judges
            node_sink({"ev": "refused", "msg": f"creating the tasks: {type(e).__name__}: {e}"})
            return 3
        sink({"ev": "ready", "open_s": round(time.perf_counter() - t0, 6), "epoch": engine.stats().node_epoch})
        workload = Workload(engine, ids, args.clients, args.seed, node_sink, Control(None), book, settings,
                            first_client=args.first_client)
        workload.start()
        threading.Thread(target=read_stdin, name="stress-child-stdin", daemon=True).start()
        try:
            while not stop.wait(0.5):  # a timeout, so SIGTERM's handler gets to run
                pass
        except _Stop:
            pass
        # from here on a SIGTERM must not cut the orderly close
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for problem in workload.stop(close_engine=True):
            if not refused:  # a fenced engine's close may fail in many ways: the driver judges
                sink({"ev": "violation", "msg": problem})
        workload = None
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if workload is not None:
            workload.stop()
    finally:
        with contextlib.suppress(EngineError):
            engine.close()
    sink({"ev": "closed"})
    return 3 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
