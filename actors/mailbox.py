"""The engine's actors' inboxes and reply futures: pykka's, made cheaper.

pykka's ``ThreadingActor`` uses a ``queue.Queue`` inbox and ``ThreadingFuture``
replies. Both are built on ``threading.Condition``, which is written in Python: a
message or a reply costs several Python-level lock dances, and under contention
every one of them is a GIL hand-off. An index acknowledgement crosses both
twice. pykka lets an actor type choose its inbox and future
(``_create_actor_inbox`` / ``_create_future``, the hooks its own actor types
use), so the engine's actors take:

- ``queue.SimpleQueue`` (C) as inbox: pykka only ever calls ``put``, ``get`` and
  ``empty`` on it, and the counter actor's ``get_nowait`` is there too;
- :class:`Reply`, a ``ThreadingFuture`` whose waiting is one C-level lock.

BENCHMARKS.md has what this buys. :class:`EngineActor` also overrides the third such hook,
``_start_actor_loop``, for a thread that cannot start (see there). The three are pykka's
"internal methods for implementors of new actor types", not its public API: setup.cfg pins
``pykka<5`` for them, and tests/test_pykka_contract.py checks that pykka still calls them as
this module expects.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import pykka
from pykka._future import _Unset
from pykka._threading import ThreadingFutureResult

T = TypeVar("T")

log = logging.getLogger(__name__)

#: makes "check unset, then set" one step for every Reply (held for a few bytecodes, never while
#: waiting), so two racing setters behave as with ThreadingFuture: one wins, the other gets Full
_setting = threading.Lock()


class Reply(pykka.ThreadingFuture[T]):
    """A one-shot future: a lock held from birth, released once by the one setter.

    Same contract as ``ThreadingFuture`` (a second set raises ``queue.Full``, ``get`` may be
    called many times and from many threads, get hooks and ``map``/``join`` work), without
    its ``Condition``. Awaiting it in a coroutine does not block the event loop: the setter
    wakes the loop through ``call_soon_threadsafe`` (pykka's own ``__await__`` calls ``get``)."""

    # class-level defaults: a reply that nobody awaits, or that has no get hook (almost every
    # one: two are made per execution), pays nothing for them
    _callbacks: list[Callable[[Reply[Any]], None]] | None = None
    #: for a reply resolved by a get hook (a blocking trigger's): how to await it without blocking
    _await_hook: Callable[[], Awaitable[T]] | None = None
    _result: ThreadingFutureResult | None = None
    _hook_lock: threading.Lock | None = None
    _get_hook: Any = None  # pykka.Future's, set by set_get_hook (with its _get_hook_result)

    def __init__(self) -> None:
        # neither ThreadingFuture's __init__ (a Condition) nor pykka.Future's (set_get_hook does its part)
        self._done = done = threading.Lock()
        done.acquire()

    def get(self, *, timeout: float | None = None) -> Any:
        if self._result is None and self._get_hook is None:
            if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
                raise pykka.Timeout(f"{timeout} seconds")
            self._done.release()  # stays open for every later get
        if self._hook_lock is not None:
            with self._hook_lock:  # the hook runs once; later gets have its cached result
                return pykka.Future.get(self, timeout=timeout)
        result = self._result
        assert result is not None
        if result.exc_info is None:
            return result.value
        exc_type, exc_value, exc_traceback = result.exc_info
        assert exc_type is not None
        if exc_value is None:
            exc_value = exc_type()
        if exc_value.__traceback__ is not exc_traceback:
            raise exc_value.with_traceback(exc_traceback)
        raise exc_value

    def set(self, value: Any | None = None) -> None:
        self._publish(ThreadingFutureResult(value, None))

    def set_exception(self, exc_info: Any = None) -> None:
        assert exc_info is None or len(exc_info) == 3
        self._publish(ThreadingFutureResult(exc_info=exc_info or sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        with _setting:
            if self._result is not None:
                raise queue.Full
            first = self._hook_lock is None
            if first:
                self._hook_lock = threading.Lock()
                self._get_hook_result = _Unset()  # what pykka.Future.__init__ would have set
            self._get_hook = func  # a later hook replaces it, as with ThreadingFuture
            if first:
                self._done.release()

    def _publish(self, result: ThreadingFutureResult) -> None:
        with _setting:
            if self._result is not None or self._hook_lock is not None:
                raise queue.Full
            self._result = result
            self._done.release()
            callbacks = self._callbacks
        if callbacks is not None:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # the setter is an actor: a callback must not break it
                    log.exception("a reply's done callback failed")

    def add_done_callback(self, fn: Callable[[Reply[Any]], None]) -> bool:
        """Call ``fn(self)`` once this reply is set, on the setting thread (now, if it is set).
        False for a reply resolved by a get hook: it is never set, so ``fn`` would never run."""
        with _setting:
            if self._hook_lock is not None:
                return False
            if self._result is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return True
        fn(self)
        return True

    def set_await_hook(self, hook: Callable[[], Awaitable[T]]) -> None:
        self._await_hook = hook

    def __await__(self) -> Generator[Any, None, T]:
        from .aio import wrap  # asyncio only for the programs that await

        return wrap(self).__await__()


class EngineActor(pykka.ThreadingActor):
    """Base of the engine's actors: daemon threads, C inboxes, :class:`Reply` futures."""

    use_daemon_thread = True

    def _start_actor_loop(self) -> None:
        """pykka's ``Actor.start`` registers the actor, then calls this to start its thread, and
        has no public hook in between: a start that fails here (the process is at its limit of
        threads) would leave a registered actor that never runs, which ``ActorRegistry.stop_all()``
        (and the engine's own clean-up) would wait for for ever."""
        try:
            super()._start_actor_loop()
        except BaseException:
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
            raise

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()

    @staticmethod
    def _create_future() -> pykka.Future[Any]:
        return Reply()
