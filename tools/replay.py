"""``taskengine replay``: check every invariant of DESIGN.md §3 on a database's files.

The check (:func:`check`) is separate from printing so the stress tool and the tests use
the same code the command does. It reads a snapshot of the database in one pass of a
raw LevelDB iterator over the ``L`` range (small: only unfinished work) and then the
``T`` range, in key order; that is one sequential read of the files. Execution bodies
are not JSON-decoded unless asked for (``--json``): the status byte and execution id at
the head of each record (FORMAT.md) are all the invariants need. A task's records are
first only *proven* sound, cheaply (see :class:`_TaskScan`); only a task that cannot be
proven is read a second time, slowly, to say exactly what is wrong. So on a sound
database the check runs at well over half the speed of iterating the database at all.

Memory: the ``i`` keys of the task being walked (about 200 bytes per execution), and
nothing of tasks already walked but one summary row each.

What a task's keys must look like (FORMAT.md, "Invariants a reader can check"):

* every ``T`` range has a task record (keys without one are left over from a deletion);
* the counter decodes, and the records sit at exactly ``0 .. counter-1``;
* every execution id appears once, and its ``i`` key points at its record's index;
  no ``i`` key points at nothing; every ``k`` key points at an execution id of the task;
* every ``L`` key points at a PENDING or RUNNING record with the same id, every PENDING
  or RUNNING record has its ``L`` key, and no ``L`` key belongs to a task that does not exist;
* the counter never exceeds the task's ``max_executions``.

A value that does not decode is reported as a violation naming its key, and the walk
goes on, so one run reports everything that is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

import attrs

from taskengine.storage import CorruptRecord, Database, Execution, ExecutionStatus, codec, keys

from .common import EXIT_FAILED, EXIT_OK, ToolError, format_table, open_database

log = logging.getLogger(__name__)

#: violations kept in a report; beyond this they are only counted (a badly damaged
#: database must not exhaust memory or the terminal)
MAX_VIOLATIONS = 10_000

# the one-byte status codes at the head of a record (FORMAT.md), as ints
_P = ExecutionStatus.PENDING.code[0]
_R = ExecutionStatus.RUNNING.code[0]
_S = ExecutionStatus.SUCCESS.code[0]
_F = ExecutionStatus.FAILED.code[0]
_C = ExecutionStatus.CANCELLED.code[0]


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
    """What replay found for one task id (a task, or keys left over without one)."""

    task_id: str
    #: False when the id has keys but no task record (or only live keys)
    exists: bool = False
    #: None when there is no readable counter
    counter: int | None = None
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
    """The result of :func:`check`: one row per task id in key order, and the violations."""

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


def check(
    db: Database,
    task: str | None = None,
    *,
    on_execution: Callable[[Execution], None] | None = None,
    max_violations: int = MAX_VIOLATIONS,
) -> Report:
    """Check the invariants of every task (or only ``task``) on a snapshot of ``db``.

    ``on_execution``, if given, receives every execution record decoded in full, in key
    order (task by task, index by index); decoding bodies also checks them. Without it
    only record headers are read. Never raises for what it finds in the data: a value
    that does not decode is a violation.
    """
    started = time.perf_counter()
    with db.raw.snapshot() as snap:
        report = _Checker(snap, task, on_execution, max_violations).run()
    report.elapsed = time.perf_counter() - started
    log.info("replay checked %d executions in %.3f s", report.totals()["executions"], report.elapsed)
    return report


def _span(first: int, last: int) -> str:
    return f"index {first}" if first == last else f"indexes {first}..{last} ({last - first + 1} records)"


class _Checker:
    """One walk of one snapshot: the ``L`` range, then every task's ``T`` range."""

    def __init__(
        self, snap: Any, task: str | None, emit: Callable[[Execution], None] | None, max_violations: int
    ) -> None:
        self.snap = snap
        self.task = task
        self.emit = emit
        self.max_violations = max_violations
        self.report = Report()
        #: task id -> index -> execution id, from the ``L`` range; a task's entries are
        #: taken out when the task is walked, so what is left belongs to no task
        self.live: dict[str, dict[int, bytes]] = {}
        #: ``_decimals[i]`` is index ``i`` as an id key stores it (codec.encode_int), so the
        #: fast pass compares stored bytes instead of parsing them; grown to the largest task
        self._decimals: list[bytes] = []

    def decimals(self, n: int) -> list[bytes]:
        """The stored form of every index up to ``n`` at least."""
        d = self._decimals
        if len(d) <= n:
            d.extend(codec.encode_int(i) for i in range(len(d), n + 1))
        return d

    # -- reporting ---------------------------------------------------------------------

    def add(self, task_id: str | None, message: str) -> None:
        if len(self.report.violations) < self.max_violations:
            self.report.violations.append(Violation(task_id, message))
        else:
            self.report.violations_omitted += 1

    # -- the walk ----------------------------------------------------------------------

    def run(self) -> Report:
        self.read_live()
        if self.task is None:
            start, stop = keys.TASK_TAG, keys.prefix_end(keys.TASK_TAG)
        else:
            start = keys.task_prefix(self.task)
            stop = keys.prefix_end(start)
        with self.snap.iterator(start=start, stop=stop) as it:
            item: tuple[bytes, bytes] | None = next(it, None)
            while item is not None:
                item = self.scan_task(it, item)
        for task_id in sorted(self.live, key=str.encode):
            entries = self.live[task_id]
            tr = TaskReport(task_id, violations=1)
            self.report.tasks.append(tr)
            self.add(task_id, f"{len(entries)} live key(s) of a task that does not exist ({_indexes(entries)})")
        self.live.clear()
        self.report.tasks.sort(key=lambda t: t.task_id.encode())
        return self.report

    def read_live(self) -> None:
        prefix = keys.live_prefix(self.task)
        with self.snap.iterator(prefix=prefix) as it:
            for key, value in it:
                parsed = keys.parse_live_key(key)
                if parsed is None:
                    self.add(None, f"malformed live key {key!r}")
                    continue
                self.live.setdefault(parsed[0], {})[parsed[1]] = value

    def scan_task(self, it: Any, first: tuple[bytes, bytes]) -> tuple[bytes, bytes] | None:
        """Check one task's range, starting at its first key; returns the first key after it."""
        parsed = keys.parse_task_key(first[0])
        if parsed is None:
            self.add(None, f"malformed task key {first[0]!r}")
            return next(it, None)
        return _TaskScan(self, parsed.task_id).scan(first, it)


