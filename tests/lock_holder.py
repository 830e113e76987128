"""Holds a LevelDB open in another process until its stdin is closed (StorageLocked tests).

usage: lock_holder.py DB
"""

from __future__ import annotations

import sys

import plyvel


def main() -> None:
    db = plyvel.DB(sys.argv[1], create_if_missing=True)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.read()
    db.close()


if __name__ == "__main__":
    main()
