"""A job that raises: its traceback is logged at WARNING and kept with the execution (API, disk,
``taskengine inspect``), and successful executions are stored exactly as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import plyvel
import pytest

from taskengine import Engine, ExecutionStatus, JobContext
from taskengine.storage import codec, keys
from taskengine.tools.cli import main

pytestmark = pytest.mark.timeout(60)


def _inner_helper(n: int) -> None:
    raise ValueError(f"bad value {n}")


def failing_job(ctx: JobContext) -> None:
    _inner_helper(ctx.data)


def ok_job(ctx: JobContext) -> dict[str, int]:
    return {"index": ctx.index}


def _raw_record(path: str, task_id: str, index: int) -> bytes:
    db = plyvel.DB(path)
    try:
        value = db.get(keys.execution_key(task_id, index))
        assert value is not None
        return bytes(value)
    finally:
        db.close()


def test_a_failed_job_keeps_its_traceback_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "db")
    caplog.set_level(logging.WARNING, logger="taskengine")
    with Engine.open(path, jobs={"fail": failing_job, "ok": ok_job}) as engine:
        engine.create_task("t", job="fail")
        engine.create_task("good", job="ok")
        ex = engine.trigger("t", 7, blocking=True, timeout=10)
        good = engine.trigger("good", blocking=True, timeout=10)
    assert ex.status is ExecutionStatus.FAILED
    assert ex.error == "ValueError: bad value 7"
    tb = ex.traceback
    assert tb is not None and tb.startswith("Traceback (most recent call last):")
    assert "in failing_job" in tb and "in _inner_helper" in tb and tb.rstrip().endswith("ValueError: bad value 7")
    assert "run_job" not in tb  # the job's frames only, not the engine's
    assert good.traceback is None

    # logged once, at WARNING, on the library's logger, with the traceback
    logged = [r for r in caplog.records if r.name.startswith("taskengine") and ex.id in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert "in _inner_helper" in logged[0].getMessage()

    # on disk, and read back after a restart
    with Engine.open(path, jobs={"fail": failing_job, "ok": ok_job}) as engine:
        assert engine.get_execution("t", ex.id).traceback == tb
        assert engine.list_executions("t")[0].traceback == tb
    # a successful execution's record has no traceback member at all (unchanged format)
    assert b"traceback" not in _raw_record(path, "good", 0)
    assert b'"traceback":' in _raw_record(path, "t", 0)

    # taskengine inspect: in the JSON record, and as text with --traceback
    assert main(["inspect", path, "--task", "t", "--execution", ex.id]) == 0
    assert json.loads(capsys.readouterr().out)["traceback"] == tb
    assert main(["inspect", path, "--task", "t", "--index", "0", "--traceback"]) == 0
    assert capsys.readouterr().out == tb.rstrip("\n") + "\n"
    assert main(["inspect", path, "--task", "good", "--index", "0", "--traceback"]) == 1
    assert "SUCCESS: it has no traceback" in capsys.readouterr().err


def test_failures_that_are_not_a_raise_have_no_traceback(tmp_path: Path) -> None:
    def not_json(ctx: JobContext) -> Any:
        return {1, 2}

    with Engine.open(str(tmp_path / "db"), jobs={"bad": not_json}) as engine:
        engine.create_task("t", job="bad")
        ex = engine.trigger("t", blocking=True, timeout=10)
    assert ex.status is ExecutionStatus.FAILED and ex.error is not None and ex.error.startswith("InvalidResult")
    assert ex.traceback is None


def test_a_huge_traceback_keeps_its_end(tmp_path: Path) -> None:
    def long_message(ctx: JobContext) -> None:
        raise RuntimeError("x" * 200_000 + " the end")

    with Engine.open(str(tmp_path / "db"), jobs={"long": long_message}) as engine:
        engine.create_task("t", job="long")
        ex = engine.trigger("t", blocking=True, timeout=10)
    assert ex.traceback is not None and len(ex.traceback) < 70_000
    assert ex.traceback.startswith("[") and ex.traceback.rstrip().endswith("the end")


def test_records_without_the_member_decode_and_unknown_text_is_refused() -> None:
    from taskengine.storage import Execution, errors

    ex = Execution(id="0" * 26, task_id="t", index=0, status=ExecutionStatus.FAILED, blocking=False, error="E: x")
    raw = codec.encode_execution(ex)
    assert b"traceback" not in raw
    assert codec.decode_execution(b"k", raw, "t", 0) == ex
    with_tb = codec.encode_execution(Execution(**{**ex.to_json(), "status": ex.status, "traceback": "T\nü"}))
    assert codec.decode_execution(b"k", with_tb, "t", 0).traceback == "T\nü"
    broken = raw[:-1] + b',"traceback":5}'
    with pytest.raises(errors.CorruptRecord):
        codec.decode_execution(b"k", broken, "t", 0)
