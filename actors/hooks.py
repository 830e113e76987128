"""Hooks: a user's code told of every execution's durable state changes and of every write.

In the style of dramatiq's middleware: subclass :class:`Hooks`, override what you need, and give
it to ``Engine.open(hooks=[...])`` or ``engine.add_hooks(...)``. This is how tracing (e.g.
OpenTelemetry) or a program's own metrics see the engine without patching it; the Prometheus
metrics (``taskengine.prometheus``) are one such hook.

An engine with no hooks pays one attribute test per state change and per write. Hooks run on
the engine's own threads, after the change they report is durable and before any caller is
answered about it, so a caller the engine answers knows its hooks have run (a read of the durable
record, by ``get_execution`` or a ``wait`` called after it, may come before them); a slow hook
therefore slows the engine. A hook that raises (anything, ``SystemExit`` included) is logged and otherwise ignored: it
never breaks the engine. For the same reason a hook must not wait for the engine: a call from a
hook that would wait for an answer (``trigger``, ``get_task``, ``wait``, ``stats``, ``close``...)
raises InvalidArgument at once instead of waiting for itself forever; ``trigger_future`` sends
and returns, so a hook may chain a trigger with it, as long as it does not wait on the future.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskengine.storage import Execution
from taskengine.storage.interface import Writer

from .errors import InvalidArgument

log = logging.getLogger(__name__)

TRIGGER = "on_trigger"
START = "on_start"
FINISH = "on_finish"
WRITE = "on_write"
KINDS = (TRIGGER, START, FINISH, WRITE)

#: while a thread runs an engine's hooks, ``in_hook.owner`` is that engine's HookSet
in_hook = threading.local()

#: after a hook's first failure (logged with its traceback), one in this many is logged again
LOG_EVERY = 1000


class Hooks:
    """Override any of these; the engine calls only the ones a subclass overrides."""

    def on_trigger(self, execution: Execution) -> None:
        """A new execution was accepted: a non-blocking one once its index is durable (PENDING,
        with its index), a blocking one once queued (PENDING, no index yet). Idempotent repeats
        are not new. ``time.time() - execution.created_at`` is how long the caller has waited."""

    def on_start(self, execution: Execution) -> None:
        """The execution is durably RUNNING and its job is about to run (on an executor)."""

    def on_finish(self, execution: Execution) -> None:
        """The execution durably finished: SUCCESS, FAILED (its job raised or timed out, or it was
        interrupted: found RUNNING at open) or CANCELLED (by ``cancel`` or its task's deletion)."""

    def on_write(self, changes: int, seconds: float) -> None:
        """One database write carried ``changes`` atomic changes (the group commit) and took
        ``seconds``, its fsync included with ``sync=True``."""


def hooks_of(hooks: Any) -> list[Hooks]:
    """Checked before anything is opened or changed: an iterable of :class:`Hooks` instances."""
    try:
        found = list(hooks)
    except TypeError:
        raise InvalidArgument("hooks must be an iterable of taskengine.Hooks instances") from None
    for hook in found:
        if not isinstance(hook, Hooks):
            raise InvalidArgument(f"a hook must be an instance of a taskengine.Hooks subclass, not {hook!r}")
    return found


def _overrides(hook: Hooks, kind: str) -> bool:
    return getattr(type(hook), kind) is not getattr(Hooks, kind)


class HookSet:
    """The hooks of one engine, read by its counter actors (``active``, ``run``) and its
    committer (``on_write``). Adding or removing replaces the tuples the readers use, so they
    never take a lock."""

    def __init__(self, committer: Writer) -> None:
        self._committer = committer
        self._lock = threading.Lock()
        self._hooks: tuple[Hooks, ...] = ()
        self._calls: dict[str, tuple[Callable[..., None], ...]] = dict.fromkeys(KINDS, ())
        self._failures: dict[tuple[int, str], int] = {}
        #: True when some hook wants execution events: the counter actors collect them only then
        self.active = False

    def add(self, new: list[Hooks]) -> None:
        with self._lock:
            self._set(self._hooks + tuple(h for h in new if h not in self._hooks))

    def remove(self, hook: Hooks) -> None:
        with self._lock:
            self._set(tuple(h for h in self._hooks if h is not hook))

    def _set(self, hooks: tuple[Hooks, ...]) -> None:
        self._hooks = hooks
        self._calls = {kind: tuple(getattr(h, kind) for h in hooks if _overrides(h, kind)) for kind in KINDS}
        self.active = bool(self._calls[TRIGGER] or self._calls[START] or self._calls[FINISH])
        self._committer.on_write = self._on_write if self._calls[WRITE] else None

    def run(self, events: Sequence[tuple[str, Execution]]) -> None:
        """Call the hooks for ``events`` (kind, execution), in order."""
        calls = self._calls
        in_hook.owner = self
        try:
            for kind, execution in events:
                for fn in calls[kind]:
                    try:
                        fn(execution)
                    except BaseException:  # noqa: BLE001 - a hook never breaks the engine (SystemExit
                        self._failed(fn, kind)  # on an actor's thread would stop every actor)
        finally:
            in_hook.owner = None

    def _on_write(self, changes: int, seconds: float) -> None:
        in_hook.owner = self
        try:
            for fn in self._calls[WRITE]:
                try:
                    fn(changes, seconds)
                except BaseException:  # noqa: BLE001
                    self._failed(fn, WRITE)
        finally:
            in_hook.owner = None

    def running_here(self) -> bool:
        """True on a thread that is running these hooks now."""
        return getattr(in_hook, "owner", None) is self

    def _failed(self, fn: Callable[..., None], kind: str) -> None:
        owner = getattr(fn, "__self__", fn)
        key = (id(owner), kind)
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if n == 1:
            log.exception("hook %r raised in %s; the engine carries on (every %dth failure is logged)",
                          owner, kind, LOG_EVERY)
        elif n % LOG_EVERY == 0:
            log.warning("hook %r has raised %d times in %s", owner, n, kind)
