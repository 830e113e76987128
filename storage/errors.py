"""Errors raised by the storage layer.

They know nothing of actors; the engine re-raises them as the matching
``actors.errors`` classes so an embedding program catches one hierarchy.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises."""


def thread_refused(e: BaseException) -> bool:
    """Whether ``e`` is threading's refusal to start a thread (the process is at its limit of
    threads, or of memory for their stacks): the stores and the engine turn it into an error of
    their own, since a raw RuntimeError tells a user nothing of what was being opened."""
    return isinstance(e, RuntimeError) and "can't start new thread" in str(e)


def thread_refusal(e: BaseException, shown: str, what: str) -> StorageError | None:
    """The error an open of ``shown`` raises when ``what`` (a thread of the store) could not start;
    None if ``e`` is something else. The caller has stopped what the open had started."""
    if not thread_refused(e):
        return None
    return StorageError(f"cannot open {shown}: cannot start {what}: {e} (the process is at its limit of "
                        "threads); nothing of the open is left running")


class StorageLocked(StorageError):
    """The database directory is held by another process or another engine; or, on a server,
    the database is in use in a way that forbids what was asked (``shared``: ``detail`` names who
    holds it and what to do, since closing "that engine" or taking a backup of it is no remedy
    there)."""

    def __init__(self, path: str, detail: str = "", *, shared: bool = False) -> None:
        self.path = path
        if shared:
            msg = f"database {path!r} is in use: {detail}"
        else:
            msg = (
                f"database {path!r} is locked by another process or engine in this process"
                f"{': ' + detail if detail else ''}; close that engine (or stop that process) first,"
                " or have it copy the database with Engine.backup(dest) and use the copy"
            )
        super().__init__(msg)


class CorruptRecord(StorageError):
    """A stored value that cannot be decoded; names the key so it can be found."""

    def __init__(self, key: bytes, detail: str) -> None:
        self.key = key
        super().__init__(f"corrupt record at key {key!r}: {detail}")


class UnknownSchema(StorageError):
    """The database was written with a schema version this code does not know."""


class NotADatabase(StorageError):
    """The path is missing, is not a LevelDB, or is a LevelDB of another program."""


class DatabaseDamaged(NotADatabase):
    """LevelDB found damage (a log record or table that fails its checksum) and would have to drop
    data to open the database; the message says how to accept the loss explicitly."""


class ReadOnlyDatabase(StorageError):
    """The database directory cannot be written (permissions, a read-only file system)."""


class WriteFailed(StorageError):
    """A write failed or was refused. ``outcome_unknown`` is True for the write that failed
    (its change may be on disk and appear after a restart) and False for a refusal made
    before anything was written."""

    def __init__(self, message: str, *, outcome_unknown: bool) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class TasksChanged(WriteFailed):
    """A turn's write was cut off by a lost connection and did not commit, and its tasks' rows
    changed meanwhile (another node wrote them): nothing of it was written, the writer carries on,
    and the turn must be begun and decided again against the rows as they now stand."""

    def __init__(self, message: str) -> None:
        super().__init__(message, outcome_unknown=False)
