"""Work ready to run, shared by an executor pool, its executors and the counter actors.

An executor that finishes a job takes the next one here itself, under one lock,
and only an executor that finds nothing is marked idle: a message to the pool and
one back for every execution would be two thread wake-ups on top of the ones the
work itself needs. A counter actor whose write made executions ready pushes them
here and wakes idle executors itself (:meth:`WorkQueue.offer`), so ready work does
not wait for the pool's thread either; one that handles a trigger while an executor is
idle holds that executor for it (:meth:`WorkQueue.reserve`) and starts the execution in
the trigger's own write. The pool decides everything that is not the
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
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from . import messages as m
from .deadlines import Deadlines
from .refs import tell_if_alive


@attrs.define
class Slot:
    item: m.WorkItem | None = None
    token: int = 0
    deadline: int | None = None
    abandoned: bool = False  # given up on (timeout, death): takes nothing more
    ref: Any = None  # the executor's actor ref: what a wake-up is told to


#: what to tell to wake an idle executor: (its ref, the item, the run's token)
Wake = tuple[Any, m.WorkItem, int]


class WorkQueue:
    def __init__(
        self, job_timeout: float | None, on_expired: Callable[[str, int], None]
    ) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[m.WorkItem] = collections.deque()
        self._slots: dict[str, Slot] = {}
        self._tokens = itertools.count(1)
        self._closed = False
        # the slots that found nothing to take (they wait for a Run), not abandoned; the one idle
        # last at the end: taken from there (its thread ran last, so it is warmest), found without
        # a scan of every slot
        self._idle: dict[str, None] = {}
        self._job_timeout = job_timeout
        self._on_expired = on_expired
        self._deadlines = Deadlines() if job_timeout is not None else None

    def add_slot(self, urn: str, ref: Any) -> None:
        """A new executor, idle until it is given a run."""
        with self._lock:
            self._slots[urn] = Slot(ref=ref)
            self._idle[urn] = None

    def offer(self, items: Iterable[m.WorkItem]) -> list[Wake]:
        """Queue ``items`` (nothing once closed) and hand what is queued to idle executors: the
        caller tells each returned ref ``Run(item, token)``."""
        with self._lock:
            if not self._closed:
                self._items.extend(items)
            wakes: list[Wake] = []
            while self._items and self._idle:
                wakes.append(self._assign_idle())
            return wakes

    @property
    def any_idle(self) -> bool:
        """An executor waits for work (read without the lock: a hint, :meth:`reserve` decides)."""
        return bool(self._idle)

    def reserve(self, item: m.WorkItem) -> Wake | None:
        """Hand ``item`` to an idle executor now, or None if there is none or something is
        queued: the caller starts it and tells the ref ``Run(item, token, started)`` once the
        start is durable, or gives it back (:func:`give_back`)."""
        with self._lock:
            # queued work with an executor idle (a new one the pool has not fed yet): the item
            # goes behind it, so it never overtakes an execution queued earlier
            if self._closed or not self._idle or self._items:
                return None
            self._items.append(item)
            return self._assign_idle()

    def release(self, ref: Any, token: int) -> tuple[str, Wake | None] | None:
        """A reservation whose start was not written (or is not to run): the executor turns idle
        again and takes what was queued while it was held (no one else wakes it for that), a Wake
        for the caller to tell. Returns its urn and that Wake, or None if it no longer holds
        ``token`` (given up on meanwhile). See :func:`give_back`."""
        with self._lock:
            for urn, slot in self._slots.items():
                if slot.ref is ref and slot.token == token and slot.item is not None:
                    self._clear(slot)
                    self._idle[urn] = None
                    if self._items and not self._closed:
                        return urn, (slot.ref, *self._assign(urn, slot))
                    return urn, None
            return None

    def holds(self, urn: str, token: int) -> bool:
        """The executor ``urn`` still holds the run ``token`` (not given up on meanwhile)."""
        with self._lock:
            slot = self._slots.get(urn)
            return slot is not None and slot.token == token and not slot.abandoned

    def idle_refs(self) -> list[Any]:
        with self._lock:
            return [self._slots[urn].ref for urn in self._idle]

    def next_for(self, urn: str, done_token: int, only_if_any: bool = False) -> tuple[m.WorkItem, int] | None:
        """The executor ``urn`` finished the run ``done_token``: give it the next item and a new
        token, or None, and the slot is idle (or abandoned, and stays so). With ``only_if_any``
        a None leaves the slot as it was (still busy with ``done_token``): the executor has
        something to send before it may count as idle (a close waits for busy slots)."""
        with self._lock:
            slot = self._slots.get(urn)
            if slot is None or slot.abandoned or slot.token != done_token:
                return None
            if self._closed or not self._items:
                if not only_if_any:
                    self._clear(slot)
                    self._idle[urn] = None
                return None
            self._clear(slot)
            return self._assign(urn, slot)

    def _assign(self, urn: str, slot: Slot) -> tuple[m.WorkItem, int]:
        item = slot.item = self._items.popleft()
        slot.token = token = next(self._tokens)
        self._idle.pop(urn, None)
        if self._deadlines is not None and self._job_timeout is not None:
            on_expired = self._on_expired
            slot.deadline = self._deadlines.schedule(self._job_timeout, lambda: on_expired(urn, token))
        return item, token

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
            self._idle.pop(urn, None)
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

    @property
    def closed(self) -> bool:
        """Set under the lock before the pool counts busy slots: an executor that turned idle
        after that count reads True here afterwards (and tells the pool)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def stop(self) -> None:
        if self._deadlines is not None:
            self._deadlines.stop()

    def _assign_idle(self) -> Wake:
        """The next queued item, to the slot idle last (there is one: the caller checked)."""
        urn = next(reversed(self._idle))
        slot = self._slots[urn]
        return (slot.ref, *self._assign(urn, slot))

    def _clear(self, slot: Slot) -> None:
        if slot.deadline is not None and self._deadlines is not None:
            self._deadlines.cancel(slot.deadline)
        slot.item, slot.deadline = None, None


def wake(work: WorkQueue, items: Iterable[m.WorkItem]) -> None:
    """Queue ``items`` on ``work`` and tell each idle executor it hands them to to run one."""
    for ref, item, token in work.offer(items):
        tell_if_alive(ref, m.Run(item, token))


def give_back(work: WorkQueue, pool: Any, ref: Any, token: int) -> None:
    """An executor held for a start (:meth:`WorkQueue.reserve`) that will not run it is free
    again: it runs what was queued meanwhile, or, while the pool drains (it waits for busy
    slots and hears of nothing else turning idle), the pool is told it is idle."""
    released = work.release(ref, token)
    if released is None:
        return
    urn, woken = released
    if woken is not None:
        tell_if_alive(ref, m.Run(woken[1], woken[2]))
    elif work.closed:
        tell_if_alive(pool, m.ExecutorIdle(urn))
