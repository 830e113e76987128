"""LevelDB storage of taskengine: key layout, record codec, readers and the group-commit writer.

Knows nothing of actors, so replay and inspect tools can use it alone.
"""

from .db import Database
from .errors import CorruptRecord, NotADatabase, StorageError, StorageLocked, UnknownSchema
from .records import Execution, ExecutionStatus, Task, TaskStatus
from .writer import GroupCommitWriter, WriterFailed

__all__ = [
    "CorruptRecord",
    "Database",
    "Execution",
    "ExecutionStatus",
    "GroupCommitWriter",
    "NotADatabase",
    "StorageError",
    "StorageLocked",
    "Task",
    "TaskStatus",
    "UnknownSchema",
    "WriterFailed",
]
