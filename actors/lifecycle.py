"""An engine's life inside a node process: a graceful stop on a signal, and a warning at
interpreter exit for an engine that was never closed.

Supervisors stop a node with a signal: systemd and ``docker stop`` send SIGTERM, a terminal
SIGINT. Python's default for SIGTERM ends the process at once, without ``close()``, and a
process that is PID 1 of its PID namespace (a container started without an init process)
does not even see SIGTERM unless it installs a handler: the kernel drops signals whose
action is the default for such a process. :func:`close_on_signals` installs that handler.

The Python-level handler takes no lock: it may interrupt the main thread anywhere, even inside
the engine while the engine's own lock is held. It gives each engine a close deadline (a plain
attribute that any ``close()``, whichever thread runs it, respects) and raises
``SystemExit(128 + signum)`` in the main thread, so the program unwinds through its ``with``
blocks and ``finally`` clauses and the process ends with the status shells and supervisors
expect from a process stopped by that signal. The close itself runs on a closer thread,
started beforehand, that a pipe wakes (see :func:`_start_closer`). At interpreter exit we wait
for the closer (up to the deadline) before anything else is torn down.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)

#: a deadline the closer gets on top of the engines' own: stopping actors and closing the database
CLOSE_MARGIN = 5.0
#: how often, and how long each time, the closer signals a main thread that did not run our handler
WAKE_TRIES = 20
WAKE_WAIT = 0.1

_lock = threading.Lock()
_open: set[Engine] = set()  # engines opened and not yet closed, for the exit warning
_on_signal: dict[Engine, float] = {}  # engine -> seconds its close may wait for running jobs
_handled: set[int] = set()  # signals whose handler is ours
_pipe: tuple[int, int] | None = None  # the handler writes to [1], the closer reads [0]
_closer: threading.Thread | None = None
_closed_all = threading.Event()
_stopping: list[tuple[int, float]] = []  # (signal, deadline) of the stop; appended without a lock
_main_woke = threading.Event()  # our Python-level handler has run (in the main thread)
_handler_writes = False  # the pipe is not the wakeup fd: our handler writes to it


def opened(engine: Engine) -> None:
    with _lock:
        _open.add(engine)


def closed(engine: Engine) -> None:
    with _lock:
        _open.discard(engine)
        _on_signal.pop(engine, None)


def bounded(timeout: float | None, deadline: float | None) -> float | None:
    """A close's wait for running jobs, cut short by a signal's deadline."""
    if deadline is None:
        return timeout
    left = max(0.0, deadline - time.monotonic())
    return left if timeout is None else min(timeout, left)


def close_on_signals(engine: Engine, timeout: float, signals: Iterable[int]) -> None:
    """See :meth:`Engine.close_on_signals`."""
    sigs = _signal_numbers(signals)
    if threading.current_thread() is not threading.main_thread():
        raise InvalidArgument("close_on_signals() must be called from the main thread (Python runs "
                              "signal handlers there only)")
    _start_closer()
    with _lock:
        _on_signal[engine] = timeout
    for signum in sigs:
        if signum in _handled:
            continue
        try:
            signal.signal(signum, _handle)
        except (OSError, ValueError, RuntimeError) as e:
            raise InvalidArgument(f"cannot handle {signal.Signals(signum).name}: {e}") from None
        _handled.add(signum)
    log.debug("engine at %s closes on %s within %s s", engine.path,
              ", ".join(signal.Signals(s).name for s in sigs), timeout)


def _signal_numbers(signals: Iterable[int]) -> list[int]:
    try:
        sigs = [signal.Signals(s) for s in signals]
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"signals must be signal numbers: {e}") from None
    if not sigs:
        raise InvalidArgument("signals must name at least one signal")
    for s in sigs:
        if s in (signal.SIGKILL, signal.SIGSTOP):
            raise InvalidArgument(f"{s.name} cannot be handled")
    return [int(s) for s in sigs]


def _start_closer() -> None:
    """The pipe and the thread that closes the engines. The pipe is also the interpreter's
    wakeup fd when nobody else (an asyncio loop) has one: then the C-level handler writes to it
    in whichever thread the kernel picked, and the closer wakes even if the main thread never
    gets to run the Python-level handler (it may be blocked in pause(), where a signal that came
    just before the call leaves it)."""
    global _pipe, _closer, _handler_writes
    with _lock:
        if _closer is not None:
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        _pipe = (r, w)
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        if previous != -1:  # someone else's: keep it, and have our handler write to our pipe
            signal.set_wakeup_fd(previous)
            _handler_writes = True
        # a daemon thread: it waits for a signal that may never come; the exit hook waits for it
        _closer = threading.Thread(target=_close_when_signalled, args=(r,), name="taskengine-signal-close",
                                   daemon=True)
        _closer.start()


def _begin_stop(signum: int) -> None:
    """Give every engine its close deadline. Lock-free: the signal handler calls it too."""
    if _stopping:
        return
    now = time.monotonic()
    waits = list(_on_signal.items())
    for engine, timeout in waits:
        engine._stop_deadline = now + timeout
    _stopping.append((signum, now + max((t for _, t in waits), default=0.0)))


def _handle(signum: int, frame: Any) -> None:
    """The Python-level handler (main thread, between any two bytecodes): no lock, no logging.
    It raises once: a second signal (or the closer's nudge, see _wake_main) must not cut short
    what the first started, such as the wait for the closer at exit."""
    if _main_woke.is_set():
        return
    _begin_stop(signum)
    _main_woke.set()  # a private Event: the main thread never holds its lock but here
    if _handler_writes and _pipe is not None:
        try:
            os.write(_pipe[1], bytes([signum]))
        except OSError:
            pass  # full: the closer has been told already
    raise SystemExit(128 + signum)


def _close_when_signalled(fd: int) -> None:
    while True:
        signum = os.read(fd, 1)[0]
        if signum in _handled:
            break  # the wakeup fd carries every signal that has a Python handler: only ours count
    _begin_stop(signum)
    _wake_main(signum)
    with _lock:
        engines = list(_on_signal)
    log.warning("%s: closing %d engine(s), then the process exits with status %d",
                signal.Signals(signum).name, len(engines), 128 + signum)
    try:
        for engine in engines:
            try:
                engine.close(timeout=None)  # bounded by the deadline _begin_stop set
            except Exception:
                log.exception("closing the engine at %s after %s failed", engine.path,
                              signal.Signals(signum).name)
    finally:
        _closed_all.set()
    if not _wake_main(signum):
        # the main thread is stuck in C code that Python cannot interrupt: the engines are
        # closed, so end the process ourselves, with the same status
        log.error("the main thread did not respond to %s; exiting now", signal.Signals(signum).name)
        os._exit(128 + signum)


def _wake_main(signum: int) -> bool:
    """Make sure the main thread runs our handler (and so raises SystemExit). The kernel may
    have given the signal to another thread, or to the main thread just before it blocked in
    a call such as pause(): then only a signal sent to the main thread itself wakes it."""
    for _ in range(WAKE_TRIES):
        if _main_woke.is_set():
            return True
        try:
            signal.pthread_kill(threading.main_thread().ident or 0, signum)
        except (OSError, ValueError):  # the main thread has finished: nothing to wake
            return True
        _main_woke.wait(WAKE_WAIT)
    return _main_woke.is_set()


def _at_exit() -> None:
    if _stopping:
        limit = _stopping[0][1] + CLOSE_MARGIN
        if not _closed_all.wait(timeout=max(0.0, limit - time.monotonic())):
            log.error("the engines did not close within their timeout after the signal; exiting anyway")
    with _lock:
        never_closed = [e for e in _open if not e._closed]
    for engine in never_closed:
        log.warning("the engine at %s was never closed: executions still running are finished as FAILED "
                    "(interrupted) at its next open; call close() or use 'with Engine.open(...)'",
                    engine.path)


# registered at import, after logging's own exit hook, so it runs before logging shuts down
atexit.register(_at_exit)
