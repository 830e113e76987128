"""Jobs: the user functions executions run, and the context they get."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from . import validate
from .errors import InvalidArgument
from .jobloop import JobLoop


@attrs.frozen
class JobContext:
    task_id: str
    execution_id: str
    index: int
    config: Any
    data: Any


#: a job is a function of its context, or an ``async def`` one (it then runs on an event loop)
Job = Callable[[JobContext], Any]


class JobRegistry:
    """Name -> function, shared by the engine and the executors. Jobs are only ever added,
    so a lookup that succeeded once stays valid. ``loop`` is where async jobs run."""

    def __init__(self, loop: JobLoop | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.loop = loop

    def add(self, name: str, fn: Job) -> None:
        name = validate.job_name(name)
        if not callable(fn):
            raise InvalidArgument(f"job {name!r} must be callable")
        with self._lock:
            self._jobs[name] = fn

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def names(self) -> list[str]:
        return list(self._jobs)

    def __contains__(self, name: object) -> bool:
        return name in self._jobs
