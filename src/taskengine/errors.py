"""The exceptions of taskengine: every one derives from :class:`EngineError`.

Defined in ``taskengine.actors.errors``; this module is where users import them from.
"""

from .actors.errors import (
    CorruptRecord,
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidArgument,
    NotADatabase,
    StorageError,
    StorageLocked,
    TaskAlreadyExists,
    TaskNotFound,
    TaskNotRunnable,
    UnknownJob,
    UnknownSchema,
)

__all__ = [
    "CorruptRecord",
    "EngineClosed",
    "EngineError",
    "ExecutionNotFound",
    "ExecutionTimeout",
    "InvalidArgument",
    "NotADatabase",
    "StorageError",
    "StorageLocked",
    "TaskAlreadyExists",
    "TaskNotFound",
    "TaskNotRunnable",
    "UnknownJob",
    "UnknownSchema",
]
