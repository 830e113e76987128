"""Execution and task ids: ULIDs (time-ordered, 26 Crockford base-32 characters).

Made here rather than with python-ulid because id generation sits on the trigger hot
path and python-ulid's monotonic generator takes a lock and costs several times more
(BENCHMARKS.md). The tests check every id parses as a ULID with python-ulid.
"""

from __future__ import annotations

import os
import random
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit value as two characters
_random = random.Random()  # ids need uniqueness, not secrecy
# CPython reseeds only the random module's own generator in a forked child, not this one: without
# this a child and its parent would draw the same bits, and ids made in the same millisecond collide
os.register_at_fork(after_in_child=_random.seed)


_prefix = (-1, "")  # (millisecond, its 10 characters): replaced whole, so threads see a matching pair


def new_id() -> str:
    """48 bits of milliseconds and 80 random bits: 130 bits with the top two zero, 13 pairs. The
    first five pairs are the millisecond's, kept from the last id made in it."""
    global _prefix
    ms = time.time_ns() // 1_000_000
    held = _prefix
    if held[0] != ms:
        held = _prefix = (ms, "".join([_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)]))
    r, p = _random.getrandbits(80), _PAIRS
    return (
        held[1] + p[r >> 70] + p[(r >> 60) & 1023] + p[(r >> 50) & 1023] + p[(r >> 40) & 1023]
        + p[(r >> 30) & 1023] + p[(r >> 20) & 1023] + p[(r >> 10) & 1023] + p[r & 1023]
    )