class _TaskScan:
    """One task's range, walked once.

    The execution records are checked in two ways. The *fast* pass assumes the task is
    sound and only proves it: records are taken to be at 0, 1, 2, ... in key order, and
    each must carry the id whose ``i`` key names that index, so no index is decoded and
    nothing is removed from any table; counts at the end (records == id keys == last
    index + 1, PENDING/RUNNING records == live keys) close the argument. If anything does
    not fit, the *exact* pass reads the task's records again from the same snapshot, with
    real indexes, and says precisely what is wrong. A clean database (the common case)
    only ever pays for the fast pass.

    Execution ids stay the raw bytes of keys and values (decoded only for messages).
    """

    def __init__(self, checker: _Checker, task_id: str) -> None:
        self.checker = checker
        self.snap = checker.snap
        self.task_id = task_id
        self.prefix = keys.task_prefix(task_id)
        self.x_start = self.prefix + keys.EXECUTION
        self.x_end = keys.prefix_end(self.x_start)
        self.row = TaskReport(task_id)
        #: index -> execution id, from the ``L`` range
        self.live: dict[int, bytes] = checker.live.pop(task_id, {})
        self.live_keys = len(self.live)
        #: execution id -> the ``i`` key's value as stored (a decimal index), never parsed
        #: by the fast pass
        self.id_values: dict[bytes, bytes] = {}
        #: index -> ``<execution id>\x00``: what the record at that index must hold after its
        #: status byte. Built from ``id_values`` only when the exact pass runs; entries
        #: leave as their record is checked, so what is left points at no record.
        self.ids: dict[int, bytes] | None = None
        self.verified = False  # the fast pass proved the records sound
        self.corrupt_records = 0
        self.counter_seen = False
        self.task_value: bytes | None = None
        self.next_index = 0  # one past the highest record index seen
        #: this task's violations, held back until the end: a task without a record
        #: (left over from a deletion) gets one summary line instead of a line per key
        self.found: list[str] = []
        self.found_omitted = 0

    def add(self, message: str) -> None:
        if len(self.found) < self.checker.max_violations:
            self.found.append(message)
        else:
            self.found_omitted += 1

    def scan(self, first: tuple[bytes, bytes], it: Any) -> tuple[bytes, bytes] | None:
        """Walk the task's keys, ``first`` then the rest of ``it`` (the raw iterator of the
        walk); returns the first key after them.

        A task's keys sort as counter, id keys, idempotency keys, task record, execution
        records (FORMAT.md), so the walk has three stretches: everything below the first
        execution key, the execution records, and anything after them (unknown kinds).
        Comparing a key with the end of its stretch is all it takes to know where it belongs.
        """
        prefix = self.prefix
        plen = len(prefix)
        x_start, x_end = self.x_start, self.x_end
        following: tuple[bytes, bytes] | None = None

        # 1. counter, id keys, idempotency keys, task record. Every key in [first, x_start)
        # starts with ``prefix``: ``first`` does, and they sort below ``prefix + "x"``.
        id_values = self.id_values
        id_kind = keys.EXEC_ID[0]
        il = plen + 1
        for key, value in chain((first,), it):
            if key >= x_start:
                following = (key, value)
                break
            if key[plen] == id_kind:
                id_values[key[il:]] = value
            else:
                self.other_key(key, value, plen)

        # 2. the execution records, in index order
        if following is not None and following[0] < x_end:
            if self.checker.emit is not None:  # every record is decoded anyway: one exact pass
                following = self.exact_pass(chain((following,), it))
            else:
                following = self.fast_pass(following, it)
                if not self.verified:
                    with self.snap.iterator(start=x_start, stop=x_end) as records:
                        self.exact_pass(records)

        # 3. anything after the records that is still this task's
        task_end = keys.prefix_end(prefix)
        while following is not None and following[0] < task_end:
            self.other_key(following[0], following[1], plen)
            following = next(it, None)
        self.finish()
        return following

    def fast_pass(self, first: tuple[bytes, bytes], it: Any) -> tuple[bytes, bytes] | None:
        """Prove the records sound, or leave ``verified`` False; returns the key after them.

        This loop runs once per execution in the database, so it is written for speed:
        locals only, no call into Python code, no index decoding, nothing removed from
        any table. It reads the record header as
        FORMAT.md lays it out (``<status><26-character id>\\x00``); a record it cannot read
        that way (another id length, a corrupt value) is simply not proven, and the exact
        pass, which reads headers with codec.peek_execution, decides.
        """
        id_of = self.id_values.get
        live = self.live
        live_id = live.get
        decimal = self.checker.decimals(len(self.id_values))  # the stored form of each index
        x_end = self.x_end
        xl = len(self.x_start)
        key_len = xl + 8
        n = 0
        last_key = b""
        pending = running = success = failed = cancelled = 0
        following: tuple[bytes, bytes] | None = None
        sound = True
        try:
            for key, value in chain((first,), it):
                if key >= x_end:
                    following = (key, value)
                    break
                eid = value[codec.ID_START : codec.ID_END]
                if len(key) != key_len or value[codec.ID_END] != 0 or id_of(eid) != decimal[n]:
                    sound = False
                    break
                code = value[0]
                if code == _S:
                    success += 1
                    if live and n in live:
                        sound = False
                        break
                elif code == _F:
                    failed += 1
                    if live and n in live:
                        sound = False
                        break
                elif code == _C:
                    cancelled += 1
                    if live and n in live:
                        sound = False
                        break
                elif code == _P:
                    pending += 1
                    if live_id(n) != eid:
                        sound = False
                        break
                elif code == _R:
                    running += 1
                    if live_id(n) != eid:
                        sound = False
                        break
                else:
                    sound = False
                    break
                n += 1
                last_key = key
        except IndexError:  # a value too short for a header, or more records than id keys
            sound = False
        if not sound:  # skip the rest of the records; the exact pass reads them again
            it.seek(x_end)
            return next(it, None)
        # n records with distinct indexes, the highest n-1: they sit at exactly 0..n-1, so
        # each index checked above was the record's own. Each record matched the id key of
        # its index, and there are as many id keys: every id key is matched, every id once.
        # Likewise every live key belongs to a PENDING/RUNNING record. And every record's id
        # is a key of id_values: all ASCII means all decode, as the codec requires (checked
        # once for the task rather than once per record).
        if (
            n != len(self.id_values)
            or pending + running != len(live)
            or (n and int.from_bytes(last_key[xl:], "big") != n - 1)
            or not b"".join(self.id_values).isascii()
        ):
            return following
        self.verified = True
        self.next_index = n
        row = self.row
        row.pending, row.running, row.success, row.failed, row.cancelled = (
            pending,
            running,
            success,
            failed,
            cancelled,
        )
        return following

    def exact_pass(self, records: Iterator[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
        """Check every record with its real index and report each thing that is wrong;
        returns the first key after the records (None if ``records`` ends with them)."""
        ids = self.index_ids()
        live = self.live
        emit = self.checker.emit
        x_end = self.x_end
        xl = len(self.x_start)
        counts = dict.fromkeys(ExecutionStatus, 0)
        expect = 0
        for key, value in records:
            if key >= x_end:
                self.finish_exact(expect, counts)
                return (key, value)
            if len(key) != xl + 8:
                self.add(f"malformed execution key {key!r}")
                continue
            index = int.from_bytes(key[xl:], "big")
            if index != expect:
                self.add(f"gap at {_span(expect, index - 1)}")
            expect = index + 1
            try:
                status = codec.peek_execution(key, value)[0]
            except CorruptRecord as e:
                self.add(str(e))
                self.corrupt_records += 1
                live.pop(index, None)  # its live key cannot be judged
                ids.pop(index, None)
                continue
            counts[status] += 1
            eid = _record_id(value)
            header = ids.pop(index, None)
            if header != eid + keys.SEP:
                self.wrong_id(index, eid, header)
            live_id = live.pop(index, None)
            if status.is_finished:
                if live_id is not None:
                    self.add(f"live key at index {index}, but execution {_text(eid)} is {status.value}")
            elif live_id is None:
                self.add(f"{status.value} execution at index {index} ({_text(eid)}) has no live key")
            elif live_id != eid:
                self.add(f"live key at index {index} names {_text(live_id)}, but the record is {_text(eid)}")
            if emit is not None:
                try:
                    execution = codec.decode_execution(key, value, self.task_id, index)
                except CorruptRecord as e:
                    self.add(str(e))
                else:
                    emit(execution)
        self.finish_exact(expect, counts)
        return None

    def finish_exact(self, expect: int, counts: dict[ExecutionStatus, int]) -> None:
        self.next_index = expect
        row = self.row
        row.pending = counts[ExecutionStatus.PENDING]
        row.running = counts[ExecutionStatus.RUNNING]
        row.success = counts[ExecutionStatus.SUCCESS]
        row.failed = counts[ExecutionStatus.FAILED]
        row.cancelled = counts[ExecutionStatus.CANCELLED]

    def index_ids(self) -> dict[int, bytes]:
        """The id keys by index (parsed once, for the exact pass and the leftovers)."""
        if self.ids is None:
            self.ids = {}
            shared: dict[int, list[bytes]] = {}
            for eid, raw in self.id_values.items():
                key = keys.exec_id_key(self.task_id, _text(eid))
                try:
                    index = codec.decode_int(key, raw)
                except CorruptRecord as e:
                    self.add(str(e))
                    continue
                if index in self.ids:
                    shared.setdefault(index, [self.ids[index][:-1]]).append(eid)
                self.ids[index] = eid + keys.SEP
            for index, eids in sorted(shared.items()):
                named = ", ".join(_text(e) for e in eids)
                self.add(f"id keys of {len(eids)} executions point at index {index}: {named}")
        return self.ids

    def other_key(self, key: bytes, value: bytes, plen: int) -> None:
        """A key other than an execution record or id key: counter, idempotency key, task."""
        kind, rest = key[plen : plen + 1], key[plen + 1 :]
        if kind == keys.COUNTER and not rest:
            self.counter_seen = True
            try:
                self.row.counter = codec.decode_int(key, value)
            except CorruptRecord as e:
                self.add(str(e))
        elif kind == keys.TASK and not rest:
            self.task_value = value
        elif kind == keys.IDEMPOTENCY:
            # every id key sorts before every idempotency key, so ``id_values`` is complete here
            if value not in self.id_values:
                self.add(f"idempotency key {_text(rest)!r} points at execution {_text(value)}, which has no id key")
        else:
            self.add(f"unknown key {key!r}")

    # -- what is wrong (rare, so no hurry) -------------------------------------------------

    def wrong_id(self, index: int, eid: bytes, header: bytes | None) -> None:
        """The record at ``index`` is not the execution an id key says is there."""
        if header is not None:
            self.add(f"id key of execution {_text(header[:-1])} points at index {index}, which holds {_text(eid)}")
        raw = self.id_values.get(eid)
        if raw is None:
            self.add(f"execution at index {index} ({_text(eid)}) has no id key")
            return
        try:
            pointed = int(raw)
        except ValueError:
            return  # reported with the id key
        if pointed == index:
            return  # another id key points here too: reported by index_ids
        other = self.snap.get(keys.execution_key(self.task_id, pointed)) if 0 <= pointed < 1 << 64 else None
        if other is not None and other.startswith(eid + keys.SEP, 1):
            self.add(f"execution id {_text(eid)} appears twice: at index {pointed} and at index {index}")
        else:
            self.add(f"execution at index {index} ({_text(eid)}) but its id key points at index {pointed}")

    def finish(self) -> None:
        checker, row = self.checker, self.row
        checker.report.tasks.append(row)
        row.executions = row.pending + row.running + row.success + row.failed + row.cancelled
        row.executions += self.corrupt_records
        row.exists = self.task_value is not None
        if not row.exists:
            parts = [f"{row.executions} execution record(s)", f"{len(self.id_values)} id key(s)"]
            if self.live_keys:
                parts.append(f"{self.live_keys} live key(s)")
            if self.counter_seen:
                parts.append("a counter")
            row.violations = 1
            checker.add(
                self.task_id,
                "keys of a task that does not exist (no task record; left over from a deletion?): " + ", ".join(parts),
            )
            return
        self.check_task_record()
        self.check_counter()
        if not self.verified:
            self.check_leftovers()
        for message in self.found:
            checker.add(self.task_id, message)
        checker.report.violations_omitted += self.found_omitted
        row.violations = len(self.found) + self.found_omitted

    def check_task_record(self) -> None:
        assert self.task_value is not None
        key = keys.task_key(self.task_id)
        try:
            task = codec.decode_task(key, self.task_value, self.row.counter or 0)
        except CorruptRecord as e:
            self.add(str(e))
            return
        if task.id != self.task_id:
            self.add(f"the task record names another id, {task.id!r}")
        counter = self.row.counter
        if task.max_executions is not None and counter is not None and counter > task.max_executions:
            self.add(f"counter {counter} exceeds max_executions {task.max_executions}")

    def check_counter(self) -> None:
        counter, end = self.row.counter, self.next_index
        if counter is None:
            if not self.counter_seen:
                self.add("the task has no counter")
            return
        if end > counter:
            self.add(f"counter {counter} is behind its records: there are records up to index {end - 1}")
        elif end < counter:
            self.add(f"gap at {_span(end, counter - 1)}: missing below the counter {counter}")

    def check_leftovers(self) -> None:
        """Id keys and live keys whose index had no record."""
        ids = self.index_ids()
        for index, header in sorted(ids.items()):
            self.add(f"id key of execution {_text(header[:-1])} points at index {index}, which has no record")
        if ids:
            self.check_idempotency_targets({header[:-1] for header in ids.values()})
        for index, eid in sorted(self.live.items()):
            self.add(f"live key at index {index} ({_text(eid)}) has no record")

    def check_idempotency_targets(self, missing: set[bytes]) -> None:
        """Idempotency keys that point at an execution whose record is missing (a second, rare scan)."""
        prefix = self.prefix + keys.IDEMPOTENCY
        with self.snap.iterator(prefix=prefix) as it:
            for key, value in it:
                if value in missing:
                    idem = _text(key[len(prefix) :])
                    self.add(f"idempotency key {idem!r} points at execution {_text(value)}, which has no record")


def _record_id(value: bytes) -> bytes:
    """The execution id in a record whose header decodes."""
    return value[1 : value.index(keys.SEP, 1)]


def _text(raw: bytes | None) -> str:
    """Stored bytes (an id, an index) for a message."""
    return "?" if raw is None else raw.decode(errors="backslashreplace")


def _indexes(entries: dict[int, bytes]) -> str:
    shown = ", ".join(str(i) for i in sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
    return f"index {shown}" if len(entries) == 1 else f"indexes {shown}"


# -- the command ------------------------------------------------------------------------

SUMMARY = "Check every invariant of a stopped database (exit 1 on a violation)"
DESCRIPTION = (
    "Walk every task's executions in index order straight from the database files and check the "
    "invariants of DESIGN.md section 3 (gap-free indexes, one record per index, id/idempotency/live "
    "keys consistent, no keys of deleted tasks). Prints a summary per task, or JSON lines with --json; "
    "exits 1 naming each violation on stderr, 0 if the database is clean."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", metavar="DB", help="database directory (of a stopped engine, or a backup)")
    parser.add_argument("--task", metavar="T", help="check only this task")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print every execution as one JSON object per line, then a JSON summary object "
        '(with "summary": true and a "violations" list); decodes every record body',
    )


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    with open_database(args.db) as db:
        if args.json:
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            write = out.write

            def emit(ex: Execution) -> None:
                write(dumps(ex.to_json()) + "\n")

            report = check(db, args.task, on_execution=emit)
        else:
            report = check(db, args.task)
    if args.task is not None and not report.tasks:
        raise ToolError(f"no task {args.task!r} in {args.db!r}", EXIT_FAILED)
    if args.json:
        out.write(json.dumps(report.to_json(), ensure_ascii=False) + "\n")
    else:
        for line in summary_lines(report):
            out.write(line + "\n")
    out.flush()
    for v in report.violations:
        print(f"violation: {v}", file=sys.stderr)
    if report.violations_omitted:
        print(f"violation: ... and {report.violations_omitted} more not shown", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def summary_lines(report: Report) -> list[str]:
    """The human summary: one row per task, then one line of totals."""
    header = ("TASK", "COUNTER", "EXECUTIONS", "PENDING", "RUNNING", "SUCCESS", "FAILED", "CANCELLED", "VIOLATIONS")
    rows = [
        (
            t.task_id if t.exists else f"{t.task_id} (no task record)",
            "-" if t.counter is None else t.counter,
            t.executions,
            t.pending,
            t.running,
            t.success,
            t.failed,
            t.cancelled,
            t.violations,
        )
        for t in report.tasks
    ]
    lines = format_table(header, rows, (False,) + (True,) * 8) if rows else []
    tot = report.totals()
    verdict = "OK" if report.ok else "FAILED"
    lines.append(
        f"{verdict}: {tot['tasks']} task(s), {tot['executions']} execution(s) "
        f"({tot['pending']} pending, {tot['running']} running, {tot['success']} success, "
        f"{tot['failed']} failed, {tot['cancelled']} cancelled), {tot['violations']} violation(s); "
        f"checked in {report.elapsed:.2f} s"
    )
    return lines
