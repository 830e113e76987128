"""LevelDB storage of taskengine: key layout, record codec, readers, and group-committed writes.

Knows nothing of actors, so replay and inspect tools can use it alone.
"""

from .batch import Committer, DeletePrefix, WriteFailed
from .db import Database
from .errors import CorruptRecord, NotADatabase, StorageError, StorageLocked, UnknownSchema
from .records import Execution, ExecutionStatus, Task, TaskStatus

__all__ = [
    "CorruptRecord",
    "Database",
    "Execution",
    "ExecutionStatus",
    "Committer",
    "DeletePrefix",
    "NotADatabase",
    "StorageError",
    "StorageLocked",
    "Task",
    "TaskStatus",
    "UnknownSchema",
    "WriteFailed",
]
