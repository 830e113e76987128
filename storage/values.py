"""The JSON values the engine stores (data, config, results): bounded, and read back safely.

Python's ``json`` recurses once per level of nesting, in C, against the interpreter's recursion
limit; a value a few hundred levels deep can exhaust that limit wherever it is encoded or decoded
(in a caller, in an actor, at the next open), and a program that raised its limit can store what
every other program then fails to read. So a value is accepted only up to ``MAX_DEPTH`` levels
and ``MAX_BYTES`` bytes, its depth measured on its JSON text without recursion, and a stored value
is decoded only after the same measurement. Both limits are documented in the README.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: the deepest nesting of lists and objects accepted in one value (a scalar is 0, ``[]`` is 1)
MAX_DEPTH = 100
#: the largest value accepted, in bytes of its UTF-8 JSON text
MAX_BYTES = 1 << 20

#: serialise a value known to be JSON (what the engine holds is); TypeError/ValueError for what
#: JSON cannot hold. The encoder's own method: this runs on every state change of an execution
to_json = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
_dumps = to_json
_TOKENS = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{}]', re.DOTALL)  # a string, or a bracket


def too_deep(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests lists and objects more than ``limit`` levels deep.

    One ``count`` per bracket settles almost every value (there cannot be more levels than
    opening brackets); only a text with more brackets than ``limit`` is walked token by token,
    skipping strings, with a counter rather than recursion."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(text):
        c = match.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


def normalize(value: Any, what: str) -> Any:
    """The JSON-normalised copy of ``value`` that a record will hold (tuples become lists, keys
    strings), detached from the caller's objects; ValueError naming ``what`` if it is not JSON,
    is deeper than MAX_DEPTH or larger than MAX_BYTES.

    Whatever the value's own methods raise (a dict subclass whose ``items`` fails) is reported
    the same way; nothing of it escapes."""
    try:
        text = _dumps(value)
    except RecursionError:
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep (the limit)") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serializable: {e}") from None
    except Exception as e:  # noqa: BLE001 - the value's own code failed: a clear refusal instead
        raise ValueError(f"{what} cannot be stored as JSON: {describe(e)}") from None
    try:
        raw = text.encode()
    except UnicodeEncodeError as e:  # a lone surrogate (e.g. from os.fsdecode)
        raise ValueError(f"{what} is not JSON-serializable: {e}") from None
    if len(raw) > MAX_BYTES:
        raise ValueError(f"{what} is {len(raw)} bytes as JSON, larger than the limit of {MAX_BYTES} bytes")
    if too_deep(text, MAX_DEPTH):
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep (the limit)")
    return json.loads(text)


def describe(e: BaseException) -> str:
    """``TypeName: message`` of an exception that a caller's own code raised, even if its
    ``__str__`` fails too."""
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a broken __str__ must not replace the refusal
        message = "(its message cannot be shown)"
    return f"{type(e).__name__}: {message}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    f = float(text)
    if math.isinf(f):
        raise ValueError(f"{text[:20]} is out of range")
    return f


def loads(raw: bytes, limit: int) -> Any:
    """Decode stored JSON that nests at most ``limit`` levels; ValueError for anything else, or
    for what could not be written back (NaN, infinities, lone surrogates)."""
    text = raw.decode()  # strictly UTF-8 (json.loads would also guess UTF-16 and UTF-32)
    if too_deep(text, limit):
        raise ValueError(f"nested more than {limit} levels deep")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # a caller deep in its own stack: refused all the same
        raise ValueError(f"nested too deeply to decode here (limit {limit})") from None
    if "\\u" in text:  # an escape can make a lone surrogate, which UTF-8 cannot store again
        try:
            _dumps(value).encode()
        except UnicodeEncodeError as e:
            raise ValueError(f"a string cannot be stored as UTF-8 ({e})") from None
    return value
