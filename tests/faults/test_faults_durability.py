"""contract §3.5 durable, tested rather than assumed: every acknowledgement leaves the engine only
after an fsync that covers its record in LevelDB's log.

The shim journals each successful sync (the file's size before it) and each line written to the
acknowledgement pipe, in the order they happened; the record of each acknowledged execution is
found in the log files afterwards. With ``sync=False`` the same check must fail (it is the
control that shows the test can fail)."""

from __future__ import annotations

import os

import pytest

from fault_harness import Shim, run_child, verify
from powerloss import inode_files, unsynced_acks


def acks_before_fsync(shim: Shim, **cfg: object) -> tuple[int, list[str]]:
    db = os.path.join(shim.root, "db")
    run = run_child(db, {"acks": 300, "tasks": 3, "threads": 4, **cfg}, shim.env(journal=True))
    assert run.done and not run.errors, (run.errors, run.open_failed, run.stderr)
    bad = unsynced_acks(shim.journal, inode_files(shim.root, shim.keep))
    verify(db, run.acks, tally=bool(cfg.get("sync", True)))
    return len(run.acks), bad


@pytest.mark.timeout(120)
@pytest.mark.parametrize("counter_actors", [1, 2])
def test_every_acknowledgement_follows_the_fsync_of_its_record(shim, counter_actors):
    n, bad = acks_before_fsync(shim, counter_actors=counter_actors)
    assert n >= 300
    assert bad == [], f"{len(bad)} of {n} acknowledged before their record was synced: {bad[:3]}"


@pytest.mark.timeout(120)
def test_the_check_fails_when_writes_are_not_synced(shim):
    """The negative control: with sync off every acknowledgement precedes any fsync of its record."""
    n, bad = acks_before_fsync(shim, sync=False)
    assert len(bad) == n, f"only {len(bad)} of {n} acknowledgements flagged with sync=False"
