"""The status server's JSON answers: one function per path, each a read through the engine.

Every answer comes from the engine's read calls (``stats``, ``list_tasks``, ``get_task``,
``list_executions``, ``get_execution``), which never assign anything, so a page left open on
a busy node changes nothing of it. Paging follows the engine: ``after`` is the last id (tasks)
or index (executions) seen, and an answer carries ``next`` when there may be more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import taskengine
from taskengine.errors import InvalidArgument
from taskengine.storage.keys import MAX_INDEX

if TYPE_CHECKING:
    from taskengine import Engine

#: the largest page the server hands out (the engine allows more; a page is for a person)
MAX_PAGE = 500
DEFAULT_PAGE = 50


class NotFound(Exception):
    """A path the server does not know (404)."""


def _limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw, 10)
    except ValueError:
        raise InvalidArgument(f"limit must be a whole number, not {raw!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be from 1 to {MAX_PAGE}, not {limit}")
    return limit


def _index(raw: str, what: str) -> int:
    try:
        value = int(raw, 10)
    except ValueError:
        raise InvalidArgument(f"{what} must be an execution index (a whole number), not {raw!r}") from None
    if value < 0:
        raise InvalidArgument(f"{what} must be >= 0, not {value}")
    if value > MAX_INDEX:  # said here, of the number as given (an index is read as after=index-1)
        raise InvalidArgument(f"{what} must be from 0 to {MAX_INDEX}, not {value}")
    return value


def stats(engine: Engine) -> dict[str, Any]:
    return {"path": engine.path, "version": taskengine.__version__, "stats": engine.stats().to_json()}


def tasks(engine: Engine, query: Mapping[str, str]) -> dict[str, Any]:
    limit = _limit(query)
    page = engine.list_tasks(after=query.get("after") or None, limit=limit)
    return {"items": [t.to_json() for t in page], "next": page[-1].id if len(page) == limit else None}


def task(engine: Engine, task_id: str) -> dict[str, Any]:
    return engine.get_task(task_id).to_json()


def executions(engine: Engine, task_id: str, query: Mapping[str, str]) -> dict[str, Any]:
    """A page of a task's executions by index; ``order=newest`` (the default) or ``oldest``."""
    limit = _limit(query)
    order = query.get("order", "newest")
    if order not in ("newest", "oldest"):
        raise InvalidArgument(f"order must be 'newest' or 'oldest', not {order!r}")
    after = _index(query["after"], "after") if query.get("after") else None
    page = engine.list_executions(task_id, after=after, limit=limit, newest_first=order == "newest")
    last = page[-1].index if len(page) == limit else None
    return {"task": task_id, "order": order, "items": [ex.to_json() for ex in page], "next": last}


def execution(engine: Engine, task_id: str, ref: str) -> dict[str, Any]:
    """One execution, by id or by index (a number)."""
    if ref.isdigit():
        index = _index(ref, "index")
        page = engine.list_executions(task_id, after=index - 1 if index else None, limit=1)
        if not page or page[0].index != index:
            mark = engine.get_task(task_id).prune_mark
            if index < mark:
                raise NotFound(f"execution {index} of task {task_id!r} was pruned (indexes from {mark} are kept)")
            raise NotFound(f"task {task_id!r} has no execution with index {index}")
        return page[0].to_json()
    return engine.get_execution(task_id, ref).to_json()


def route(engine: Engine, parts: list[str], query: Mapping[str, str]) -> dict[str, Any]:
    """The answer to ``/api/<parts...>``; NotFound for a path it does not know."""
    match parts:
        case ["stats"]:
            return stats(engine)
        case ["tasks"]:
            return tasks(engine, query)
        case ["tasks", task_id]:
            return task(engine, task_id)
        case ["tasks", task_id, "executions"]:
            return executions(engine, task_id, query)
        case ["tasks", task_id, "executions", ref]:
            return execution(engine, task_id, ref)
    raise NotFound("no such path; the API is /api/stats, /api/tasks[/ID[/executions[/ID-or-INDEX]]]")


__all__ = ["MAX_PAGE", "NotFound", "route"]
