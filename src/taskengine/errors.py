"""The exceptions of taskengine: every one derives from :class:`EngineError`.

Defined in ``taskengine.actors.errors``; this module is where users import them from.
"""

from .actors.errors import (
    CorruptRecord,
    DatabaseDamaged,
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidArgument,
    NotADatabase,
    QueueFull,
    ReadOnlyDatabase,
    StorageError,
    StorageLocked,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
    UnknownSchema,
    WriteFailed,
)

__all__ = [
    "CorruptRecord",
    "DatabaseDamaged",
    "EngineClosed",
    "EngineError",
    "ExecutionNotFound",
    "ExecutionTimeout",
    "InvalidArgument",
    "NotADatabase",
    "QueueFull",
    "ReadOnlyDatabase",
    "StorageError",
    "StorageLocked",
    "TaskAlreadyExists",
    "TaskNotFound",
    "TaskNotRunnable",
    "UnknownJob",
    "UnknownSchema",
    "WriteFailed",
]
