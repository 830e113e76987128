"""Argument checks made before anything is sent to an actor: a rejected call changes nothing."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from taskengine.storage import keys, values
from taskengine.storage.db import path_problem
from taskengine.storage.interface import default_node_id

from .errors import InvalidArgument

MAX_TASK_ID = 256
#: idempotency keys are part of a LevelDB key, and PostgreSQL indexes them with their task's id: an
#: index entry holds at most 2,704 bytes and a task id takes up to 1,024, so a key is bounded in
#: UTF-8 bytes as well as in characters (one bound for both backends: a database can be copied)
MAX_IDEMPOTENCY_KEY = 1024
MAX_IDEMPOTENCY_KEY_BYTES = 1024


def _plain(value: str) -> str:
    """The characters of a str as a plain str: a subclass's own methods (``encode``, ``__hash__``)
    are never called, so whatever they do cannot reach an actor or a key."""
    return value if type(value) is str else str.__str__(value)


def _shown(value: Any) -> str:
    """``repr(value)`` for a message, or its type's name if its ``__repr__`` fails."""
    try:
        return repr(value)[:200]
    except Exception:  # noqa: BLE001 - the caller's object failed: name its type instead
        return f"a {type(value).__name__}"


def task_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"task id must be a string, not {type(value).__name__}")
    tid = _plain(value)
    if not tid:
        raise InvalidArgument("task id must not be empty")
    if len(tid) > MAX_TASK_ID:
        raise InvalidArgument(f"task id is {len(tid)} characters long; the limit is {MAX_TASK_ID}")
    if not tid.isprintable():
        raise InvalidArgument(f"task id {tid!r} contains a character that is not printable")
    return tid


def json_value(value: Any, what: str) -> Any:
    """A detached, JSON-normalised copy of ``value``: what the record will hold, so a caller that
    changes its object afterwards cannot change an acknowledged execution, and a live run sees
    the same data as a recovered one (tuples become lists, keys strings). Bounded by
    ``values.MAX_DEPTH`` and ``values.MAX_BYTES``."""
    if value is None:
        return None
    try:
        return values.normalize(value, what)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def text(value: Any, what: str, limit: int = MAX_IDEMPOTENCY_KEY,
         byte_limit: int = MAX_IDEMPOTENCY_KEY_BYTES) -> str | None:
    if value is None:
        return None
    value = _plain(value) if isinstance(value, str) else value
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string, not {_shown(value)}")
    if len(value) > limit:
        raise InvalidArgument(f"{what} is {len(value)} characters long; the limit is {limit}")
    try:
        size = len(value.encode())  # lone surrogates (e.g. from os.fsdecode) make a str UTF-8 cannot store
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} {value!r} cannot be stored as UTF-8") from None
    if size > byte_limit:
        raise InvalidArgument(f"{what} is {size} bytes long in UTF-8; the limit is {byte_limit} bytes")
    return value


def path(value: Any, what: str = "path") -> str:
    """A database path LevelDB can use, as a str; nothing of a hostile PathLike escapes."""
    if not isinstance(value, str | os.PathLike):
        raise InvalidArgument(f"{what} must be a non-empty string or path, not {type(value).__name__}")
    try:
        out = os.fspath(value)
    except Exception as e:  # noqa: BLE001 - the caller's __fspath__ failed
        raise InvalidArgument(f"{what} cannot be read: {values.describe(e)}") from None
    if not isinstance(out, str) or not out:
        raise InvalidArgument(f"{what} must be a non-empty string or path")
    out = _plain(out)
    problem = path_problem(out)
    if problem is not None:
        raise InvalidArgument(f"{what} {out!r} cannot be used: {problem}")
    return out


def jobs(value: Any) -> dict[str, Any]:
    """A plain copy of a jobs mapping, taken once: a mapping that fails to list itself is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("jobs must be a mapping of job names to functions")
    try:
        return dict(value.items())
    except Exception as e:  # noqa: BLE001 - the caller's mapping failed
        raise InvalidArgument(f"jobs cannot be read: {values.describe(e)}") from None


def flag(value: Any, what: str) -> bool:
    """A yes/no setting: only True or False (a truthy string such as "no" would read as yes)."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be True or False, not {_shown(value)}")
    return value


MAX_INT = keys.MAX_INDEX


def positive_int(value: Any, what: str, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if type(value) is not int and isinstance(value, int) and not isinstance(value, bool):
        value = int.__int__(value)  # a plain int: a subclass's own comparisons are never called
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise InvalidArgument(f"{what} must be an integer from {minimum} to {MAX_INT}, not {_shown(value)}")
    return value


def count(value: Any, what: str) -> int:
    """A required integer from 1 to MAX_INT."""
    n = positive_int(value, what, allow_none=False)
    assert n is not None
    return n


def list_limit(value: Any, maximum: int) -> int:
    limit = count(value, "limit")
    if limit > maximum:
        raise InvalidArgument(f"limit must be <= {maximum}")
    return limit


def _not_seconds(value: Any, what: str) -> InvalidArgument:
    return InvalidArgument(f"{what} must be a number of seconds >= 0 (or None, or inf), not {_shown(value)}")


def interval(value: Any, what: str) -> float:
    """Seconds between two repeats of something: a finite number > 0."""
    try:
        seconds = timeout(value, what)
    except InvalidArgument:
        seconds = None
    if seconds is None or seconds <= 0:
        raise InvalidArgument(f"{what} must be a number of seconds > 0, not {_shown(value)}")
    return seconds


def timeout(value: Any, what: str = "timeout") -> float | None:
    """Seconds to wait, or None for no limit. ``inf``, and anything longer than the longest wait
    threads can make (``threading.TIMEOUT_MAX``, about 292 years), also mean no limit."""
    if value is None:
        return None
    if type(value) is not float and type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _not_seconds(value, what)
        # a plain number: a subclass's own comparisons are never called
        value = float.__float__(value) if isinstance(value, float) else int.__int__(value)
    if not value >= 0:
        raise _not_seconds(value, what)
    if value > threading.TIMEOUT_MAX:
        return None
    return float(value)


def execution_id(value: Any) -> str:
    value = _plain(value) if isinstance(value, str) else value
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidArgument(f"execution id must be a non-empty printable string, not {_shown(value)}")
    return value


def job_name(value: Any) -> str:
    value = _plain(value) if isinstance(value, str) else value
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidArgument(f"job name must be a non-empty printable string, not {_shown(value)}")
    return value


MAX_NODE_ID = 128
#: a node's lease: long enough for a heartbeat every quarter of it to get through, short enough
#: that a lost node's running executions are finished within the hour
MIN_LEASE, MAX_LEASE = 1.0, 3600.0


def node_id(value: Any) -> str:
    """A node's id (None: this host and process, see ``storage.interface.default_node_id``)."""
    if value is None:
        return default_node_id()
    if not isinstance(value, str):
        raise InvalidArgument(f"node_id must be a string, not {type(value).__name__}")
    nid = _plain(value)
    if not nid or not nid.isprintable() or len(nid) > MAX_NODE_ID:
        raise InvalidArgument(f"node_id must be a non-empty printable string of at most {MAX_NODE_ID} "
                              f"characters, not {_shown(nid)}")
    return nid


def node_lease(value: Any) -> float:
    seconds = timeout(value, "node_lease")
    if seconds is None or not MIN_LEASE <= seconds <= MAX_LEASE:
        raise InvalidArgument(f"node_lease must be a number of seconds from {MIN_LEASE:g} to {MAX_LEASE:g}, "
                              f"not {_shown(value)}")
    return seconds
