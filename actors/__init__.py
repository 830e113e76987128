"""taskengine: an actor-model engine that runs executions of tasks and gives each a
sequential index that is unique, gap-free, stable and durable (see README.md)."""

from storage import Execution, ExecutionStatus, Task, TaskStatus

from . import errors
from .engine import Engine
from .errors import (
    CorruptRecord,
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidArgument,
    StorageError,
    StorageLocked,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
)
from .jobs import JobContext

__all__ = [
    "CorruptRecord",
    "Engine",
    "EngineClosed",
    "EngineError",
    "Execution",
    "ExecutionNotFound",
    "ExecutionStatus",
    "ExecutionTimeout",
    "InvalidArgument",
    "JobContext",
    "StorageError",
    "StorageLocked",
    "Task",
    "TaskAlreadyExists",
    "TaskNotFound",
    "TaskNotRunnable",
    "TaskStatus",
    "UnknownJob",
    "errors",
]
