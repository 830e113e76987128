"""The status server: a stdlib HTTP server on its own threads, read-only, local by default.

Why the standard library: the server answers a handful of GET paths with JSON and three
static files; ``http.server`` does that without a dependency an embedding program would have
to carry, and its threads never touch the event loop or the engine's actors (each request
calls the engine's thread-safe read methods, as any caller may).

The rules it enforces, each answered with a status code and a one-line JSON error:

* it binds to a loopback address unless a ``token`` is given (refused at start otherwise);
* with a token, every request carries it (``Authorization: Bearer``, or the cookie that the
  page's ``/?token=...`` sets): none is 401, a wrong one 403;
* without a token, a request whose ``Host`` is not a loopback name is 403 (a web page that
  rebinds its own name to 127.0.0.1 cannot read the node through a visitor's browser);
* only GET: every other method is 405, so nothing can be changed through it.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import socket
import threading
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from taskengine.errors import (
    EngineClosed,
    EngineError,
    ExecutionNotFound,
    InvalidArgument,
    TaskNotFound,
)

from . import views

if TYPE_CHECKING:
    from taskengine import Engine

log = logging.getLogger(__name__)

COOKIE = "taskengine_status"
MIN_TOKEN = 16
LOOPBACK_NAMES = ("localhost", "localhost.")

#: the page's files: path -> (file in page/, content type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    # everything the page uses comes from this server; no inline script, nothing external
    ("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
)


class MetricsSource(Protocol):
    """What ``/metrics`` serves: ``taskengine.prometheus.PrometheusMetrics`` is one."""

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        ...


def is_loopback(host: str) -> bool:
    """A loopback address or ``localhost``; names are not resolved (a name that resolves to
    loopback today may not tomorrow), so any other name needs a token."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_token(token: Any) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or len(token) < MIN_TOKEN or not token.isascii() or not token.isprintable() \
            or any(c in token for c in ' ;,"\\'):
        raise InvalidArgument(
            f"token must be a string of at least {MIN_TOKEN} printable ASCII characters without spaces, "
            "quotes, commas, semicolons or backslashes (e.g. secrets.token_urlsafe())"
        )
    return token


