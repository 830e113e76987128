"""Fixtures of the fault-injection suite: the shim, built once per session with the system C compiler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fault_harness import Shim, build_shim


@pytest.fixture(scope="session")
def shim_so(tmp_path_factory: Any) -> str:
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def shim(shim_so: str, tmp_path: Path) -> Shim:
    return Shim.make(shim_so, tmp_path)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from fault_harness import TALLY

    if any(TALLY.values()):
        terminalreporter.write_line("fault injection: " + ", ".join(f"{k}: {v}" for k, v in TALLY.items()))
