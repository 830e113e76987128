"""taskengine: an actor-model engine that runs executions of tasks and gives each a
sequential index that is unique, gap-free, stable and durable (see README.md).

The parts live in subpackages: ``taskengine.storage`` (the database and its format, no
actors), ``taskengine.actors`` (the actors and the :class:`Engine`), ``taskengine.tools``
(the ``taskengine`` command). This module is the public API. Its names are loaded on first
use, so a program that only reads a database (``taskengine.storage``, ``taskengine replay``)
never imports the actor layer or pykka.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from . import errors
    from .actors.engine import Engine
    from .actors.hooks import Hooks
    from .actors.jobs import JobContext
    from .actors.stats import EngineStats
    from .errors import (
        CorruptRecord,
        EngineClosed,
        EngineError,
        ExecutionNotFound,
        ExecutionTimeout,
        InvalidArgument,
        QueueFull,
        StorageError,
        StorageLocked,
        TaskAlreadyExists,
        TaskNotFound,
        TaskNotRunnable,
        UnknownJob,
    )
    from .storage import Execution, ExecutionStatus, Task, TaskStatus

#: public name -> the module (relative to this package) that defines it
_HOME = {
    "Engine": ".actors.engine",
    "JobContext": ".actors.jobs",
    "Hooks": ".actors.hooks",
    "EngineStats": ".actors.stats",
    "Execution": ".storage",
    "ExecutionStatus": ".storage",
    "Task": ".storage",
    "TaskStatus": ".storage",
    **dict.fromkeys(
        (
            "CorruptRecord", "EngineClosed", "EngineError", "ExecutionNotFound", "ExecutionTimeout",
            "InvalidArgument", "QueueFull", "StorageError", "StorageLocked", "TaskAlreadyExists", "TaskNotFound",
            "TaskNotRunnable", "UnknownJob",
        ),
        ".errors",
    ),
}


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CorruptRecord",
    "Engine",
    "EngineClosed",
    "EngineError",
    "EngineStats",
    "Execution",
    "ExecutionNotFound",
    "ExecutionStatus",
    "ExecutionTimeout",
    "Hooks",
    "InvalidArgument",
    "JobContext",
    "QueueFull",
    "StorageError",
    "StorageLocked",
    "Task",
    "TaskAlreadyExists",
    "TaskNotFound",
    "TaskNotRunnable",
    "TaskStatus",
    "UnknownJob",
    "__version__",
    "errors",
]
