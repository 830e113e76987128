"""How the engine's actors find each other.

Tasks are hashed onto a fixed, bounded set of counter actors: a task always maps to
the same actor for the life of an engine, so that actor is its one writer, and the
number of threads does not grow with the number of tasks.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs
import pykka


@attrs.define
class Peers:
    counters: list[pykka.ActorRef[Any]] = attrs.Factory(list)
    pending: pykka.ActorRef[Any] | None = None
    pool: pykka.ActorRef[Any] | None = None

    def counter_for(self, task_id: str) -> pykka.ActorRef[Any]:
        return self.counters[zlib.crc32(task_id.encode()) % len(self.counters)]

    def tell_quietly(self, ref: pykka.ActorRef[Any] | None, message: Any) -> bool:
        """Tell an actor that may already be stopped (the engine is closing); False if it was."""
        if ref is None:
            return False
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            return False
        return True
