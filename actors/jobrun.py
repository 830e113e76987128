"""Running one job: whatever it does becomes a status, a JSON result, an error line and, when the
job raised, the traceback that a person needs to debug it.

A successful execution pays nothing for failures: the traceback is only formatted in the
``except`` branch, and a job that returns None skips the JSON round trip.
"""

from __future__ import annotations

import inspect
import traceback as tb
from types import TracebackType
from typing import Any

from taskengine.storage import ExecutionStatus, values

from .jobloop import JobFailed, JobLoop
from .jobs import JobContext

INVALID_RESULT = "InvalidResult: "

#: characters of a traceback kept with an execution; a longer one keeps its end (the raise)
MAX_TRACEBACK = 64 * 1024

Outcome = tuple[ExecutionStatus, Any, str | None, str | None]  # status, result, error, traceback


def run_job(fn: Any, ctx: JobContext, loop: JobLoop | None = None) -> Outcome:
    """Run a job and turn any outcome into a status; nothing a job does escapes. The result is
    stored as JSON, so the caller gets the JSON-normalised copy the record holds. A job that
    returns a coroutine (an ``async def`` job) has it run on ``loop`` while this thread waits."""
    try:
        result = fn(ctx)
        if result is not None and inspect.iscoroutine(result):
            if loop is None:
                result.close()
                raise TypeError("an async job needs the engine's event loop, which is closed")
            result = loop.run(result)
    except JobFailed as f:  # raised in the coroutine (its own frames, not the loop's), or its timeout
        text = None if f.frames is None else traceback_text(f.error, f.frames)
        return ExecutionStatus.FAILED, None, error_text(f.error), text
    except BaseException as e:  # noqa: BLE001 - SystemExit from a job must not stop the actors
        frames = e.__traceback__
        return ExecutionStatus.FAILED, None, error_text(e), traceback_text(e, frames and frames.tb_next)
    if result is None:
        return ExecutionStatus.SUCCESS, None, None, None
    try:
        return ExecutionStatus.SUCCESS, values.normalize(result, "the job's result"), None, None
    except ValueError as e:  # not JSON, or beyond the limits on stored values
        return ExecutionStatus.FAILED, None, error_text(e, INVALID_RESULT), None


def error_text(e: BaseException, prefix: str | None = None) -> str:
    """'TypeName: message', storable as UTF-8 whatever the exception holds."""
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the failure
        message = repr(e)
    return _storable((prefix or f"{type(e).__name__}: ") + message)


def traceback_text(e: BaseException, frames: TracebackType | None) -> str | None:
    """The exception as Python prints it, from ``frames`` on (the job's, not the engine's own);
    None if even formatting fails (a broken ``__str__`` deep in a chain)."""
    try:
        text = "".join(tb.format_exception(type(e), e, frames))
    except Exception:  # noqa: BLE001 - the failure is recorded without it
        return None
    if len(text) > MAX_TRACEBACK:
        cut = len(text) - MAX_TRACEBACK
        text = f"[{cut} characters of the start cut]\n" + text[cut:]
    return _storable(text)


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()
