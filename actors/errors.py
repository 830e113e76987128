"""The engine's exceptions: one hierarchy under ``EngineError``.

Storage errors are re-raised as the subclasses here that also derive from the
storage class, so ``except actors.errors.StorageLocked`` and
``except storage.StorageLocked`` both work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import taskengine.storage.errors as _st


class EngineError(Exception):
    """Base of every error the engine raises."""


class TaskNotFound(EngineError):
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id!r} not found")


class TaskAlreadyExists(EngineError):
    """``difference`` (with ``create_task(..., exist_ok=True)``) says how the existing task differs."""

    def __init__(self, task_id: str, difference: str | None = None) -> None:
        self.task_id = task_id
        self.difference = difference
        detail = f" with a different {difference}" if difference else ""
        super().__init__(f"task {task_id!r} already exists{detail}")


class TaskNotRunnable(EngineError):
    """The task has been given ``max_executions`` indexes (it is COMPLETED)."""


class QueueFull(EngineError):
    """A trigger over the engine's ``max_queued`` bound: it was refused, nothing was triggered and no
    index was used. Retry once executions have started (backpressure)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"{limit} executions are queued and not started, the engine's max_queued; the trigger was "
            "refused (no index used): retry later"
        )


class ExecutionNotFound(EngineError):
    def __init__(self, task_id: str, execution_id: str) -> None:
        self.task_id = task_id
        self.execution_id = execution_id
        super().__init__(f"execution {execution_id!r} of task {task_id!r} not found")


class UnknownJob(EngineError):
    def __init__(self, job: str) -> None:
        self.job = job
        super().__init__(f"no job named {job!r} is registered; register it with Engine.register_job")


class InvalidArgument(EngineError, ValueError):
    pass


def no_thread_left(e: BaseException, what: str) -> InvalidArgument | None:
    """The engine's actors are threads: an open that asks for more than the process can start
    (its thread limit, or memory for their stacks) fails with this, not threading's RuntimeError."""
    if _st.thread_refused(e):
        return InvalidArgument(f"cannot start {what}: {e} (the process is at its limit of threads); "
                               "open the engine with fewer workers or counter_actors")
    return None


class ExecutionTimeout(EngineError, TimeoutError):
    """A blocking trigger or a wait ran out of time; the execution goes on."""

    def __init__(self, execution_id: str, index: int | None, timeout: float | None) -> None:
        self.execution_id = execution_id
        self.index = index
        if index is None:  # queued: no record yet (README: it may never have one)
            detail = ("it goes on, but had not started: it has no record until it does (cancelled, refused, "
                      "or its idempotency key stored first by another node, it never will)")
        else:
            detail = "it goes on running"
        super().__init__(f"execution {execution_id} (index {index}) did not finish within {timeout} s; {detail}")


class EngineClosed(EngineError):
    def __init__(self, detail: str = "the engine is closed") -> None:
        super().__init__(detail)


class StorageError(EngineError, _st.StorageError):
    pass


class StorageLocked(StorageError, _st.StorageLocked):
    pass


class CorruptRecord(StorageError, _st.CorruptRecord):
    pass


class UnknownSchema(StorageError, _st.UnknownSchema):
    pass


class NotADatabase(StorageError, _st.NotADatabase):
    pass


class DatabaseDamaged(NotADatabase, _st.DatabaseDamaged):
    pass


class ReadOnlyDatabase(StorageError, _st.ReadOnlyDatabase):
    pass


class WriteFailed(StorageError, _st.WriteFailed):
    pass


_TRANSLATION: list[tuple[type[_st.StorageError], type[StorageError]]] = [
    (_st.StorageLocked, StorageLocked),
    (_st.CorruptRecord, CorruptRecord),
    (_st.UnknownSchema, UnknownSchema),
    (_st.DatabaseDamaged, DatabaseDamaged),
    (_st.NotADatabase, NotADatabase),
    (_st.ReadOnlyDatabase, ReadOnlyDatabase),
    (_st.WriteFailed, WriteFailed),
    (_st.StorageError, StorageError),
]


def translate(exc: _st.StorageError) -> StorageError:
    """The engine-side twin of a storage error, keeping its message and attributes."""
    if isinstance(exc, StorageError):
        return exc
    for src, dst in _TRANSLATION:
        if isinstance(exc, src):
            new = dst.__new__(dst)
            new.__dict__.update(exc.__dict__)
            new.args = exc.args
            return new
    raise AssertionError("unreachable")


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    try:
        yield
    except _st.StorageError as e:
        if isinstance(e, StorageError):
            raise
        raise translate(e) from None


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

# a traceback names each error where users import it from (README: "Errors live in taskengine.errors")
for _name in __all__:
    globals()[_name].__module__ = "taskengine.errors"
