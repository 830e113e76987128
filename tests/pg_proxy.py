"""A TCP proxy between the engine and the test server that can cut a connection at COMMIT.

It relays bytes both ways. Armed, the next ``COMMIT`` a client sends (psycopg sends it as a
simple-protocol query) cuts that connection: ``before`` drops it without sending the COMMIT on
(the server rolls the transaction back when it sees the connection gone), ``after`` sends it on,
waits for the server's answer, then drops the connection without passing the answer back (the
transaction committed, the client cannot know). Both are what a network failure during COMMIT
looks like to the client; the engine must find out which happened before it answers.

``hold()`` keeps new connections waiting (accepted, not yet relayed) until ``admit()``: a client
whose connection was cut cannot reconnect meanwhile, so a test can have another node write first.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Literal

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class CommitCutter:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._armed: Literal["before", "after"] | None = None
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

    def arm(self, when: Literal["before", "after"]) -> None:
        with self._lock:
            self._armed = when
            self.cut.clear()

    def hold(self) -> None:
        self._admitted.clear()

    def admit(self) -> None:
        self._admitted.set()

    def _take(self) -> Literal["before", "after"] | None:
        with self._lock:
            when, self._armed = self._armed, None
            return when

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
        server = socket.create_connection(self._target)
        self._socks.append(server)
        self._relay(client, server)

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if COMMIT in data and self._cut_here(data, server):
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
        when = self._take()
        if when is None:
            return False
        if when == "after":
            server.sendall(data)
            answer = b""
            while b"Z\x00\x00\x00\x05" not in answer:  # ReadyForQuery: the COMMIT is done
                chunk = server.recv(65536)
                if not chunk:
                    break
                answer += chunk
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
