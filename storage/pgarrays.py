"""One-dimensional arrays as parameters of the PostgreSQL writer's set-based statements, in
PostgreSQL's binary array format, or as array literals where the client binds the values.

A set-based statement (``pg_changes.Stmt.batch``) takes one array per column of the rows it joins
through ``unnest``. psycopg adapts a Python list element by element in Python, finding each
element's type as it goes; here each column's element type is known (``text``, ``bytea``,
``bigint``), so the whole array is packed in one pass: the header (one dimension, a NULL flag, the
element type, the length, lower bound 1), then each element as its length (-1 for NULL) and its
bytes (text in UTF-8, the only encoding a store opens with: ``pg_schema.check_encoding``; bytea
as is; bigint as 8 bytes, big-endian).

A write sent as one query of several statements (``pg_query``) has its values bound by the client
(``psycopg.ClientCursor``), as text: there each column is an array literal, ``{...}`` with every
element double-quoted (a backslash and a double quote escaped with a backslash) or ``NULL``, bytea
in its hex form, and the literal then quoted for SQL by libpq (``Dumper.quote``). A NUL in a text
value is refused (``psycopg.DataError``, as psycopg refuses it in a text parameter): libpq's quoting
would end the value there.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Sequence
from typing import Any

from psycopg import DataError, adapters
from psycopg.adapt import Dumper
from psycopg.pq import Format

#: element type -> (its oid, its array type's oid)
_OIDS = {"text": (25, 1009), "bytea": (17, 1001), "bigint": (20, 1016)}
_HEADER = struct.Struct(">iiIii")
_LENGTH = struct.Struct(">i")
_NULL = _LENGTH.pack(-1)
_INT8 = struct.Struct(">iq")


class _Array(tuple[Any, ...]):
    """A column of values of one element type (``element``, set by each subclass)."""

    element = ""


class TextArray(_Array):
    element = "text"


class ByteaArray(_Array):
    element = "bytea"


class BigintArray(_Array):
    element = "bigint"


def _pack(values: _Array) -> bytes:
    """``values`` in the binary array format (see the module's docstring)."""
    element_oid = _OIDS[values.element][0]
    has_null = None in values
    parts = [_HEADER.pack(1, 1 if has_null else 0, element_oid, len(values), 1)]
    if values.element == "bigint":
        parts += [_NULL if v is None else _INT8.pack(8, v) for v in values]
    else:
        for v in values:
            if v is None:
                parts.append(_NULL)
                continue
            data = v.encode() if values.element == "text" else bytes(v)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
    return b"".join(parts)


_NUL = "PostgreSQL text fields cannot contain NUL (0x00) bytes"


def _escaped(text: str) -> str:
    """``text`` with its backslashes and double quotes escaped, for inside a double-quoted element."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quoted(value: str) -> str:
    if "\x00" in value:
        raise DataError(_NUL)
    return '"' + _escaped(value) + '"'


def _quoted_all(values: _Array) -> str:
    """The elements of a text array without NULLs, each quoted (``_quoted``), joined by commas: in
    three passes over them all joined by NUL (which no element holds: one that does is refused)
    rather than a call per element."""
    joined = "\x00".join(values)
    if joined.count("\x00") != len(values) - 1:
        raise DataError(_NUL)
    return '"' + _escaped(joined).replace("\x00", '","') + '"'


def _literal(values: _Array) -> bytes:
    """``values`` as an array literal (see the module's docstring)."""
    if not values:
        return b"{}"
    has_null = None in values
    if values.element == "bigint":
        body = ",".join(["NULL" if v is None else str(int(v)) for v in values] if has_null
                        else map(str, map(int, values)))
    elif values.element == "text":
        body = ",".join(["NULL" if v is None else _quoted(v) for v in values]) if has_null else _quoted_all(values)
    else:  # bytea: its hex form, whose backslash is escaped in the literal
        body = ",".join(["NULL" if v is None else '"\\\\x' + bytes(v).hex() + '"' for v in values])
    return ("{" + body + "}").encode()


def _dumper(kind: type[_Array], fmt: Format) -> type[Dumper]:
    class ArrayDumper(Dumper):
        format = fmt
        oid = _OIDS[kind.element][1]

        def dump(self, obj: Any) -> bytes:
            return _pack(obj) if fmt is Format.BINARY else _literal(obj)

    ArrayDumper.__name__ = f"{kind.__name__}{fmt.name.title()}Dumper"
    return ArrayDumper


# on psycopg's global adapters, for these three classes only: nothing else a user adapts changes.
# The binary one last: a parameter the server binds (``%s``) takes it, a client cursor the text one
for _kind in (TextArray, ByteaArray, BigintArray):
    adapters.register_dumper(_kind, _dumper(_kind, Format.TEXT))
    adapters.register_dumper(_kind, _dumper(_kind, Format.BINARY))

_KINDS: dict[str, type[_Array]] = {"text": TextArray, "bytea": ByteaArray, "bigint": BigintArray}


@functools.lru_cache(maxsize=64)
def _types(sql: str) -> tuple[str, ...]:
    """The element type of each parameter of a set-based statement, read from its ``%s::type[]``."""
    return tuple(re.findall(r"%s::(\w+)\[\]", sql))


def columns(sql: str, rows: Sequence[Sequence[Any]]) -> list[_Array]:
    """The parameters of ``sql``, a set-based statement whose every parameter is cast as
    ``%s::type[]`` (text, bytea or bigint), for ``rows`` (each the parameters of one of its rows):
    one array per column."""
    types = _types(sql)
    return [_KINDS[t](column) for t, column in zip(types, zip(*rows, strict=True), strict=True)]


__all__ = ["BigintArray", "ByteaArray", "TextArray", "columns"]
