"""Tries to open a database in this (separate) process and says what happened (lock tests).

usage: open_probe.py DB   -> prints "OPENED", or the exception's class name and message
"""

from __future__ import annotations

import sys

from taskengine import Engine, errors


def main() -> None:
    try:
        engine = Engine.open(sys.argv[1])
    except errors.EngineError as e:
        print(f"{type(e).__name__} {e}")
        return
    engine.close()
    print("OPENED")


if __name__ == "__main__":
    main()