class _HTTPServer(http.server.ThreadingHTTPServer):
    # a request's thread is not joined at close (one whose client never sends would hold close up to
    # the handler's timeout); a request that comes after close on a kept-alive connection is refused
    # and its connection ended (see _Handler._answer)
    daemon_threads = True

    #: set right after the socket is bound, before the first request is served
    status: StatusServer

    def __init__(self, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        super().__init__(address, _Handler)


class StatusServer:
    """One running status server; use :meth:`Engine.serve_status` (or :meth:`start`)."""

    def __init__(self, engine: Engine, httpd: _HTTPServer, token: str | None, metrics: MetricsSource | None) -> None:
        self.engine = engine
        self.token = token
        self.metrics = metrics
        self._httpd = httpd
        self._assets: dict[str, bytes] = {}
        self._closed = False
        self._lock = threading.Lock()
        self.host: str = str(httpd.server_address[0])
        self.port: int = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=f"taskengine-status-{self.port}",
            daemon=True,
        )

    @classmethod
    def start(
        cls,
        engine: Engine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        metrics: MetricsSource | None = None,
    ) -> StatusServer:
        if not isinstance(host, str) or not host:
            raise InvalidArgument("host must be a non-empty string (an address or a name)")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidArgument(f"port must be an integer from 0 to 65535, not {port!r}")
        token = _check_token(token)
        if metrics is not None and not callable(getattr(metrics, "render", None)):
            raise InvalidArgument("metrics must be a taskengine.prometheus.PrometheusMetrics (an object with render())")
        if token is None and not is_loopback(host):
            raise InvalidArgument(
                f"the status server binds to {host!r}, which is not a loopback address: give it a token "
                "(serve_status(..., token=secrets.token_urlsafe())) so only those who have it can read the node"
            )
        bind = host.strip("[]")
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        try:
            httpd = _HTTPServer((bind, port), family)
        except OSError as e:
            raise InvalidArgument(f"the status server cannot listen on {host!r} port {port}: {e.strerror}") from None
        server = cls(engine, httpd, token, metrics)
        httpd.status = server
        server._thread.start()
        log.info("status server for %s listening on %s", engine.path, server.url)
        return server

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop listening; a connection kept alive gets 503 and is ended at its next request.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        log.info("status server on port %d stopped", self.port)

    def __enter__(self) -> StatusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def asset(self, name: str) -> bytes:
        with self._lock:
            data = self._assets.get(name)
            if data is None:
                data = resources.files(__package__).joinpath("page", name).read_bytes()
                self._assets[name] = data
            return data


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "taskengine-status"
    sys_version = ""
    #: seconds a client may take to send its request (a stalled client frees its thread)
    timeout = 30

    # -- every method but GET is refused -----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def _refuse_method(self) -> None:
        self._answer(lambda: self._raise(_Refused(405, f"the status server is read-only: {self.command} is refused",
                                                  (("Allow", "GET"),))))

    @staticmethod
    def _raise(e: Exception) -> None:
        raise e

    def do_GET(self) -> None:  # noqa: N802 - the name http.server looks up
        self._answer(self._get)

    # -- answering ---------------------------------------------------------------------------

    def _answer(self, produce: Any) -> None:
        extra: list[tuple[str, str]] = []
        try:
            if self.server.status.closed:  # a kept-alive connection outlives the listening socket
                raise _Refused(503, "this status server is stopped (its engine was closed)", (("Connection", "close"),))
            self._authorise(extra)
            status, ctype, body = produce()
        except _Refused as e:
            status, ctype, body = e.status, "application/json", _json({"error": e.message})
            extra.extend(e.headers)
        except views.NotFound as e:
            status, ctype, body = 404, "application/json", _json({"error": str(e)})
        except (TaskNotFound, ExecutionNotFound) as e:
            status, ctype, body = 404, "application/json", _json({"error": str(e)})
        except InvalidArgument as e:
            status, ctype, body = 400, "application/json", _json({"error": str(e)})
        except EngineClosed:
            status, ctype, body = 503, "application/json", _json({"error": "the engine is closed"})
        except EngineError as e:  # StorageError, CorruptRecord: the operator needs to see them
            status, ctype, body = 500, "application/json", _json({"error": f"{type(e).__name__}: {e}"})
        except Exception:
            log.exception("status server: %s %s failed", self.command, _redact(self.path))
            status, ctype, body = 500, "application/json", _json({"error": "internal error (logged by the node)"})
        if ctype == "application/json":
            ctype += "; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (*SECURITY_HEADERS, *extra):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorise(self, extra: list[tuple[str, str]]) -> None:
        token = self.server.status.token
        if token is None:
            host = self.headers.get("Host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and not is_loopback(name):
                raise _Refused(403, f"Host {host!r} is not a loopback name; this server answers local requests only")
            return
        given = _bearer(self.headers.get("Authorization")) or _cookie(self.headers.get("Cookie"))
        from_query = None
        if given is None:
            from_query = dict(parse_qsl(urlsplit(self.path).query)).get("token")
            given = from_query
        if given is None:
            raise _Refused(401, "this status server needs its token (Authorization: Bearer TOKEN, or open "
                           "/?token=TOKEN)", (("WWW-Authenticate", 'Bearer realm="taskengine"'),))
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _Refused(403, "wrong token")
        if from_query is not None:  # the page's entry: its own requests carry the cookie from here on
            extra.append(("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"))

    def _get(self) -> tuple[int, str, bytes]:
        split = urlsplit(self.path)
        path = split.path
        if path in ASSETS:
            name, ctype = ASSETS[path]
            return 200, ctype, self.server.status.asset(name)
        engine = self.server.status.engine
        if path == "/metrics":
            return _metrics(self.server.status.metrics)
        if path == "/api" or path.startswith("/api/"):
            parts = [unquote(p) for p in path.split("/")[2:]]
            query = dict(parse_qsl(split.query))
            return 200, "application/json", _json(views.route(engine, parts, query))
        raise views.NotFound(f"no such path {unquote(path)!r}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the signature http.server calls
        log.debug("status server: %s %s", self.address_string(), _redact(format % args))


def _metrics(metrics: MetricsSource | None) -> tuple[int, str, bytes]:
    if metrics is None:
        raise views.NotFound(
            "no metrics here: start the server with serve_status(..., metrics=PrometheusMetrics(engine)) "
            "(from taskengine.prometheus; pip install 'taskengine[prometheus]')"
        )
    body, ctype = metrics.render()
    return 200, ctype, body


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def _cookie(value: str | None) -> str | None:
    for part in (value or "").split(";"):
        name, _, val = part.strip().partition("=")
        if name == COOKIE and val:
            return val
    return None


def _redact(text: str) -> str:
    """Request lines for the log, without a token given in the query."""
    if "token=" not in text:
        return text
    head, _, rest = text.partition("token=")
    end = min((i for i in (rest.find("&"), rest.find(" ")) if i >= 0), default=len(rest))
    return f"{head}token=***{rest[end:]}"


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


__all__ = ["StatusServer", "is_loopback"]
