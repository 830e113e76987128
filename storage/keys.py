"""The LevelDB key layout (documented in FORMAT.md).

A task id never contains NUL (ids are printable), so ``<tag><task id>\\x00`` is a
prefix no other task's keys can share: ``a``, ``a:b`` and ``a:`` stay apart.
All of a task's keys sit in one contiguous range, which makes deletion one range
and lets a task's executions be scanned in index order without reading others.
"""

from __future__ import annotations

from typing import NamedTuple

#: the version this code writes; version 1 is version 2 without prune marks (every mark 0)
SCHEMA_VERSION = 2
#: versions this code reads
KNOWN_SCHEMAS = (1, 2)

#: the largest index and counter the engine hands out (indexes are 8-byte keys; signed, so
#: they stay integers every language reads)
MAX_INDEX = 2**63 - 1

SCHEMA_KEY = b"Mschema"

TASK_TAG = b"T"
LIVE_TAG = b"L"
SEP = b"\x00"

# one-byte kinds after a task's prefix; their order is the scan order within a task
COUNTER = b"c"
EXEC_ID = b"i"
IDEMPOTENCY = b"k"
PRUNE_MARK = b"p"
TASK = b"t"
EXECUTION = b"x"


def encode_index(index: int) -> bytes:
    return index.to_bytes(8, "big")


def decode_index(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def task_prefix(task_id: str) -> bytes:
    return TASK_TAG + task_id.encode() + SEP


def task_key(task_id: str) -> bytes:
    return task_prefix(task_id) + TASK


def counter_key(task_id: str) -> bytes:
    return task_prefix(task_id) + COUNTER


def prune_mark_key(task_id: str) -> bytes:
    return task_prefix(task_id) + PRUNE_MARK


def execution_prefix(task_id: str) -> bytes:
    return task_prefix(task_id) + EXECUTION


def execution_keys(task_id: str, index: int) -> tuple[bytes, bytes, bytes]:
    """(task prefix, record key, live key) of one execution, built together: every state change
    of an execution writes two of them."""
    tid, at = task_id.encode(), encode_index(index)
    prefix = TASK_TAG + tid + SEP
    return prefix, prefix + EXECUTION + at, LIVE_TAG + tid + SEP + at


def execution_key(task_id: str, index: int) -> bytes:
    return execution_prefix(task_id) + encode_index(index)


def exec_id_key(task_id: str, execution_id: str) -> bytes:
    return task_prefix(task_id) + EXEC_ID + execution_id.encode()


def idempotency_key(task_id: str, key: str) -> bytes:
    return task_prefix(task_id) + IDEMPOTENCY + key.encode()


def live_prefix(task_id: str | None = None) -> bytes:
    """Live entries mark executions that hold an index but have not finished."""
    return LIVE_TAG if task_id is None else LIVE_TAG + task_id.encode() + SEP


def live_key(task_id: str, index: int) -> bytes:
    return live_prefix(task_id) + encode_index(index)


class TaskKey(NamedTuple):
    task_id: str
    kind: bytes
    rest: bytes


def parse_task_key(key: bytes) -> TaskKey | None:
    """Split a ``T`` key into its task id, kind and remainder; None if malformed."""
    sep = key.find(SEP, 1)
    if not key.startswith(TASK_TAG) or sep < 0 or sep + 1 >= len(key):
        return None
    try:
        task_id = key[1:sep].decode()
    except UnicodeDecodeError:
        return None
    return TaskKey(task_id, key[sep + 1 : sep + 2], key[sep + 2 :])


def parse_live_key(key: bytes) -> tuple[str, int] | None:
    sep = key.find(SEP, 1)
    if not key.startswith(LIVE_TAG) or sep < 0 or len(key) != sep + 9:
        return None
    try:
        return key[1:sep].decode(), decode_index(key[sep + 1 :])
    except UnicodeDecodeError:
        return None


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (prefix has no 0xff tail)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])
