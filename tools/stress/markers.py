"""Proof that no execution ran twice, across every node of ``stress --nodes``.

Each node process (an *instance*: one run of one node id) gives its jobs a marker file of its
own. The job appends ``S <execution id>`` and fsyncs before it does anything, and ``E <execution
id>`` when it returns or raises; its result names the instance. The database never sees these
files, so they witness what the engine cannot hide:

- an execution whose id is marked ``S`` more than once ran twice (two nodes claimed it, or a
  restart re-ran a RUNNING one);
- a SUCCESS execution has exactly one ``S`` mark, by the instance its result names;
- an execution whose job was running (``S`` without ``E``) on an instance that was SIGKILLed, or
  that was paused past its lease, ends FAILED "interrupted" (or gone with its deleted task):
  never SUCCESS, which a node that lost its lease could only write unfenced.

The driver records how far each paused instance's file went when it stopped it: the executions
in progress at that moment are the ones its late completions must not finish.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from taskengine import ExecutionStatus, JobContext
from taskengine.storage.interface import Store

from .gate import gate_path, hold
from .report import MarkerReport
from .workload import INTERRUPTED_PREFIX, JOB_NAME, stress_job

SUFFIX = ".marks"


def marked_jobs(path: str, instance: str) -> dict[str, Callable[[JobContext], Any]]:
    """The workload's jobs, marking each run in ``path`` (see the module's docstring)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()  # one fsync at a time is enough, and keeps lines whole
    gate = gate_path(path)

    def job(ctx: JobContext) -> Any:
        with lock:
            os.write(fd, f"S {ctx.execution_id}\n".encode())
            os.fsync(fd)
        try:
            hold(gate)  # marked as started: a pause or a cut aimed at the node catches it running
            result = stress_job(ctx)
        finally:
            os.write(fd, f"E {ctx.execution_id}\n".encode())  # O_APPEND: one whole line
        return {**result, "node": instance}

    return {JOB_NAME: job}


def marker_path(directory: str, instance: str) -> str:
    return os.path.join(directory, instance + SUFFIX)


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


@attrs.define
class Marks:
    """One instance's marks: the executions its jobs started, and those that ended."""

    started: list[str] = attrs.Factory(list)
    ended: set[str] = attrs.Factory(set)

    def in_progress(self) -> list[str]:
        return [e for e in self.started if e not in self.ended]


def read_marks(path: str, upto: int | None = None) -> Marks:
    """The marks of one file, up to byte ``upto`` (a line cut there is left out)."""
    marks = Marks()
    data = Path(path).read_bytes() if os.path.exists(path) else b""
    if upto is not None:
        data = data[:upto]
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: cut or empty
        kind, _, eid = line.decode(errors="replace").partition(" ")
        if kind == "S":
            marks.started.append(eid)
        elif kind == "E":
            marks.ended.add(eid)
    return marks


def check_marks(
    store: Store,
    directory: str,
    killed: Iterable[str],
    paused: dict[str, list[int]],
    violation: Callable[[str], None],
    cuts: dict[str, list[int]] | None = None,
) -> MarkerReport:
    """Hold the database to the marker files of ``directory``. ``killed``: instances SIGKILLed;
    ``paused``: instance -> its file's size at each pause (each outlasted its lease); ``cuts``:
    instance -> its file's size just after it was cut off the network (until it lost its lease),
    where every job that had not ended by then (the process ran on: it may have ended since)
    must end FAILED interrupted."""
    report = MarkerReport()
    marks: dict[str, Marks] = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(SUFFIX):
            marks[name[: -len(SUFFIX)]] = read_marks(os.path.join(directory, name))
    report.instances = len(marks)
    runs: dict[str, list[str]] = {}
    for instance, m in marks.items():
        for eid in m.started:
            runs.setdefault(eid, []).append(instance)
    report.runs = sum(len(v) for v in runs.values())
    # what must have ended FAILED "interrupted": jobs cut by a kill, or by a pause past the lease
    must_interrupt: dict[str, str] = {}
    for instance in killed:
        cut = marks.get(instance, Marks()).in_progress()
        report.running_at_kill += len(cut)
        must_interrupt.update(dict.fromkeys(cut, f"running on {instance} when it was SIGKILLed"))
    for instance, sizes in paused.items():
        path = marker_path(directory, instance)
        for size in sizes:
            cut = read_marks(path, size).in_progress()
            report.running_at_pause += len(cut)
            must_interrupt.update(dict.fromkeys(cut, f"running on {instance} when it was paused past its lease"))
    for instance, sizes in (cuts or {}).items():
        whole = marks.get(instance, Marks())
        for size in sizes:
            ended = read_marks(marker_path(directory, instance), size).ended
            running = [e for e in whole.started if e not in ended]
            report.running_at_cut += len(running)
            must_interrupt.update(
                dict.fromkeys(running, f"running on {instance} when it was cut off the network past its lease"))
    seen: set[str] = set()
    for task_id in list(store.iter_task_ids()):
        for ex in store.iter_executions(task_id):
            seen.add(ex.id)
            report.checked += 1
            where = f"execution {ex.id} of {task_id!r} (index {ex.index}, {ex.status.name})"
            ran = runs.get(ex.id, [])
            if len(ran) > 1:
                violation(f"{where}: its job ran {len(ran)} times (on {', '.join(ran)})")
            if ex.status is ExecutionStatus.SUCCESS:
                node = ex.result.get("node") if isinstance(ex.result, dict) else None
                if len(ran) != 1 or ran[0] != node:
                    violation(f"{where}: SUCCESS by {node!r}, but its job's marked runs are {ran}")
            why = must_interrupt.get(ex.id)
            interrupted = ex.status is ExecutionStatus.FAILED and (ex.error or "").startswith(INTERRUPTED_PREFIX)
            if why is not None and not interrupted and ex.status is not ExecutionStatus.CANCELLED:
                violation(f"{where}: {why}, yet it ended {ex.status.name}, not FAILED interrupted "
                          f"({ex.error or ex.result!r})")
    report.gone = sum(len(v) for eid, v in runs.items() if eid not in seen)
    return report


__all__ = ["Marks", "check_marks", "file_size", "marked_jobs", "marker_path", "read_marks"]
