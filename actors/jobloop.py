"""The event loop that ``async def`` jobs run on.

An async job runs on an event loop, never on the executor's thread: the executor hands the
coroutine to the loop and waits for its outcome, so the pool's ``workers`` bound async jobs as they
bound plain ones, and the job timeout, failure and recovery rules are the same. The loop is one the
user passed to ``Engine.open(loop=...)``, or one the engine starts on its own thread the first time
an async job runs (an engine with no async jobs has no such thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

#: how long close() waits for the engine's own loop thread to wind down
STOP_WAIT = 5.0


class JobFailed(Exception):
    """What an async job raised, with the frames that are its own (not the loop's)."""

    def __init__(self, error: BaseException, frames: TracebackType | None) -> None:
        super().__init__(error)
        self.error = error
        self.frames = frames


def timeout_reason(job_timeout: float | None) -> str:
    """The error of an execution whose job outlived the job timeout (plain or async alike)."""
    return f"the job ran longer than the job timeout of {job_timeout} s"


class JobLoop:
    def __init__(self, loop: asyncio.AbstractEventLoop | None, job_timeout: float | None) -> None:
        self._loop = loop
        self._own = loop is None
        self._thread: threading.Thread | None = None
        self._timeout = job_timeout
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future[Any]] = set()
        self._closed = False

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and wait for it (on an executor's thread, never the loop's)."""
        guarded = self._guarded(coro)
        try:
            fut = asyncio.run_coroutine_threadsafe(guarded, self._ensure_loop())
        except BaseException:  # a closed loop: neither coroutine will ever run
            guarded.close()
            coro.close()
            raise
        with self._lock:
            self._running.add(fut)
        try:
            return fut.result()
        finally:
            with self._lock:
                self._running.discard(fut)

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> Any:
        limit = asyncio.timeout(self._timeout)
        try:
            async with limit:
                return await coro
        except TimeoutError as e:
            if limit.expired():
                raise JobFailed(TimeoutError(timeout_reason(self._timeout)), None) from None
            raise JobFailed(e, _own_frames(e)) from None
        except BaseException as e:  # noqa: BLE001 - the executor records it, whatever it is
            raise JobFailed(e, _own_frames(e)) from None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine's event loop is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=_serve, args=(loop,), name="taskengine-async-jobs", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def runs_here(self) -> bool:
        """Whether the calling thread is running this loop (an async job, or the user's coroutines
        on the loop given to Engine.open): it cannot wait for an async job, which needs the loop."""
        try:
            return self._loop is not None and asyncio.get_running_loop() is self._loop
        except RuntimeError:  # no loop runs here
            return False

    def close(self) -> None:
        """Cancel async jobs still running (close() gave up waiting for them: they are finished as
        interrupted at the next open) and stop the engine's own loop. A user's loop is left running."""
        with self._lock:
            self._closed = True
            running, self._running = list(self._running), set()
            loop, thread = self._loop, self._thread
        for fut in running:
            fut.cancel()
        if self._own and loop is not None and thread is not None:
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # already closed
                return
            thread.join(STOP_WAIT)
            if thread.is_alive():
                log.warning("the engine's async job loop did not stop within %s s", STOP_WAIT)


def _own_frames(e: BaseException) -> TracebackType | None:
    """The job's frames: the traceback without ``_guarded``'s own."""
    frames = e.__traceback__
    return frames.tb_next if frames is not None else None


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
