"""The same checks with the system's own injectors: Debian's strace (``-e inject``: an error or
SIGKILL at the N-th call, counted per thread) and libfiu's ``fiu-run`` (random failures of
every fdatasync and write(2) of the process, errno picked by libfiu). A second opinion on the
shim: a different mechanism, the same invariants (``fault_harness.verify``)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from fault_harness import TALLY, need, run_child, verify

CFG: dict[str, Any] = {"acks": 200, "tasks": 3, "threads": 4, "payload": 500, "counter_actors": 2}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("inject", ["fdatasync:error=EIO:when=4", "fdatasync:error=ENOSPC:when=9",
                                    "fdatasync:signal=SIGKILL:when=6", "write:error=ENOSPC:when=15",
                                    "write:signal=SIGKILL:when=30"])
def test_strace_injected_fault_loses_nothing(tmp_path, inject):
    strace = need("strace")
    db = str(tmp_path / "db")
    wrap = [strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=fdatasync,write", "-e", f"inject={inject}"]
    first = run_child(db, dict(CFG, acks=30))  # a database with work in it, then the faulted run
    run = run_child(db, dict(CFG, acks=100), wrap=wrap)
    TALLY["kill points" if "SIGKILL" in inject else "faults injected"] += 1
    verify(db, first.acks + run.acks)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(3))
def test_fiu_random_write_and_sync_failures_lose_nothing(tmp_path, seed):
    fiu = need("fiu-run")
    db = str(tmp_path / "db")
    wrap = [fiu, "-x", "-c", "enable_random name=posix/io/sync/fdatasync,probability=0.01",
            "-c", "enable_random name=posix/io/rw/write,probability=0.003"]
    acks = []
    for _ in range(2):  # a faulted run, then another on what it left
        run = run_child(db, CFG, wrap=wrap)
        acks += run.acks
        TALLY["faults injected"] += bool(run.errors or run.open_failed)
    if not os.path.exists(db):  # every open failed while creating it: nothing was acknowledged
        assert not acks
        return
    verify(db, acks)
