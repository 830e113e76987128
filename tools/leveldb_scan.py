"""Reading a taskengine LevelDB for the invariant check (``invariants``), in one pass.

It reads a snapshot with a raw LevelDB iterator: the ``L`` range (small: only unfinished
work), then the ``T`` range in key order; that is one sequential read of the files.
Execution bodies are not JSON-decoded unless asked for (``on_execution``): the status byte
and execution id at the head of each record (FORMAT.md) are all the invariants need. The
exception is the bodies of PENDING and RUNNING records (few), which recovery must read: one
it cannot decode is a violation.

A task's records are first only *proven* sound, cheaply, by comparing stored bytes
(:meth:`_TaskScan.prove`); only a task that cannot be proven is read a second time and
handed to the checks of :class:`~taskengine.tools.invariants.TaskInvariants` record by
record, which say exactly what is wrong. So on a sound database the check runs at well over half the speed of
iterating the database at all.

Memory: the ``i`` keys of the task being walked (about 200 bytes per execution), and
nothing of tasks already walked but one summary row each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

from taskengine.storage import CorruptRecord, Execution, ExecutionStatus, Task, codec, keys

from .invariants import Findings, TaskInvariants

# the one-byte status codes at the head of a record (FORMAT.md), as ints
_P = ExecutionStatus.PENDING.code[0]
_R = ExecutionStatus.RUNNING.code[0]
_S = ExecutionStatus.SUCCESS.code[0]
_F = ExecutionStatus.FAILED.code[0]
_C = ExecutionStatus.CANCELLED.code[0]


class DatabaseScan:
    """One walk of one snapshot: the ``L`` range, then every task's ``T`` range."""

    def __init__(
        self, snap: Any, task: str | None, emit: Callable[[Execution], None] | None, findings: Findings
    ) -> None:
        self.snap = snap
        self.task = task
        self.emit = emit
        self.findings = findings
        #: task id -> index -> execution id, from the ``L`` range; a task's entries are
        #: taken out when the task is walked, so what is left belongs to no task
        self.live: dict[str, dict[int, bytes]] = {}
        #: ``_decimals[i]`` is index ``i`` as an id key stores it (codec.encode_int), so the
        #: proof compares stored bytes instead of parsing them; grown to the largest task
        self._decimals: list[bytes] = []

    def decimals(self, n: int) -> list[bytes]:
        """The stored form of every index up to ``n`` at least."""
        d = self._decimals
        if len(d) <= n:
            d.extend(codec.encode_int(i) for i in range(len(d), n + 1))
        return d

    def run(self) -> None:
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
        self.findings.live_without_task(self.live)
        self.live.clear()

    def read_live(self) -> None:
        prefix = keys.live_prefix(self.task)
        with self.snap.iterator(prefix=prefix) as it:
            for key, value in it:
                parsed = keys.parse_live_key(key)
                if parsed is None:
                    self.findings.add(None, f"malformed live key {key!r}")
                    continue
                self.live.setdefault(parsed[0], {})[parsed[1]] = value

    def scan_task(self, it: Any, first: tuple[bytes, bytes]) -> tuple[bytes, bytes] | None:
        """Check one task's range, starting at its first key; returns the first key after it."""
        parsed = keys.parse_task_key(first[0])
        if parsed is None:
            self.findings.add(None, f"malformed task key {first[0]!r}")
            return next(it, None)
        return _TaskScan(self, parsed.task_id).scan(first, it)


