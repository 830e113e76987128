"""What a stored record holds: text UTF-8 cannot store is refused at the call (or fails the job
that made it) and consumes no index; the record holds a JSON-normalised copy of the caller's data,
not the caller's object."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskengine import Engine, ExecutionStatus, InvalidArgument, JobContext, TaskNotFound

SURROGATE = "name-\udcff"  # what os.fsdecode gives for a file name that is not UTF-8


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    def job(ctx: JobContext) -> Any:
        if ctx.data == "surrogate-result":
            return SURROGATE
        if ctx.data == "surrogate-error":
            raise ValueError(SURROGATE)
        return ctx.data

    e = Engine.open(str(tmp_path / "db"), jobs={"job": job}, workers=2)
    e.create_task("t", job="job")
    yield e
    e.close()


def test_strings_utf8_cannot_store_are_rejected_and_consume_nothing(engine: Engine, tmp_path: Path) -> None:
    for bad in ({"name": SURROGATE}, [SURROGATE], SURROGATE):
        with pytest.raises(InvalidArgument):
            engine.trigger("t", bad)
        with pytest.raises(InvalidArgument):
            engine.trigger("t", bad, blocking=True, timeout=5)
    with pytest.raises(InvalidArgument):
        engine.trigger("t", idempotency_key=SURROGATE)
    with pytest.raises(InvalidArgument):
        engine.create_task("u", job="job", config={"x": SURROGATE})
    with pytest.raises(InvalidArgument):
        engine.get_execution("t", SURROGATE)
    with pytest.raises(TaskNotFound):
        engine.get_task("u")
    assert engine.next_index("t") == 0
    assert engine.trigger("t", "fine", blocking=True, timeout=5).index == 0


def test_a_job_result_or_error_utf8_cannot_store_fails_cleanly(engine: Engine) -> None:
    bad_result = engine.trigger("t", "surrogate-result", blocking=True, timeout=10)
    assert bad_result.status is ExecutionStatus.FAILED and "InvalidResult" in (bad_result.error or "")
    bad_error = engine.trigger("t", "surrogate-error", blocking=True, timeout=10)
    assert bad_error.status is ExecutionStatus.FAILED and "ValueError" in (bad_error.error or "")
    assert engine.get_execution("t", bad_error.id).error == bad_error.error
    assert engine.trigger("t", "next", blocking=True, timeout=10).index == 2


def test_the_record_holds_a_copy_of_the_callers_data(engine: Engine) -> None:
    data: dict[str, Any] = {"n": 0, "pair": (1, 2)}
    ids = []
    for n in range(5):
        data["n"] = n
        ids.append(engine.trigger("t", data).id)
    data["later"] = {1, 2}  # not JSON: must not reach any record
    for n, eid in enumerate(ids):
        done = engine.wait("t", eid, timeout=10)
        assert done.status is ExecutionStatus.SUCCESS
        assert done.data == {"n": n, "pair": [1, 2]} == done.result
