"""Reopening a database with thousands of pending executions whose job is not registered yet
logs one line per job, not one per execution (the node's log stays readable)."""

from __future__ import annotations

import logging

import pytest

from engine_helpers import WAIT, Recorder
from tools_dbs import DbBuilder, P, R, S


@pytest.mark.timeout(120)
def test_recovery_logs_one_summary_line_per_waiting_job(make_engine, db_path, caplog):
    with DbBuilder(db_path) as b:  # what a node killed with this backlog leaves on disk
        for t in range(3):
            b.task(f"alpha-{t}", job="alpha")
            b.executions(f"alpha-{t}", S, *[P] * 1000, blocking=False)
        for t in range(2):
            b.task(f"beta-{t}", job="beta")
            b.executions(f"beta-{t}", R, *[P] * 1000, blocking=False)
    caplog.set_level(logging.INFO, logger="taskengine")
    alpha = Recorder()
    engine = make_engine(db_path, jobs={}, workers=2)
    assert engine.stats().waiting_for_job == 5000  # the pool has taken the recovered work
    opened = [r.getMessage() for r in caplog.records if r.name.startswith("taskengine")]
    assert len(opened) <= 10, f"{len(opened)} log lines at open: {opened[:20]}"
    waiting = sorted(line for line in opened if "wait for job" in line)
    assert waiting == [
        "2000 executions wait for job 'beta' to be registered (2000 in all)",
        "3000 executions wait for job 'alpha' to be registered (3000 in all)",
    ]
    assert any("recovered 5000 pending executions; 2 interrupted ones finished as FAILED" in line for line in opened)

    caplog.clear()
    engine.register_job("alpha", alpha)
    assert alpha.wait_calls(3000, timeout=WAIT * 2)
    registered = [r.getMessage() for r in caplog.records if r.name.startswith("taskengine")]
    assert registered == ["job 'alpha' registered: 3000 executions that waited for it are queued"]
    assert engine.stats().waiting_for_job == 2000