class _TaskScan(TaskInvariants):
    """One task's range, walked once, and checked as it goes."""

    def __init__(self, db_scan: DatabaseScan, task_id: str) -> None:
        super().__init__(db_scan.findings, task_id, db_scan.live.pop(task_id, {}))
        self.db_scan = db_scan
        self.snap = db_scan.snap
        self.prefix = keys.task_prefix(task_id)
        self.x_start = self.prefix + keys.EXECUTION
        self.x_end = keys.prefix_end(self.x_start)
        self.task_value: bytes | None = None

    def scan(self, first: tuple[bytes, bytes], it: Any) -> tuple[bytes, bytes] | None:
        """Walk the task's keys, ``first`` then the rest of ``it`` (the raw iterator of the
        walk); returns the first key after them.

        A task's keys sort as counter, id keys, idempotency keys, prune mark, task record,
        execution records (FORMAT.md), so the walk has three stretches: everything below the first
        execution key, the execution records, and anything after them (unknown kinds).
        Comparing a key with the end of its stretch is all it takes to know where it belongs.
        """
        prefix = self.prefix
        plen = len(prefix)
        x_start, x_end = self.x_start, self.x_end
        following: tuple[bytes, bytes] | None = None

        # 1. counter, id keys, idempotency keys, prune mark, task record. Every key in [first, x_start)
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
            if self.db_scan.emit is not None:  # every record is decoded anyway: straight to the check
                following = self.hand_over(chain((following,), it))
            else:
                following = self.prove(following, it)
                if not self.verified:
                    with self.snap.iterator(start=x_start, stop=x_end) as records:
                        self.hand_over(records)

        # 3. anything after the records that is still this task's
        task_end = keys.prefix_end(prefix)
        while following is not None and following[0] < task_end:
            self.other_key(following[0], following[1], plen)
            following = next(it, None)
        self.end_task()
        return following

    def prove(self, first: tuple[bytes, bytes], it: Any) -> tuple[bytes, bytes] | None:
        """Prove the records sound (then tell the check so), or leave them unproven; returns
        the key after them.

        This loop runs once per execution in the database, so it is written for speed:
        locals only, no call into Python code, no index decoding, nothing removed from
        any table. It reads the record header as
        FORMAT.md lays it out (``<status><26-character id>\\x00``); a record it cannot read
        that way (another id length, a corrupt value) is simply not proven, and the
        record-by-record check, which reads headers with codec.peek_execution, decides.
        """
        id_values = self.id_values
        id_of = id_values.get
        live = self.live
        live_id = live.get
        mark = self.row.prune_mark  # read with the keys before the records
        decimal = self.db_scan.decimals(mark + len(id_values))  # the stored form of each index
        x_end = self.x_end
        xl = len(self.x_start)
        key_len = xl + 8
        n = mark  # the index the next record must have
        last_key = b""
        unfinished: list[tuple[bytes, bytes]] = []  # recovery decodes these: so does the check
        keep = unfinished.append
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
                    keep((key, value))
                    if live_id(n) != eid:
                        sound = False
                        break
                elif code == _R:
                    running += 1
                    keep((key, value))
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
        if not sound:  # skip the rest of the records; they are read again, one by one
            it.seek(x_end)
            return next(it, None)
        # n - mark records with distinct indexes from mark, the highest n-1: they sit at exactly
        # mark..n-1, so each index checked above was the record's own. Each record matched the id key of
        # its index, and there are as many id keys: every id key is matched, every id once.
        # Likewise every live key belongs to a PENDING/RUNNING record. And every record's id
        # is a key of id_values: all ASCII means all decode, as the codec requires (checked
        # once for the task rather than once per record).
        if (
            n - mark != len(id_values)
            or pending + running != len(live)
            or (n > mark and int.from_bytes(last_key[xl:], "big") != n - 1)
            or not b"".join(id_values).isascii()
        ):
            return following
        self.proven(n - mark, pending, running, success, failed, cancelled)
        for key, value in unfinished:
            self.decode_body(key, value, int.from_bytes(key[xl:], "big"))
        return following

    def hand_over(self, records: Iterator[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
        """Give the check every record with its real index, decoding each body for ``emit``
        if asked; returns the first key after the records (None if ``records`` ends with them)."""
        self.begin_records()
        record, emit = self.record, self.db_scan.emit
        x_end = self.x_end
        xl = len(self.x_start)
        following: tuple[bytes, bytes] | None = None
        for key, value in records:
            if key >= x_end:
                following = (key, value)
                break
            if len(key) != xl + 8:
                self.add(f"malformed execution key {key!r}")
                continue
            index = int.from_bytes(key[xl:], "big")
            try:
                status = codec.peek_execution(key, value)[0]
            except CorruptRecord as e:
                self.unreadable(index, str(e))
                continue
            record(index, status, value[1 : value.index(keys.SEP, 1)])  # the id: the header decodes
            if emit is not None or not status.is_finished:
                execution = self.decode_body(key, value, index)
                if execution is not None and emit is not None:
                    emit(execution)
        self.end_records()
        return following

    def decode_body(self, key: bytes, value: bytes, index: int) -> Execution | None:
        """The record decoded in full, or None and a violation. Every PENDING or RUNNING record
        is decoded: recovery must read it to run it again, so one it cannot read would stay
        unfinished for ever."""
        try:
            return codec.decode_execution(key, value, self.task_id, index)
        except CorruptRecord as e:
            self.add(str(e))
            return None

    def other_key(self, key: bytes, value: bytes, plen: int) -> None:
        """A key other than an execution record or id key: counter, idempotency key, prune mark, task."""
        kind, rest = key[plen : plen + 1], key[plen + 1 :]
        if kind == keys.COUNTER and not rest:
            self.counter_seen = True
            try:
                self.row.counter = codec.decode_int(key, value)
            except CorruptRecord as e:
                self.add(str(e))
        elif kind == keys.PRUNE_MARK and not rest:
            self.mark_seen = True
            try:
                self.row.prune_mark = codec.decode_int(key, value)
            except CorruptRecord as e:
                self.add(str(e))
        elif kind == keys.TASK and not rest:
            self.task_value = value
        elif kind == keys.IDEMPOTENCY:
            # every id key sorts before every idempotency key, so the id keys are all read
            self.idempotency_entry(rest, value)
        else:
            self.add(f"unknown key {key!r}")

    def end_task(self) -> None:
        task: Task | None = None
        if self.task_value is not None:
            try:
                key = keys.task_key(self.task_id)
                task = codec.decode_task(key, self.task_value, self.row.counter or 0, self.row.prune_mark)
            except CorruptRecord as e:
                self.add(str(e))
        self.finish(self.task_value is not None, task)

    # -- what the check asks, only when something is wrong ------------------------------------

    def stored_index(self, execution_id: bytes, stored: bytes) -> int:
        key = keys.exec_id_key(self.task_id, execution_id.decode(errors="backslashreplace"))
        return codec.decode_int(key, stored)

    def record_holds(self, index: int, execution_id: bytes) -> bool:
        other = self.snap.get(keys.execution_key(self.task_id, index))
        return other is not None and bool(other.startswith(execution_id + keys.SEP, 1))

    def idempotency_entries(self) -> Iterator[tuple[bytes, bytes]]:
        prefix = self.prefix + keys.IDEMPOTENCY
        with self.snap.iterator(prefix=prefix) as it:
            for key, value in it:
                yield key[len(prefix) :], value

