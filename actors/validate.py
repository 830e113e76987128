"""Argument checks made before anything is sent to an actor: a rejected call changes nothing."""

from __future__ import annotations

import json
import threading
from typing import Any

from taskengine.storage import codec

from .errors import InvalidArgument

MAX_TASK_ID = 256


def task_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"task id must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidArgument("task id must not be empty")
    if len(value) > MAX_TASK_ID:
        raise InvalidArgument(f"task id is {len(value)} characters long; the limit is {MAX_TASK_ID}")
    if not value.isprintable():
        raise InvalidArgument(f"task id {value!r} contains a character that is not printable")
    return value


def json_value(value: Any, what: str) -> Any:
    """A detached, JSON-normalised copy of ``value``: what the record will hold, so a caller that
    changes its object afterwards cannot change an acknowledged execution, and a live run sees
    the same data as a recovered one (tuples become lists, keys strings)."""
    if value is None:
        return None
    try:
        return json.loads(_utf8(codec.to_json(value)))
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise InvalidArgument(f"{what} is not JSON-serializable: {e}") from None


def _utf8(text: str) -> bytes:
    """Lone surrogates (e.g. from os.fsdecode) make a str that UTF-8 cannot store."""
    return text.encode()


def text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string")
    try:
        _utf8(value)
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} {value!r} cannot be stored as UTF-8") from None
    return value


MAX_INT = 2**63 - 1  # indexes are stored as 8-byte keys


def positive_int(value: Any, what: str, *, allow_none: bool = True, minimum: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise InvalidArgument(f"{what} must be an integer from {minimum} to {MAX_INT}, not {value!r}")
    return value


def list_limit(value: Any, maximum: int) -> int:
    limit = positive_int(value, "limit", allow_none=False)
    assert limit is not None
    if limit > maximum:
        raise InvalidArgument(f"limit must be <= {maximum}")
    return limit


def timeout(value: Any, what: str = "timeout") -> float | None:
    """Seconds to wait, or None for no limit. ``inf``, and anything longer than the longest wait
    threads can make (``threading.TIMEOUT_MAX``, about 292 years), also mean no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidArgument(f"{what} must be a number of seconds >= 0 (or None, or inf), not {value!r}")
    if value > threading.TIMEOUT_MAX:
        return None
    return float(value)


def execution_id(value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidArgument(f"execution id must be a non-empty printable string, not {value!r}")
    return value
