"""A PostgreSQL URL's password, kept out of every message and log: what to hide, read the way
libpq reads the URL and, where a URL can be read another way, that way too.

libpq takes the user info up to the first ``@`` before any ``/`` (a password may hold ``#``,
``?`` or ``:`` unescaped), the host from there to the next ``/`` or ``?``, and query parameters
split at ``&``. A URL can mean something else to its writer: an ``@`` left unescaped in a
password makes libpq read the rest of the password as the host (and quote it in its errors);
a ``?password=`` whose value holds an ``@``, in a URL with no path, is read by libpq as user
info. So everything that is a password under either reading is hidden, and a URL whose host
would hold an ``@`` (it can never connect as its writer meant) is refused before any driver
sees it.
"""

from __future__ import annotations

import urllib.parse


def _hidden(url: str) -> list[tuple[int, int]]:
    """The spans of ``url`` (start, end) that hold a password under some reading of it."""
    start = url.find("://")
    if start == -1:
        return [(0, len(url))]
    start += 3
    spans: list[tuple[int, int]] = []
    ats = _user_info_ats(url, start)
    if ats is not None:
        colon = url.find(":", start, ats[1])
        if colon != -1:
            spans.append((colon + 1, ats[1]))
    for i, c in enumerate(url):
        if c in "?&" and i >= start:
            end = url.find("&", i + 1)
            end = len(url) if end == -1 else end
            key, eq, _ = url[i + 1:end].partition("=")
            if eq and urllib.parse.unquote(key) == "password":
                spans.append((i + 2 + len(key), end))
    return _merged([(a, b) for a, b in spans if b > a])


def _user_info_ats(url: str, start: int) -> tuple[int, int] | None:
    """The first and the last ``@`` of the user info beginning at ``start`` (after ``://``), or
    None without one: libpq ends the user info at the first; an ``@`` after it, before the end of
    the host libpq would then read, was meant as part of the password."""
    slash = url.find("/", start)
    first = url.find("@", start, len(url) if slash == -1 else slash)
    if first == -1:
        return None
    return first, url.rfind("@", first, _host_end(url, first))


def _host_end(url: str, at: int) -> int:
    ends = [i for i in (url.find("/", at), url.find("?", at)) if i != -1]
    return min(ends, default=len(url))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def redact(url: str) -> str:
    """The URL without its password: what messages and logs show."""
    if "://" not in url:
        return "postgresql://(unparsable URL)"
    shown, at = [], 0
    for a, b in _hidden(url):
        shown += [url[at:a], "***"]
        at = b
    return "".join([*shown, url[at:]])


def secrets(url: str) -> list[str]:
    """What a driver's message about ``url`` may quote of its password: each hidden span as
    written and percent-decoded, and the pieces of it after an ``@`` (libpq's host, when the
    ``@`` was meant as part of the password). Longest first."""
    found: set[str] = set()
    for a, b in _hidden(url):
        span = url[a:b]
        found.update((span, urllib.parse.unquote(span)))
        pieces = span.split("@")[1:]
        found.update(p for p in pieces if p)
        found.update("@".join(pieces[i:]) for i in range(len(pieces)))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(message: str, url: str) -> str:
    """``message`` (a driver's error about ``url``) without the URL's password: libpq quotes the
    whole URL, or a token of it, when it cannot parse it, and the host it read."""
    message = message.replace(url, redact(url))
    for secret in secrets(url):
        message = message.replace(secret, "***")
    return message


def stray_at(url: str) -> bool:
    """The host libpq would read holds an ``@``: one left unescaped in a user name or password."""
    start = url.find("://")
    if start == -1:
        return False
    ats = _user_info_ats(url, start + 3)
    return ats is not None and ats[0] != ats[1]
