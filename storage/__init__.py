"""Storage of taskengine: one interface (``interface.Store``) and its backends, the embedded
LevelDB one (a path: key layout, record codec, readers, group-committed writes) and the
PostgreSQL one (a ``postgresql://`` URL, ``postgres.py``).

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
from .interface import Changes, Store, Writer, is_url, open_store, shown
from .records import Execution, ExecutionStatus, Task, TaskStatus

__all__ = [
    "Changes",
    "Store",
    "Writer",
    "is_url",
    "open_store",
    "shown",
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
