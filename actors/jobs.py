"""Jobs: the user functions executions run, and the context they get."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from .errors import InvalidArgument


@attrs.frozen
class JobContext:
    task_id: str
    execution_id: str
    index: int
    config: Any
    data: Any


Job = Callable[[JobContext], Any]


class JobRegistry:
    """Name -> function, shared by the engine and the executors. Jobs are only ever added,
    so a lookup that succeeded once stays valid."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, name: str, fn: Job) -> None:
        if not isinstance(name, str) or not name or not name.isprintable():
            raise InvalidArgument("job name must be a non-empty printable string")
        if not callable(fn):
            raise InvalidArgument(f"job {name!r} must be callable")
        with self._lock:
            self._jobs[name] = fn

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._jobs
