"""A hypothesis state machine over create / trigger (blocking or not, with or without an
idempotency key) / delete / reads / reopen of a few task ids that share prefixes, against a
model of the expected counters and executions (unique, gap-free, stable, ordered, durable, clean deletion)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine_helpers import WAIT, Recorder, check_db, close_bounded
from taskengine import Engine, ExecutionStatus, errors

S = ExecutionStatus
TASK_IDS = st.sampled_from(["a", "a:", "a:b", "b"])


class EngineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="taskengine-hyp-")
        self.path = os.path.join(self.dir, "db")
        self.rec = Recorder()
        self.engine = Engine.open(self.path, jobs={"rec": self.rec}, workers=2)
        #: task id -> {execution id: index}; the counter is its length
        self.model: dict[str, dict[str, int]] = {}
        self.keys: dict[str, dict[str, str]] = {}

    @rule(tid=TASK_IDS)
    def create(self, tid: str) -> None:
        if tid in self.model:
            with pytest.raises(errors.TaskAlreadyExists):
                self.engine.create_task(tid, job="rec")
        else:
            task = self.engine.create_task(tid, job="rec")
            assert task.execution_count == 0
            self.model[tid] = {}
            self.keys[tid] = {}

    @rule(tid=TASK_IDS, blocking=st.booleans())
    def trigger(self, tid: str, blocking: bool) -> None:
        if tid not in self.model:
            with pytest.raises(errors.TaskNotFound):
                self.engine.trigger(tid, blocking=blocking, timeout=WAIT)
            return
        ex = self.engine.trigger(tid, data={"b": blocking}, blocking=blocking, timeout=WAIT)
        assert ex.index == len(self.model[tid]), (tid, ex.index, len(self.model[tid]))
        assert ex.status == (S.SUCCESS if blocking else S.PENDING)
        self.model[tid][ex.id] = ex.index

    @rule(tid=TASK_IDS, key=st.sampled_from(["k1", "k2"]), blocking=st.booleans())
    def trigger_idempotent(self, tid: str, key: str, blocking: bool) -> None:
        if tid not in self.model:
            with pytest.raises(errors.TaskNotFound):
                self.engine.trigger(tid, idempotency_key=key, blocking=blocking, timeout=WAIT)
            return
        ex = self.engine.trigger(tid, idempotency_key=key, blocking=blocking, timeout=WAIT)
        if key in self.keys[tid]:
            assert ex.id == self.keys[tid][key]
            assert ex.index == self.model[tid][ex.id]
        else:
            assert ex.index == len(self.model[tid])
            self.model[tid][ex.id] = ex.index
            self.keys[tid][key] = ex.id

    @rule(tid=TASK_IDS)
    def delete(self, tid: str) -> None:
        if tid not in self.model:
            with pytest.raises(errors.TaskNotFound):
                self.engine.delete_task(tid)
            return
        self.engine.delete_task(tid)
        del self.model[tid]
        del self.keys[tid]
        with pytest.raises(errors.TaskNotFound):
            self.engine.get_task(tid)

    @rule(tid=TASK_IDS)
    def read(self, tid: str) -> None:
        if tid not in self.model:
            with pytest.raises(errors.TaskNotFound):
                self.engine.list_executions(tid)
            return
        listed = self.engine.list_executions(tid, limit=1000)
        assert {e.id: e.index for e in listed} == self.model[tid]
        assert [e.index for e in listed] == list(range(len(listed)))
        for eid, idx in self.model[tid].items():
            assert self.engine.get_execution(tid, eid).index == idx
        newest = self.engine.list_executions(tid, newest_first=True, limit=2)
        assert [e.index for e in newest] == list(range(len(listed) - 1, -1, -1))[:2]

    @rule(tid=TASK_IDS)
    def finish_all(self, tid: str) -> None:
        for eid, idx in self.model.get(tid, {}).items():
            fin = self.engine.wait(tid, eid, timeout=WAIT)
            assert (fin.index, fin.status) == (idx, S.SUCCESS)

    @rule()
    def reopen(self) -> None:
        close_bounded(self.engine)
        self.check_disk()
        self.engine = Engine.open(self.path, jobs={"rec": self.rec}, workers=2)

    @invariant()
    def counters_match_the_model(self) -> None:
        for tid, executions in self.model.items():
            assert self.engine.next_index(tid) == len(executions)

    def check_disk(self) -> None:
        disk = check_db(self.path, allow_live=True)
        assert set(disk) == set(self.model), (set(disk), set(self.model))
        for tid, executions in self.model.items():
            assert disk[tid].counter == len(executions)
            assert {r.id: r.index for r in disk[tid].records.values()} == executions

    def teardown(self) -> None:
        try:
            close_bounded(self.engine)
            self.check_disk()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


EngineModel.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineModel = pytest.mark.timeout(120)(EngineModel.TestCase)
