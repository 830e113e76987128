"""The guarantees of README.md (unique, gap-free, clean deletion) as stored data must show
them, whatever stores it.

FORMAT.md describes a task's stored parts: the task record, its counter, its prune mark (the
lowest stored index; 0 unless finished history was pruned), an *id entry* per
execution (execution id -> the index it holds, as decimal text), *idempotency entries*
(key -> execution id), *live entries* for unfinished executions (index -> execution id) and
the execution records, each with its index, status and execution id. A reader walks one
backend's data (``leveldb_scan`` reads LevelDB) and hands each task's parts to a
:class:`TaskInvariants`, the records in index order; what must hold between them is checked
here, once, for every backend:

* every task's parts have a task record (parts without one are left over from a deletion);
* the counter and the prune mark decode, and the records sit at exactly ``mark .. counter-1``
  (the mark is never above the counter);
* every execution id appears once, and its id entry points at its record's index; no id
  entry points at nothing; every idempotency entry points at an execution id of the task;
* every live entry points at a PENDING or RUNNING record with the same id, every PENDING or
  RUNNING record has its live entry, and no live entry belongs to a task that does not exist;
* the counter never exceeds the task's ``max_executions``;
* the task record and every PENDING or RUNNING record decode in full (recovery reads them; a
  stored value of the wrong type, or nested beyond the limit on stored values, is corrupt).

A reader may also *prove* a task sound in a cheaper way of its own (the LevelDB reader
compares stored bytes) and hand over only the counts: :meth:`TaskInvariants.proven`. What
does not decode is the reader's to report (it names its own keys); the check goes on, so
one run reports everything that is wrong.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import attrs

from taskengine.storage import CorruptRecord, ExecutionStatus, Task

from .common import Bounded

#: violations kept in a report; beyond this they are only counted (a badly damaged
#: database must not exhaust memory or the terminal)
MAX_VIOLATIONS = 10_000


@attrs.frozen
class Violation:
    """One broken invariant. ``task_id`` is None for a key that names no task."""

    task_id: str | None
    message: str

    def __str__(self) -> str:
        return self.message if self.task_id is None else f"task {self.task_id!r}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task_id, "message": self.message}


@attrs.define
class TaskReport:
    """What the check found for one task id (a task, or parts left over without one)."""

    task_id: str
    #: False when the id has parts but no task record (or only live entries)
    exists: bool = False
    #: None when there is no readable counter
    counter: int | None = None
    #: the lowest stored index (0 unless history was pruned)
    prune_mark: int = 0
    executions: int = 0
    pending: int = 0
    running: int = 0
    success: int = 0
    failed: int = 0
    cancelled: int = 0
    violations: int = 0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Report:
    """The result of a check: one row per task id in key order, and the violations."""

    tasks: list[TaskReport] = attrs.Factory(list)
    #: at most MAX_VIOLATIONS of them; the rest are counted in ``violations_omitted``
    violations: list[Violation] = attrs.Factory(list)
    violations_omitted: int = 0
    #: seconds the check took
    elapsed: float = 0.0

    @property
    def violation_count(self) -> int:
        return len(self.violations) + self.violations_omitted

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def totals(self) -> dict[str, int]:
        fields = ("executions", "pending", "running", "success", "failed", "cancelled")
        out = {"tasks": sum(1 for t in self.tasks if t.exists)}
        for f in fields:
            out[f] = sum(getattr(t, f) for t in self.tasks)
        out["violations"] = self.violation_count
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": True,
            "ok": self.ok,
            "totals": self.totals(),
            "tasks": [t.to_json() for t in self.tasks],
            "violations": [v.to_json() for v in self.violations],
            "violations_omitted": self.violations_omitted,
            "elapsed": round(self.elapsed, 3),
        }


class Findings:
    """What one check finds across tasks: a row per task id and the violations, bounded."""

    def __init__(self, max_violations: int = MAX_VIOLATIONS) -> None:
        self.max_violations = max_violations
        self.tasks: list[TaskReport] = []
        self.violations: Bounded[Violation] = Bounded(max_violations)

    def add(self, task_id: str | None, message: str) -> None:
        self.violations.add(Violation(task_id, message))

    def live_without_task(self, live: dict[str, dict[int, bytes]]) -> None:
        """Live entries (task id -> index -> execution id) of task ids that have no other parts."""
        for task_id in sorted(live, key=str.encode):
            entries = live[task_id]
            self.tasks.append(TaskReport(task_id, violations=1))
            self.add(task_id, f"{len(entries)} live key(s) of a task that does not exist ({_indexes(entries)})")

    def report(self) -> Report:
        tasks = sorted(self.tasks, key=lambda t: t.task_id.encode())
        return Report(tasks, self.violations.items, self.violations.omitted)


class TaskInvariants(ABC):
    """One task's invariants, checked from its parts as a reader hands them over.

    A reader of one backend subclasses it for each task it walks (one object per task: a
    database may hold a great many small ones), and answers three questions
    (:meth:`stored_index`, :meth:`record_holds`, :meth:`idempotency_entries`); the last two
    are only asked when something is wrong. They are abstract so that a reader lacking one is
    refused when it is made (and by mypy), not halfway through reporting a damaged database.
    While it reads the parts stored before the records it fills ``id_values``, sets
    ``row.counter``/``counter_seen`` and ``row.prune_mark``/``mark_seen`` (both before the
    records), and reports each idempotency entry; then it either calls :meth:`proven` or hands
    the records over in index order (:meth:`begin_records`, then :meth:`record` or
    :meth:`unreadable` for each, then :meth:`end_records`); then :meth:`finish`. Execution
    ids stay bytes as stored (decoded only for messages).
    """

    def __init__(self, findings: Findings, task_id: str, live: dict[int, bytes]) -> None:
        self.findings = findings
        self.task_id = task_id
        self.row = TaskReport(task_id)
        #: index -> execution id, from the live entries; entries leave as their record is checked
        self.live = live
        self.live_entries = len(live)
        #: execution id -> the id entry's value as stored (a decimal index)
        self.id_values: dict[bytes, bytes] = {}
        #: index -> execution id, from ``id_values`` when first needed; entries leave as their
        #: record is checked, so what is left points at no record
        self.ids: dict[int, bytes] | None = None
        self.counter_seen = False
        self.mark_seen = False
        self.next_index = 0  # one past the highest record index seen (at least the mark, once records come)
        self.verified = False  # the reader proved the records sound
        self.corrupt_records = 0
        self.counts: dict[ExecutionStatus, int] = {}  # of the records handed over, by status
        #: this task's violations, held back until the end: a task without a record (left over
        #: from a deletion) gets one summary line instead of a line per part. Made at the first
        #: one: most tasks have none, and a database may hold a great many tasks
        self.found: Bounded[str] | None = None

    # -- what the reader answers ---------------------------------------------------------------

    @abstractmethod
    def stored_index(self, execution_id: bytes, stored: bytes) -> int:
        """The index an id entry's stored value names; CorruptRecord (naming where it is
        stored) if it is not a decimal integer."""

    @abstractmethod
    def record_holds(self, index: int, execution_id: bytes) -> bool:
        """Whether the record at ``index`` exists and is of ``execution_id``."""

    @abstractmethod
    def idempotency_entries(self) -> Iterator[tuple[bytes, bytes]]:
        """The task's idempotency entries again, as (key, execution id)."""

    # -- what it finds -----------------------------------------------------------------------

    def add(self, message: str) -> None:
        if self.found is None:
            self.found = Bounded(self.findings.max_violations)
        self.found.add(message)

    # -- the parts before the records ------------------------------------------------------

    def idempotency_entry(self, key: bytes, execution_id: bytes) -> None:
        """Needs every id entry already in ``id_values``."""
        if execution_id not in self.id_values:
            self.add(f"idempotency key {_text(key)!r} points at execution {_text(execution_id)}, which has no id key")

    # -- the records -----------------------------------------------------------------------

    def proven(self, records: int, pending: int, running: int, success: int, failed: int, cancelled: int) -> None:
        """The reader proved the records sound: exactly ``mark .. mark+records-1``, each matching
        its id entry and live entry, every id entry and live entry matched."""
        self.verified = True
        self.next_index = self.row.prune_mark + records
        row = self.row
        row.pending, row.running, row.success, row.failed, row.cancelled = (
            pending, running, success, failed, cancelled,
        )

    def begin_records(self) -> None:
        self.counts = dict.fromkeys(ExecutionStatus, 0)
        self.next_index = self.row.prune_mark
        self.index_ids()

    def _at(self, index: int) -> None:
        """The next record is at ``index``: is that where it must be?"""
        mark = self.row.prune_mark
        if index < mark:
            self.add(f"record at index {index} is below the prune mark {mark} (pruned indexes must be gone)")
        elif index != self.next_index:
            self.add(f"gap at {_span(self.next_index, index - 1)}")
        self.next_index = max(self.next_index, index + 1)

    def record(self, index: int, status: ExecutionStatus, execution_id: bytes) -> None:
        """The next record in index order, whose status and id could be read."""
        self._at(index)
        self.counts[status] += 1
        named = self.ids.pop(index, None)  # type: ignore[union-attr]  # set by begin_records
        if named != execution_id:
            self.wrong_id(index, execution_id, named)
        live_id = self.live.pop(index, None)
        if status.is_finished:
            if live_id is not None:
                self.add(f"live key at index {index}, but execution {_text(execution_id)} is {status.value}")
        elif live_id is None:
            self.add(f"{status.value} execution at index {index} ({_text(execution_id)}) has no live key")
        elif live_id != execution_id:
            self.add(f"live key at index {index} names {_text(live_id)}, but the record is {_text(execution_id)}")

    def unreadable(self, index: int, problem: str) -> None:
        """The next record in index order, whose status or id could not be read (``problem``)."""
        self._at(index)
        self.add(problem)
        self.corrupt_records += 1
        self.live.pop(index, None)  # its live entry cannot be judged
        assert self.ids is not None, "begin_records first"
        self.ids.pop(index, None)

    def end_records(self) -> None:
        row, counts = self.row, self.counts
        row.pending = counts[ExecutionStatus.PENDING]
        row.running = counts[ExecutionStatus.RUNNING]
        row.success = counts[ExecutionStatus.SUCCESS]
        row.failed = counts[ExecutionStatus.FAILED]
        row.cancelled = counts[ExecutionStatus.CANCELLED]

    def index_ids(self) -> dict[int, bytes]:
        """The id entries by index (parsed once, for the records and the leftovers)."""
        if self.ids is None:
            self.ids = {}
            shared: dict[int, list[bytes]] = {}
            for eid, raw in self.id_values.items():
                try:
                    index = self.stored_index(eid, raw)
                except CorruptRecord as e:
                    self.add(str(e))
                    continue
                if index in self.ids:
                    shared.setdefault(index, [self.ids[index]]).append(eid)
                self.ids[index] = eid
            for index, eids in sorted(shared.items()):
                named = ", ".join(_text(e) for e in eids)
                self.add(f"id keys of {len(eids)} executions point at index {index}: {named}")
        return self.ids

    def wrong_id(self, index: int, eid: bytes, named: bytes | None) -> None:
        """The record at ``index`` is of ``eid``, not of the execution an id entry names there."""
        if named is not None:
            self.add(f"id key of execution {_text(named)} points at index {index}, which holds {_text(eid)}")
        raw = self.id_values.get(eid)
        if raw is None:
            self.add(f"execution at index {index} ({_text(eid)}) has no id key")
            return
        try:
            pointed = int(raw)
        except ValueError:
            return  # reported with the id entry
        if pointed == index:
            return  # another id entry points here too: reported by index_ids
        if 0 <= pointed < 1 << 64 and self.record_holds(pointed, eid):
            self.add(f"execution id {_text(eid)} appears twice: at index {pointed} and at index {index}")
        else:
            self.add(f"execution at index {index} ({_text(eid)}) but its id key points at index {pointed}")

    # -- the end -----------------------------------------------------------------------------

    def finish(self, exists: bool, task: Task | None) -> TaskReport:
        """``exists``: the task has a task record; ``task``: that record decoded (None if it
        does not decode, which the reader has reported)."""
        findings, row = self.findings, self.row
        findings.tasks.append(row)
        row.executions = row.pending + row.running + row.success + row.failed + row.cancelled
        row.executions += self.corrupt_records
        row.exists = exists
        if not exists:
            parts = [f"{row.executions} execution record(s)", f"{len(self.id_values)} id key(s)"]
            if self.live_entries:
                parts.append(f"{self.live_entries} live key(s)")
            if self.counter_seen:
                parts.append("a counter")
            if self.mark_seen:
                parts.append("a prune mark")
            row.violations = 1
            findings.add(
                self.task_id,
                "keys of a task that does not exist (no task record; left over from a deletion?): " + ", ".join(parts),
            )
            return row
        if task is not None:
            self.check_task_record(task)
        self.check_counter()
        if not self.verified:
            self.check_leftovers()
        found = self.found
        if found is not None:
            for message in found.items:
                findings.add(self.task_id, message)
            findings.violations.omitted += found.omitted
            row.violations = len(found)
        return row

    def check_task_record(self, task: Task) -> None:
        if task.id != self.task_id:
            self.add(f"the task record names another id, {task.id!r}")
        counter = self.row.counter
        if task.max_executions is not None and counter is not None and counter > task.max_executions:
            self.add(f"counter {counter} exceeds max_executions {task.max_executions}")

    def check_counter(self) -> None:
        mark = self.row.prune_mark
        counter, end = self.row.counter, max(self.next_index, mark)
        if counter is None:
            if not self.counter_seen:
                self.add("the task has no counter")
            return
        if mark > counter:
            self.add(f"prune mark {mark} is above the counter {counter}: indexes would be issued again")
        elif end > counter:
            self.add(f"counter {counter} is behind its records: there are records up to index {end - 1}")
        elif end < counter:
            self.add(f"gap at {_span(end, counter - 1)}: missing below the counter {counter}")

    def check_leftovers(self) -> None:
        """Id entries and live entries whose index had no record."""
        ids = self.index_ids()
        for index, eid in sorted(ids.items()):
            self.add(f"id key of execution {_text(eid)} points at index {index}, which has no record")
        if ids:
            missing = set(ids.values())
            for key, execution_id in self.idempotency_entries():
                if execution_id in missing:
                    self.add(
                        f"idempotency key {_text(key)!r} points at execution {_text(execution_id)}, which has no record"
                    )
        for index, eid in sorted(self.live.items()):
            self.add(f"live key at index {index} ({_text(eid)}) has no record")


def _span(first: int, last: int) -> str:
    return f"index {first}" if first == last else f"indexes {first}..{last} ({last - first + 1} records)"


def _text(raw: bytes | None) -> str:
    """Stored bytes (an id, an index) for a message."""
    return "?" if raw is None else raw.decode(errors="backslashreplace")


def _indexes(entries: dict[int, bytes]) -> str:
    shown = ", ".join(str(i) for i in sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    return f"index {shown}" if len(entries) == 1 else f"indexes {shown}"
