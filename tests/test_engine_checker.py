"""The disk checker the contract tests rely on must itself be able to fail: each violation of
a guarantee crafted on disk is reported."""

from __future__ import annotations

import time

import plyvel
import pytest
import ulid

from engine_helpers import apply_ops, check_db
from taskengine import storage
from taskengine.storage import changes, codec, keys

S = storage.ExecutionStatus


def build(path: str, n: int = 3, status: S = S.SUCCESS) -> list[str]:
    db = storage.Database.open(path, create=True)
    ids = []
    try:
        task = storage.Task(id="t", job="j", created_at=time.time(), incarnation="i")
        apply_ops(db.raw, changes.create_task(task))
        for i in range(n):
            eid = str(ulid.ULID())
            ids.append(eid)
            ex = storage.Execution(id=eid, task_id="t", index=i, status=status, blocking=False)
            apply_ops(db.raw, changes.assign(ex))
    finally:
        db.close()
    return ids


def mutate(path: str, puts: dict[bytes, bytes] | None = None, deletes: list[bytes] | None = None) -> None:
    raw = plyvel.DB(path)
    try:
        for k, v in (puts or {}).items():
            raw.put(k, v)
        for k in deletes or []:
            raw.delete(k)
    finally:
        raw.close()


def test_consistent_database_passes(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    t = check_db(path, allow_live=False)["t"]
    assert t.counter == 3 and t.indexes() == [0, 1, 2]


def test_gap_is_reported(tmp_path):
    path = str(tmp_path / "db")
    ids = build(path)
    mutate(path, deletes=[keys.execution_key("t", 1), keys.exec_id_key("t", ids[1])])
    with pytest.raises(AssertionError, match="missing \\[1\\]"):
        check_db(path)


def test_counter_behind_records_is_reported(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    mutate(path, puts={keys.counter_key("t"): codec.encode_int(2)})
    with pytest.raises(AssertionError, match="outside the mark and counter \\[2\\]"):
        check_db(path)


def test_duplicate_id_is_reported(tmp_path):
    path = str(tmp_path / "db")
    ids = build(path)
    dup = storage.Execution(id=ids[0], task_id="t", index=2, status=S.SUCCESS, blocking=False)
    mutate(path, puts={keys.execution_key("t", 2): codec.encode_execution(dup)})
    with pytest.raises(AssertionError, match="appears at two indexes"):
        check_db(path)


def test_live_work_reported_when_not_allowed(tmp_path):
    path = str(tmp_path / "db")
    build(path, status=S.PENDING)
    check_db(path, allow_live=True)
    with pytest.raises(AssertionError, match="still PENDING"):
        check_db(path, allow_live=False)


def test_pending_without_live_key_is_reported(tmp_path):
    path = str(tmp_path / "db")
    build(path, status=S.PENDING)
    mutate(path, deletes=[keys.live_key("t", 0)])
    with pytest.raises(AssertionError, match="has no live key"):
        check_db(path)


def test_orphans_of_a_deleted_task_are_reported(tmp_path):
    path = str(tmp_path / "db")
    build(path, status=S.PENDING)
    mutate(path, deletes=[keys.task_key("t")])
    with pytest.raises(AssertionError, match="orphans"):
        check_db(path)
    mutate(path, deletes=[k for k in _all_keys(path) if k.startswith(keys.task_prefix("t"))])
    with pytest.raises(AssertionError, match="live key of a task that does not exist"):
        check_db(path)


def _all_keys(path: str) -> list[bytes]:
    raw = plyvel.DB(path)
    try:
        return list(raw.iterator(include_value=False))
    finally:
        raw.close()


def test_record_below_the_prune_mark_is_reported(tmp_path):
    path = str(tmp_path / "db")
    build(path)
    mutate(path, puts={keys.prune_mark_key("t"): codec.encode_int(1)})
    with pytest.raises(AssertionError, match="prune mark 1, counter 3 .* outside the mark and counter \\[0\\]"):
        check_db(path)
