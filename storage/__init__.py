"""LevelDB storage of taskengine: key layout, record codec, readers, and group-committed writes.

Knows nothing of actors, so replay and inspect tools can use it alone.
"""

from .batch import Committer, DeletePrefix
from .db import Database
from .errors import (
    CorruptRecord,
    DatabaseDamaged,
    NotADatabase,
    ReadOnlyDatabase,
    StorageError,
    StorageLocked,
    UnknownSchema,
    WriteFailed,
)
from .records import Execution, ExecutionStatus, Task, TaskStatus

__all__ = [
    "CorruptRecord",
    "Database",
    "DatabaseDamaged",
    "Execution",
    "ExecutionStatus",
    "Committer",
    "DeletePrefix",
    "NotADatabase",
    "ReadOnlyDatabase",
    "StorageError",
    "StorageLocked",
    "Task",
    "TaskStatus",
    "UnknownSchema",
    "WriteFailed",
]
