"""pykka's own test suite, run against the engine's actor class and reply future.

``actors.mailbox`` builds on pykka internals (``ThreadingFutureResult``, the
``_create_future`` and ``_create_actor_inbox`` hooks), so setup.cfg pins ``pykka<5``, and this
test holds ``EngineActor`` and ``Reply`` to everything pykka promises of ``ThreadingActor`` and
``ThreadingFuture``: it fetches the source release of the installed pykka with pip, points its
test runtime at our classes, and runs its tests. Nothing of pykka is kept in this repository.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

RUNTIME_CLASSES = (
    ("from pykka import ActorRegistry, ThreadingActor, ThreadingFuture\n",
     "from pykka import ActorRegistry, ThreadingActor, ThreadingFuture\n"
     "from taskengine.actors.mailbox import EngineActor, Reply\n"),
    ("actor_class=ThreadingActor,", "actor_class=EngineActor,"),
    ("future_class=ThreadingFuture,", "future_class=Reply,"),
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.timeout(600)
def test_pykkas_own_tests_pass_with_the_engines_actor_and_future(tmp_path: Path) -> None:
    version = importlib.metadata.version("pykka")
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         f"pykka=={version}", "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    archives = list(tmp_path.glob("pykka-*.tar.gz"))
    if got.returncode != 0 or not archives:
        if _in_ci():
            pytest.fail(f"cannot fetch pykka {version}'s source release: {got.stderr[-500:]}")
        pytest.skip(f"cannot fetch pykka {version}'s source release (offline?)")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(tmp_path, filter="data")
    source = tmp_path / f"pykka-{version}"
    conftest = source / "tests" / "conftest.py"
    text = conftest.read_text()
    for old, new in RUNTIME_CLASSES:
        assert old in text, f"pykka {version}'s tests/conftest.py changed: {old.strip()!r} not found"
        text = text.replace(old, new)
    conftest.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True, text=True, timeout=500, cwd=str(source),
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
