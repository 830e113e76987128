"""What every command-line tool shares: opening a database, one-line failures, tables, times.

A user's mistake or a damaged database must end a tool with one line on stderr, never a
traceback, so every tool opens its database through :func:`open_database` and reports
failures by raising :class:`ToolError`; ``taskengine.tools.cli`` turns it into
``taskengine <command>: error: <message>`` and the exit status. Tools only read through
``storage``; they never import ``actors``.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from taskengine.storage import Database, StorageError, StorageLocked, Store, is_url, open_store, shown

#: everything fine (replay: no violation)
EXIT_OK = 0
#: the tool ran but found a problem: a violation, a corrupt record, a task or execution not found
EXIT_FAILED = 1
#: the tool could not start: a usage mistake or a database it cannot open
EXIT_USAGE = 2


class ToolError(Exception):
    """A failure to report as one line (no traceback) with ``exit_code``.

    Plugins (``taskengine.tools.stress.command``, ``taskengine.tools.bench.command``) may raise it too.
    """

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def locked_message(path: str) -> str:
    """Why a locked database cannot be read, and what to do instead.

    LevelDB lets one process hold a database; a running engine holds it for its lifetime.
    """
    return (
        f"database {path!r} is locked: an engine (or another program) has it open; stop it first, "
        "look inside it through its status server (engine.serve_status()), or take a copy with "
        "Engine.backup(dest) from the process that holds it and use the copy"
    )


def refuse_url(path: str, why: str) -> None:
    """A command that works on LevelDB directories only, given a PostgreSQL URL: one line that says
    what to use instead, the URL's password hidden (taken as a path, it was shown as it is)."""
    if is_url(path):
        raise ToolError(f"{shown(path)} is a PostgreSQL database: {why}", EXIT_USAGE)


@contextmanager
def open_database(path: str) -> Iterator[Store]:
    """Open an existing taskengine database (a LevelDB directory or a ``postgresql://`` URL) for
    reading, or raise :class:`ToolError` (exit 2).

    Never creates anything, so a mistyped path does not leave an empty database behind (nor a
    URL an empty schema). A URL's password never appears in a message: the store's ``path`` hides it.
    """
    if is_url(path):
        try:
            store = open_store(path, create=False)
        except StorageError as e:  # NotADatabase, UnknownSchema, a server that cannot be reached
            raise ToolError(str(e), EXIT_USAGE) from None
        try:
            yield store
        finally:
            store.close()
        return
    if not os.path.exists(path):
        raise ToolError(f"no database at {path!r}: the path does not exist", EXIT_USAGE)
    if not os.path.isdir(path):
        raise ToolError(f"{path!r} is a file, not a database directory", EXIT_USAGE)
    try:
        db = Database.open(path, create=False)
    except StorageLocked:
        raise ToolError(locked_message(path), EXIT_USAGE) from None
    except StorageError as e:  # NotADatabase, UnknownSchema, an unreadable directory
        raise ToolError(str(e), EXIT_USAGE) from None
    try:
        yield db
    finally:
        db.close()


def whole_number(value: Any, flag: str, lo: int, hi: int) -> int:
    """An option's whole number from ``lo`` to ``hi``, or ToolError (exit 2) naming the option."""
    try:
        n = int(str(value).strip(), 10)
    except ValueError:
        raise ToolError(f"{flag} must be a whole number, not {value!r}", EXIT_USAGE) from None
    if not lo <= n <= hi:
        raise ToolError(f"{flag} must be between {lo} and {hi}, not {n}", EXIT_USAGE)
    return n


def seconds(value: Any, flag: str, lo: float, hi: float) -> float:
    """An option's finite number of seconds from ``lo`` to ``hi``, or ToolError (exit 2)."""
    try:
        x = float(str(value).strip())
    except ValueError:
        raise ToolError(f"{flag} must be a number of seconds, not {value!r}", EXIT_USAGE) from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ToolError(f"{flag} must be a number of seconds between {lo:g} and {hi:g}, not {value}", EXIT_USAGE)
    return x


def output_path(flag: str, path: str) -> str:
    """A file an option names for the run's output, checked before the run: a run of minutes must
    not end in a traceback, its figures lost, because the file cannot be written."""
    if not path:
        raise ToolError(f"{flag} needs a file path", EXIT_USAGE)
    if os.path.isdir(path):
        raise ToolError(f"{flag} {path!r} is a directory, not a file path", EXIT_USAGE)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ToolError(f"{flag} {path!r}: the directory {parent!r} does not exist", EXIT_USAGE)
    existed = os.path.exists(path)
    try:  # really open it: permission bits say nothing to root, nor of a read-only file system
        with open(path, "a", encoding="utf-8"):
            pass
        if not existed:
            os.unlink(path)
    except OSError as e:
        raise ToolError(f"{flag} {path!r} is not writable: {e.strerror}", EXIT_USAGE) from None
    return path


def format_time(t: float | None) -> str:
    """A stored Unix time as UTC ISO 8601 to the millisecond; ``-`` for none."""
    if t is None:
        return "-"
    try:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, OSError, ValueError, TypeError):
        return repr(t)


def one_line(text: str, width: int | None = None) -> str:
    """Text made safe for one table cell: no line breaks, optionally shortened."""
    flat = " ".join(text.split())
    if width is not None and len(flat) > width:
        return flat[: max(width - 3, 0)] + "..."
    return flat


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool]) -> list[str]:
    """Align columns; ``right[i]`` right-aligns column ``i`` (numbers)."""
    cells = [list(header)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if ra else c.ljust(w) for c, w, ra in zip(r, widths, right, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return lines


T = TypeVar("T")


class Bounded(Generic[T]):
    """The first ``limit`` items, and a count of the rest: what a tool keeps of what it finds,
    so a badly damaged database cannot exhaust memory or the terminal."""

    __slots__ = ("items", "limit", "omitted")

    def __init__(self, limit: int) -> None:
        self.items: list[T] = []
        self.limit = limit
        self.omitted = 0

    def add(self, item: T) -> None:
        if len(self.items) < self.limit:
            self.items.append(item)
        else:
            self.omitted += 1

    def __len__(self) -> int:
        """Every item added, kept or not."""
        return len(self.items) + self.omitted
