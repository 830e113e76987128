"""Databases for the tools tests, built with the storage API only (no engine, no actors).

A :class:`DbBuilder` writes the same atomic changes the engine writes (``storage.changes``)
so a database it builds is sound; tests then break it on purpose with raw puts and deletes
to see that replay names what is wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ulid import ULID

from taskengine import storage
from taskengine.storage import Database, Execution, ExecutionStatus, Task, keys

REPO = Path(__file__).resolve().parent.parent

S = ExecutionStatus.SUCCESS
F = ExecutionStatus.FAILED
C = ExecutionStatus.CANCELLED
P = ExecutionStatus.PENDING
R = ExecutionStatus.RUNNING


def new_id() -> str:
    return str(ULID())


class DbBuilder:
    """Writes tasks and executions through ``storage.changes``; close it before running a tool."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.db = storage.open_store(self.path, create=True)  # a LevelDB path or a PostgreSQL URL
        self.committer = self.db.writer(sync=False)
        self.changes = self.db.changes
        self.counters: dict[str, int] = {}

    def __enter__(self) -> DbBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def task(self, task_id: str, *, job: str = "job", max_executions: int | None = None) -> Task:
        task = Task(
            id=task_id, job=job, config={"k": 1}, max_executions=max_executions, created_at=1.0e9, incarnation=new_id()
        )
        self.committer.write([self.changes.create_task(task)])
        self.counters[task_id] = 0
        return task

    def execution(
        self,
        task_id: str,
        status: ExecutionStatus = S,
        *,
        idempotency_key: str | None = None,
        execution_id: str | None = None,
        error: str | None = None,
        blocking: bool | None = None,
    ) -> Execution:
        """Assign the task's next index to a new execution with ``status`` (blocking if the index is
        even, unless told)."""
        if task_id not in self.counters:  # a task made by an earlier builder
            self.counters[task_id] = self.db.read_counter(task_id)
        index = self.counters[task_id]
        finished = status.is_finished
        ex = Execution(
            id=execution_id or new_id(),
            task_id=task_id,
            index=index,
            status=status,
            blocking=index % 2 == 0 if blocking is None else blocking,
            data={"n": index, "text": "ünïcode"},
            result={"ok": True} if status is S else None,
            error=error if error is not None else ("ValueError: boom" if status is F else None),
            created_at=1.0e9 + index,
            started_at=1.0e9 + index + 0.5 if status is not P else None,
            finished_at=1.0e9 + index + 0.75 if finished else None,
            idempotency_key=idempotency_key,
        )
        self.committer.write([self.changes.assign(ex)])
        self.counters[task_id] = index + 1
        return ex

    def executions(self, task_id: str, *statuses: ExecutionStatus, blocking: bool | None = None) -> list[Execution]:
        return [self.execution(task_id, s, blocking=blocking) for s in statuses]

    def prune(self, task_id: str, mark: int) -> list[Execution]:
        """Prune the task's finished executions below ``mark`` (as far as they are finished)."""
        start = self.db.read_prune_mark(task_id)
        run = self.db.finished_run(task_id, start, mark)
        self.committer.write([self.changes.prune(task_id, run, start + len(run))])
        return run

    def delete_task(self, task_id: str) -> None:
        self.committer.write([self.changes.delete_task(task_id)])

    def put(self, key: bytes, value: bytes) -> None:
        assert isinstance(self.db, Database)  # raw keys: LevelDB only
        self.db.raw.put(key, value)

    def delete(self, key: bytes) -> None:
        assert isinstance(self.db, Database)
        self.db.raw.delete(key)


def standard_db(path: str | os.PathLike[str]) -> dict[str, list[Execution]]:
    """Three sound tasks: ``alpha`` (finished work of every kind), ``beta`` (unfinished work and
    an idempotency key) and ``empty`` (no executions, max_executions 5)."""
    with DbBuilder(path) as b:
        b.task("alpha")
        alpha = b.executions("alpha", S, S, F, C, S)
        b.task("beta", max_executions=10)
        beta = [b.execution("beta", S, idempotency_key="once"), b.execution("beta", P), b.execution("beta", R)]
        b.task("empty", max_executions=5)
    return {"alpha": alpha, "beta": beta, "empty": []}


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m taskengine.tools.cli ARGS`` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "taskengine.tools.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table(stdout: str, *, before: int = 0) -> dict[str, dict[str, Any]]:
    """Rows of the table a tool printed, by first column (header names are the keys).

    The tools print ``before`` lines, then the table, then one closing line."""
    lines = [line for line in stdout.splitlines() if line.strip()][before:-1]
    header = lines[0].split()
    rows: dict[str, dict[str, Any]] = {}
    for line in lines[1:]:
        cells = line.split()
        if len(cells) < len(header):
            continue
        # the first column may hold spaces ("x (no task record)"): take the others from the right
        values = [" ".join(cells[: len(cells) - len(header) + 1]), *cells[len(cells) - len(header) + 1 :]]
        rows[values[0]] = dict(zip(header, values, strict=True))
    return rows


def execution_key(task_id: str, index: int) -> bytes:
    return keys.execution_key(task_id, index)
