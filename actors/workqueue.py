"""Work ready to run, shared by an executor pool and its executors.

An executor that finishes a job takes the next one here itself, under one lock,
and only an executor that finds nothing tells the pool it is idle: a message to
the pool and one back for every execution would be two thread wake-ups on top of
the ones the work itself needs. The pool decides everything that is not the
happy path (parking, timeouts, dead executors, draining), reading the same slots.

A *slot* is what one executor is running: the item, the token that identifies
this run of it (Start, Finish and Abandon carry it), and its job-timeout
deadline. Every assignment, by the pool or by the executor, goes through
:meth:`WorkQueue.next_for` and gets a new token.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable

import attrs

from . import messages as m
from .deadlines import Deadlines


@attrs.define
class Slot:
    item: m.WorkItem | None = None
    token: int = 0
    deadline: int | None = None
    abandoned: bool = False  # given up on (timeout, death): takes nothing more


class WorkQueue:
    def __init__(
        self, job_timeout: float | None, on_expired: Callable[[str, int], None]
    ) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[m.WorkItem] = collections.deque()
        self._slots: dict[str, Slot] = {}
        self._tokens = itertools.count(1)
        self._closed = False
        self._job_timeout = job_timeout
        self._on_expired = on_expired
        self._deadlines = Deadlines() if job_timeout is not None else None

    def add_slot(self, urn: str) -> None:
        with self._lock:
            self._slots[urn] = Slot()

    def push(self, item: m.WorkItem) -> None:
        with self._lock:
            if not self._closed:
                self._items.append(item)

    def next_for(self, urn: str, done_token: int | None = None) -> tuple[m.WorkItem, int] | None:
        """The executor ``urn`` finished the run ``done_token`` (None: it was idle): give it the
        next item and a new token, or None, and the slot is idle (or abandoned, and stays so)."""
        with self._lock:
            slot = self._slots.get(urn)
            if slot is None or slot.abandoned or (done_token is not None and slot.token != done_token):
                return None
            self._clear(slot)
            if self._closed or not self._items:
                return None
            slot.item = self._items.popleft()
            slot.token = next(self._tokens)
            if self._deadlines is not None and self._job_timeout is not None:
                token, on_expired = slot.token, self._on_expired
                slot.deadline = self._deadlines.schedule(self._job_timeout, lambda: on_expired(urn, token))
            return slot.item, slot.token

    def give_up(self, urn: str, token: int | None = None) -> tuple[m.WorkItem, int] | None:
        """Abandon executor ``urn`` (its run ``token`` timed out, or it died: any token): it takes
        nothing more. Returns what it was running, if anything."""
        with self._lock:
            slot = self._slots.pop(urn, None)
            if slot is None:
                return None
            if token is not None and (slot.item is None or slot.token != token):
                self._slots[urn] = slot  # a late timeout of a run that finished: nothing to do
                return None
            slot.abandoned = True
            running = (slot.item, slot.token) if slot.item is not None else None
            self._clear(slot)
            return running

    def close(self) -> list[m.WorkItem]:
        """Draining: nothing more is handed out; returns what was waiting."""
        with self._lock:
            self._closed = True
            items = list(self._items)
            self._items.clear()
            return items

    def busy(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots.values() if slot.item is not None)

    def __len__(self) -> int:
        return len(self._items)

    def stop(self) -> None:
        if self._deadlines is not None:
            self._deadlines.stop()

    def _clear(self, slot: Slot) -> None:
        if slot.deadline is not None and self._deadlines is not None:
            self._deadlines.cancel(slot.deadline)
        slot.item, slot.deadline = None, None
