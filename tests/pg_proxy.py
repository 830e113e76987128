"""A TCP proxy between the engine and the test server that can cut a connection at COMMIT.

It relays bytes both ways. Armed, the next ``COMMIT`` a client sends cuts that connection: a
simple-protocol query that ends with ``COMMIT``, on its own (psycopg's) or last of several (the
writer sends a turn's statements, its notification and its COMMIT as one query). ``before`` drops
it without sending the query on (the server rolls the transaction back when it sees the connection
gone), ``after`` sends it on, waits for the server's answer to all of it, then drops the
connection without passing the answer back (the transaction committed, the client cannot know).
``during`` sends it on and drops the connection at once, the server's answer not awaited: a server
process still at work on the query (waiting for a lock) finds the connection gone only when it
answers, after its COMMIT. All are what a network failure during COMMIT looks like to the client;
the engine must find out which happened before it answers. ``arm("after", meanwhile=fn)`` runs
``fn()`` once the server has answered, before the client's side is dropped (a server restarted
between a COMMIT and its answer).

``hold()`` keeps new connections waiting (accepted, not yet relayed) until ``admit()``: a client
whose connection was cut cannot reconnect meanwhile, so a test can have another node write first.
``arm("before", meanwhile=fn)`` does that in one step: the server's side of the connection is
closed (the server rolls back and lets the transaction's locks go), ``fn()`` runs, and only then
is the client's side dropped, so the client cannot reconnect before ``fn`` has returned (``fn``
may arm the next cut).

``queries`` counts the simple-protocol queries each client sent (each a round trip), for tests
that a write takes as many as it should: by the port the proxy's connection to the server comes
from (the session's ``client_port`` in ``pg_stat_activity``).

``stall(pattern)`` holds back the next message from a client that contains ``pattern`` (the
other direction still relays), so the server sees that session idle in its transaction: with
``idle_in_transaction_session_timeout`` it ends the session, and the client gets its error.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Literal

#: how a query that commits ends (the last bytes of a chunk the client sent)
COMMIT = b"COMMIT\x00"


class CommitCutter:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._armed: Literal["before", "after", "during"] | None = None
        self._meanwhile: Callable[[], None] | None = None
        self.failures: list[BaseException] = []  # raised by a ``meanwhile``
        self.queries: dict[int, int] = {}  # chunks from a client that begin a simple-protocol query ('Q')
        self._stall: bytes | None = None
        self.stalled = threading.Event()
        self._lock = threading.Lock()
        self.cut = threading.Event()
        self._stop = threading.Event()
        self._admitted = threading.Event()
        self._admitted.set()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True, name="pg-proxy")
        accept.start()
        self._threads.append(accept)

    def url(self, user: str, dbname: str, password: str | None = None) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def arm(self, when: Literal["before", "after", "during"], meanwhile: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._armed = when
            self._meanwhile = meanwhile
            self.cut.clear()

    def stall(self, pattern: bytes) -> None:
        with self._lock:
            self._stall = pattern
            self.stalled.clear()

    def hold(self) -> None:
        self._admitted.clear()

    def admit(self) -> None:
        self._admitted.set()

    def _take(self) -> tuple[Literal["before", "after", "during"] | None, Callable[[], None] | None]:
        with self._lock:
            when, self._armed = self._armed, None
            meanwhile, self._meanwhile = self._meanwhile, None
            return when, meanwhile

    def _stall_here(self, data: bytes) -> bool:
        with self._lock:
            if self._stall is None or self._stall not in data:
                return False
            self._stall = None
        self.stalled.set()
        return True

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(client)
            t = threading.Thread(target=self._connect, args=(client,), daemon=True, name="pg-proxy-conn")
            t.start()
            self._threads.append(t)

    def _connect(self, client: socket.socket) -> None:
        while not self._admitted.wait(0.2):
            if self._stop.is_set():
                return
        try:
            server = socket.create_connection(self._target)
        except OSError:  # the server is down (restarting): the client sees its connection refused
            client.close()
            return
        self._socks.append(server)
        self._relay(client, server)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        stalled = False  # a stalled message is never sent on: its client waits for the server
        port = int(server.getsockname()[1])
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([server] if stalled else [client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if data.startswith(b"Q"):
                            with self._lock:
                                self.queries[port] = self.queries.get(port, 0) + 1
                        if self._stall_here(data):
                            stalled = True
                            continue
                        if data.endswith(COMMIT) and self._cut_here(data, server):
                            return
                        server.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _cut_here(self, data: bytes, server: socket.socket) -> bool:
        when, meanwhile = self._take()
        if when is None:
            return False
        if when == "before" and meanwhile is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            try:
                meanwhile()
            except BaseException as e:  # noqa: BLE001  (the test asserts there are none)
                self.failures.append(e)
        if when == "during":
            server.sendall(data)
        if when == "after":
            server.sendall(data)
            answer = b""
            while b"Z\x00\x00\x00\x05" not in answer:  # ReadyForQuery: the COMMIT is done
                chunk = server.recv(65536)
                if not chunk:
                    break
                answer += chunk
            if meanwhile is not None:
                try:
                    meanwhile()
                except BaseException as e:  # noqa: BLE001  (the test asserts there are none)
                    self.failures.append(e)
        self.cut.set()
        return True

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)
