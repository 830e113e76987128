"""Encoding of stored values (see FORMAT.md).

An execution record starts with a one-byte status and the execution id before its
JSON body, so replay can check status and identity without decoding JSON.
"""

from __future__ import annotations

import json
from typing import Any

from . import keys
from .errors import CorruptRecord
from .records import Execution, ExecutionStatus, Task

_dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode


def to_json(value: Any) -> str:
    """Serialise user data; raises TypeError/ValueError for what JSON cannot hold."""
    return _dumps(value)


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
        d = json.loads(value)
        return Task(
            id=d["id"],
            job=d["job"],
            config=d["config"],
            max_executions=d["max_executions"],
            created_at=d["created_at"],
            incarnation=d["incarnation"],
            execution_count=execution_count,
            prune_mark=prune_mark,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptRecord(key, f"task record does not decode ({e})") from None


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
            "}" if ex.traceback is None else ',"traceback":' + _dumps(ex.traceback) + "}",
        ]
    )
    return ex.status.code + ex.id.encode() + keys.SEP + body.encode()


def _json(value: Any) -> str:
    """``to_json`` with the common cases short-cut (what ``json`` would write for them)."""
    if value is None:
        return "null"
    if type(value) is float and value - value == 0.0:  # finite: NaN and infinities go to json
        return float.__repr__(value)
    return _dumps(value)


#: the header of an execution record: status byte, id, then ``keys.SEP`` at ``ID_END``
STATUS_AT = 0
ID_START = 1
ID_LEN = 26
ID_END = ID_START + ID_LEN


def _optional_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"traceback is a {type(value).__name__}, not a string")


def peek_execution(key: bytes, value: bytes) -> tuple[ExecutionStatus, str]:
    """Status and id of a record without decoding its JSON body."""
    try:
        if len(value) <= ID_END or value[ID_END] != keys.SEP[0]:
            raise ValueError(f"no id separator at byte {ID_END}")
        return ExecutionStatus.from_code(value[STATUS_AT]), value[ID_START:ID_END].decode()
    except (KeyError, ValueError, IndexError) as e:
        raise CorruptRecord(key, f"execution record header does not decode ({e})") from None


def decode_execution(key: bytes, value: bytes, task_id: str, index: int) -> Execution:
    status, exec_id = peek_execution(key, value)
    try:
        d = json.loads(value[ID_END + 1 :])
        return Execution(
            id=exec_id,
            task_id=task_id,
            index=index,
            status=status,
            blocking=d["blocking"],
            data=d["data"],
            result=d["result"],
            error=d["error"],
            created_at=d["created_at"],
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            idempotency_key=d["idempotency_key"],
            traceback=_optional_text(d.get("traceback")),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptRecord(key, f"execution record body does not decode ({e})") from None
