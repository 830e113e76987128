"""What ``Engine.stats()`` reports: one engine's live figures, as a typed record."""

from __future__ import annotations

import attrs


@attrs.frozen
class EngineStats:
    """A snapshot of one engine, taken by asking each of its actors in turn (so the figures are
    each exact but not all of one instant). Counts are since this engine was opened."""

    #: actors that serve tasks (each task always goes to the same one)
    counter_actors: int
    #: executors that run jobs (``workers``, unless some were given up on and are being replaced)
    executors: int
    #: this engine's actor threads: counter actors, the pool, the pending store, every executor
    #: (including abandoned ones whose hung job has not returned)
    live_actors: int
    #: executions ready to run, waiting for a free executor (one cancelled while waiting stays
    #: here until an executor takes it and skips it)
    queued: int
    #: executions whose job is running now
    running: int
    #: executions recovered at open whose job is not registered yet
    waiting_for_job: int
    #: blocking executions triggered and not started (they have no index yet)
    queued_blocking: int
    #: non-blocking executions acknowledged and not finished yet (a running one counts until it finishes)
    pending: int
    #: callers waiting for an execution to finish (``wait``, blocking triggers, ``await_execution``)
    waiters: int
    #: task states held in memory by the counter actors (bounded by ``max_cached_tasks``)
    cached_tasks: int
    #: executors replaced after they died or their job outlived the job timeout
    replaced_executors: int
    #: executions triggered (repeats of an idempotency key not counted)
    triggered: int
    #: executions finished, whatever their status: ``succeeded + failed + cancelled``
    finished: int
    succeeded: int
    #: failed ones: the job raised, timed out, returned what JSON cannot hold, or was interrupted
    failed: int
    #: cancelled by ``cancel`` or by the deletion of their task
    cancelled: int
    #: executions removed by ``prune`` and the ``keep_last`` policy
    pruned: int
    #: LevelDB writes (each one fsync with ``sync=True``)
    writes: int
    #: atomic changes those writes carried: ``changes_written / writes`` is the group commit's size
    changes_written: int
    #: why writes stopped (a failed write: the engine refuses every write until it is reopened),
    #: or None while it writes
    write_failure: str | None = None
    #: the ``max_queued`` bound, or None (no bound: the backlog is then not counted)
    max_queued: int | None = None
    #: executions triggered and not started, counted against ``max_queued``
    backlog: int | None = None
    #: the most the backlog has held at once
    backlog_peak: int | None = None
    #: this engine's node id (``Engine.open(node_id=...)``)
    node_id: str | None = None
    #: its epoch on a PostgreSQL database (one more each time the node id joins); None on LevelDB
    node_epoch: int | None = None

    def to_json(self) -> dict[str, int | str | None]:
        return attrs.asdict(self)
