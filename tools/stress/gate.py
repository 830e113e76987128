"""A gate that holds a node's jobs until the supervisor has paused or cut off the node.

A pause or a cut must catch a job of the node running, so that the checks hold its late
completion to the fence. A job lasts milliseconds; stopping a process or taking a link down takes
longer on a loaded machine, so a job seen running just before is often over by then. While the
supervisor aims at a node it listens on a Unix socket beside the node's marker file: each job of
that node, once it has marked its start, connects and waits for the socket to close (bounded by
:data:`HOLD_SECONDS`). A connection accepted is a job running, held; the supervisor pauses or cuts
the node, notes the marker file's size, and then closes the gate: the held job ends after the cut
(or, when paused, after SIGCONT), as the scenario needs.

A path-named socket, not an abstract one: the node may be in a network namespace of its own, which
has abstract sockets of its own but shares the file system.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket

log = logging.getLogger(__name__)

SUFFIX = ".gate"
#: at most this long a job waits at a gate (a supervisor that died or never lets go)
HOLD_SECONDS = 10.0


def gate_path(marks: str) -> str:
    """The gate of the node whose marker file is ``marks``."""
    return marks + SUFFIX


def hold(path: str) -> None:
    """In a job: if the node's gate is up, wait until it is closed (or HOLD_SECONDS)."""
    if not os.path.exists(path):  # the usual case: one stat, no socket
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(HOLD_SECONDS)
        with contextlib.suppress(OSError):  # gone meanwhile, refused, reset or timed out: go on
            sock.connect(path)
            sock.recv(1)  # b"" once the supervisor closes its end


class Gate:
    """The supervisor's end: up from construction until :meth:`close`."""

    def __init__(self, marks: str) -> None:
        self.path = gate_path(marks)
        self._held: list[socket.socket] = []
        self._listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._listener.bind(self.path)  # OSError if the path is too long for a Unix socket
            self._listener.listen(16)
            self._listener.setblocking(False)
        except OSError:
            self.close()
            raise

    def held(self, timeout: float = 0.0) -> bool:
        """Has a job come to the gate (it is held there until :meth:`close`)? Waits up to
        ``timeout`` seconds for the first (the supervisor's loop asks without waiting)."""
        if self._listener is None:
            return False
        if not self._held and timeout > 0:
            select.select([self._listener], [], [], timeout)
        while True:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return bool(self._held)
            self._held.append(conn)

    def close(self) -> None:
        """Let every job held go (and any that connects after: the path is gone first)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in self._held:
            conn.close()
        self._held.clear()


__all__ = ["Gate", "HOLD_SECONDS", "gate_path", "hold"]
