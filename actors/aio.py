"""Awaiting the engine's replies from asyncio without blocking the event loop.

A reply is set on an actor's thread; :func:`wrap` gives the awaiting coroutine an asyncio future
that the setter completes through the loop's ``call_soon_threadsafe``. Nothing waits on a thread
in between: ten thousand outstanding awaits are ten thousand small callbacks, not threads.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from .mailbox import Reply

T = TypeVar("T")


def wrap(reply: Reply[T]) -> asyncio.Future[T]:
    """An asyncio future of the running loop that completes with ``reply``. Cancelling it only
    stops the waiting: whatever the reply stands for goes on."""
    loop = asyncio.get_running_loop()
    hook = reply._await_hook
    if hook is not None:
        return asyncio.ensure_future(hook())
    fut: asyncio.Future[T] = loop.create_future()

    def done(r: Reply[Any]) -> None:  # on the setter's thread
        try:
            loop.call_soon_threadsafe(_settle, fut, r)
        except RuntimeError:  # the loop is closed: no one is waiting any more
            pass

    if not reply.add_done_callback(done):
        # a future resolved by a get hook (pykka's map/join): its get may block, so it runs on the
        # loop's default executor, a bounded pool
        return loop.run_in_executor(None, reply.get)
    return fut


def _settle(fut: asyncio.Future[Any], reply: Reply[Any]) -> None:
    if fut.done():  # the awaiting coroutine was cancelled
        return
    try:
        value = reply.get(timeout=0)
    except Exception as e:  # noqa: BLE001 - handed to the awaiting coroutine
        fut.set_exception(e)
    else:
        fut.set_result(value)
