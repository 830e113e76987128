"""Encoding of stored values (see FORMAT.md).

An execution record starts with a one-byte status and the execution id before its
JSON body, so replay can check status and identity without decoding JSON.

Every decoder returns a record the engine can use and write back, or raises CorruptRecord
naming the key: a stored value of the wrong type (a counter limit that is a string, an id
that is not ASCII, data nested beyond ``values.MAX_DEPTH``) must never surface later as a
TypeError in an actor or a RecursionError at open.
"""

from __future__ import annotations

from typing import Any

from . import keys, values
from .errors import CorruptRecord
from .records import Execution, ExecutionStatus, Task
from .values import to_json


def encode_task(task: Task) -> bytes:
    return to_json(
        {
            "id": task.id,
            "job": task.job,
            "config": task.config,
            "max_executions": task.max_executions,
            "created_at": task.created_at,
            "incarnation": task.incarnation,
        }
    ).encode()


def decode_task(key: bytes, value: bytes, execution_count: int = 0, prune_mark: int = 0) -> Task:
    try:
        d = _object(value, 0)
        task = Task(
            id=_text(d, "id"),
            job=_text(d, "job"),
            config=d["config"],
            max_executions=_limit(d["max_executions"]),
            created_at=_time(d, "created_at"),
            incarnation=_text(d, "incarnation", empty=True),
            execution_count=execution_count,
            prune_mark=prune_mark,
        )
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise CorruptRecord(key, f"task record does not decode ({_what(e)})") from None
    parsed = keys.parse_task_key(key)
    if parsed is None or parsed.task_id != task.id:
        raise CorruptRecord(key, f"the task record names task {task.id!r}, not the task of its key")
    return task


# -- checks of decoded fields: each raises ValueError/KeyError/TypeError, which the decoders turn
# into CorruptRecord


def _object(raw: bytes, at: int) -> dict[str, Any]:
    """The JSON object at ``raw[at:]``: the record's own level plus its values' ``MAX_DEPTH``."""
    d = values.loads(raw[at:] if at else raw, values.MAX_DEPTH + 1)
    if type(d) is not dict:
        raise TypeError(f"not a JSON object but {type(d).__name__}")
    return d


def _text(d: dict[str, Any], field: str, *, empty: bool = False) -> str:
    v = d[field]
    if type(v) is not str or not (v or empty):
        raise TypeError(f"{field} is {v!r}, not a {'' if empty else 'non-empty '}string")
    return v


def _text_or_none(d: dict[str, Any], field: str, *, optional: bool = False) -> str | None:
    """A string or null; ``optional``: the field may also be absent (records written before it)."""
    if optional and field not in d:
        return None
    return None if d[field] is None else _text(d, field, empty=True)


def _time(d: dict[str, Any], field: str) -> float:
    v = d[field]
    if type(v) not in (float, int):  # a float is finite: values.loads refuses the others
        raise TypeError(f"{field} is {v!r}, not a time")
    return v  # type: ignore[no-any-return]


def _time_or_none(d: dict[str, Any], field: str) -> float | None:
    return None if d[field] is None else _time(d, field)


def _limit(v: Any) -> int | None:
    if v is not None and (type(v) is not int or not 1 <= v <= keys.MAX_INDEX):
        raise TypeError(f"max_executions is {v!r}, not an integer from 1 to {keys.MAX_INDEX}")
    return v


def _what(e: BaseException) -> str:
    return str(e) if not isinstance(e, KeyError) else f"no field {e}"


def encode_int(n: int) -> bytes:
    return str(n).encode()


def decode_int(key: bytes, value: bytes) -> int:
    if not (value.isdigit() and len(value) <= 19):  # ASCII digits only: no sign, space or "_"
        raise CorruptRecord(key, f"expected a decimal integer, found {value[:40]!r}")
    return int(value)


def encode_execution(ex: Execution) -> bytes:
    """The id must be a ULID (ID_LEN characters): the header has a fixed layout.

    The body is the JSON object ``{"blocking", "data", "result", "error", "created_at",
    "started_at", "finished_at", "idempotency_key"}`` in that order, written field by field:
    this runs once per state change on a counter actor, and a dict through ``json`` costs
    several times as much as the values alone. A ``"traceback"`` member follows only when the
    execution has one, so every other record is written exactly as before it existed."""
    if len(ex.id) != ID_LEN:
        raise ValueError(f"execution id {ex.id!r} is not a {ID_LEN}-character ULID")
    data, result, error, key = ex.data, ex.result, ex.error, ex.idempotency_key
    body = "".join(
        [
            '{"blocking":true,"data":' if ex.blocking else '{"blocking":false,"data":',
            "null" if data is None else _json(data),
            ',"result":',
            "null" if result is None else _json(result),
            ',"error":',
            "null" if error is None else _json(error),
            ',"created_at":',
            _json(ex.created_at),
            ',"started_at":',
            _json(ex.started_at),
            ',"finished_at":',
            _json(ex.finished_at),
            ',"idempotency_key":',
            "null" if key is None else _json(key),
            "}" if ex.traceback is None else ',"traceback":' + to_json(ex.traceback) + "}",
        ]
    )
    return ex.status.code + ex.id.encode() + keys.SEP + body.encode()


def _json(value: Any) -> str:
    """``to_json`` with the common cases short-cut (what ``json`` would write for them)."""
    if value is None:
        return "null"
    if type(value) is float and value - value == 0.0:  # finite: NaN and infinities go to json
        return float.__repr__(value)
    return to_json(value)


#: the header of an execution record: status byte, id, then ``keys.SEP`` at ``ID_END``
STATUS_AT = 0
ID_START = 1
ID_LEN = 26
ID_END = ID_START + ID_LEN


def _id(raw: bytes) -> str:
    """An execution id as stored: ID_LEN ASCII characters (a ULID)."""
    if len(raw) != ID_LEN or not raw.isascii():
        raise ValueError(f"{raw[:40]!r} is not a {ID_LEN}-character ASCII execution id")
    return raw.decode()


def decode_execution_id(key: bytes, value: bytes) -> str:
    """The value of a live key or an idempotency key."""
    try:
        return _id(value)
    except ValueError as e:
        raise CorruptRecord(key, str(e)) from None


def peek_execution(key: bytes, value: bytes) -> tuple[ExecutionStatus, str]:
    """Status and id of a record without decoding its JSON body."""
    try:
        if len(value) <= ID_END or value[ID_END] != keys.SEP[0]:
            raise ValueError(f"no id separator at byte {ID_END}")
        return ExecutionStatus.from_code(value[STATUS_AT]), _id(value[ID_START:ID_END])
    except (KeyError, ValueError, IndexError) as e:
        raise CorruptRecord(key, f"execution record header does not decode ({e})") from None


def decode_execution(key: bytes, value: bytes, task_id: str, index: int) -> Execution:
    status, exec_id = peek_execution(key, value)
    try:
        d = _object(value, ID_END + 1)
        blocking = d["blocking"]
        if type(blocking) is not bool:
            raise TypeError(f"blocking is {blocking!r}, not true or false")
        return Execution(
            id=exec_id,
            task_id=task_id,
            index=index,
            status=status,
            blocking=blocking,
            data=d["data"],
            result=d["result"],
            error=_text_or_none(d, "error"),
            created_at=_time(d, "created_at"),
            started_at=_time_or_none(d, "started_at"),
            finished_at=_time_or_none(d, "finished_at"),
            idempotency_key=_text_or_none(d, "idempotency_key"),
            traceback=_text_or_none(d, "traceback", optional=True),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise CorruptRecord(key, f"execution record body does not decode ({_what(e)})") from None
