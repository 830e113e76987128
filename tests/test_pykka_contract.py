"""pykka's own test suite, run against the engine's actor class and reply future; and the
hooks of pykka's that the engine's actor class implements, checked against the installed pykka.

``actors.mailbox`` builds on pykka internals (``ThreadingFutureResult``, the
``_create_future``, ``_create_actor_inbox`` and ``_start_actor_loop`` hooks), so setup.cfg pins
``pykka<5``. The first test holds ``EngineActor`` and ``Reply`` to everything pykka promises of
``ThreadingActor`` and ``ThreadingFuture``: it fetches the source release of the installed pykka
with pip, points its test runtime at our classes, and runs its tests. Nothing of pykka is kept in
this repository. The others fail on a pykka that no longer calls the hooks as the engine expects.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pykka
import pytest

from taskengine.actors.mailbox import EngineActor, Reply

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


class _Probe(EngineActor):
    """Notes, as pykka starts it, whether it is registered by then."""

    registered_at_start: list[bool] = []

    def _start_actor_loop(self) -> None:
        _Probe.registered_at_start.append(self.actor_ref in pykka.ActorRegistry.get_all())
        super()._start_actor_loop()

    def on_receive(self, message: object) -> object:
        return message


@pytest.mark.timeout(10)
def test_pykka_makes_and_starts_an_engine_actor_through_its_hooks() -> None:
    """``Actor.start`` registers the actor and then calls ``_start_actor_loop`` (EngineActor's
    clean-up of a thread that cannot start relies on both); the inbox and the futures are the
    engine's (``_create_actor_inbox``, ``_create_future``)."""
    ref = _Probe.start()
    try:
        assert _Probe.registered_at_start == [True], (
            "pykka's Actor.start no longer calls _start_actor_loop after registering the actor: "
            "revise EngineActor._start_actor_loop (actors/mailbox.py) and the pin in setup.cfg")
        assert type(ref.actor_inbox).__name__ == "SimpleQueue"
        answer = ref.ask("ping", block=False)
        assert isinstance(answer, Reply) and answer.get(timeout=5) == "ping"
    finally:
        ref.stop()


ACTORS_OUT_OF_THREADS = r"""
import resource, threading
import pykka
from taskengine.actors.mailbox import EngineActor

class A(EngineActor):
    pass

STACK = 256 * 2**20
threading.stack_size(STACK)
with open("/proc/self/status") as f:
    mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + 128 * 2**20 + 2 * STACK, resource.RLIM_INFINITY))
refs = []
try:
    for _ in range(10):
        refs.append(A.start())
except RuntimeError as e:
    print("refused:", e)
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print("started:", len(refs), "registered:", len(pykka.ActorRegistry.get_all()))
stopper = threading.Thread(target=pykka.ActorRegistry.stop_all, daemon=True)
stopper.start()
stopper.join(10)
print("stop_all returned:", not stopper.is_alive())
"""


@pytest.mark.timeout(30)
def test_an_actor_whose_thread_cannot_start_is_not_left_registered() -> None:
    """In a process with room for two more thread stacks, the third actor's start is refused
    (threading's RuntimeError, which the engine maps) and only the two that run are registered:
    ``ActorRegistry.stop_all()`` returns instead of waiting for ever for one that never ran."""
    done = subprocess.run([sys.executable, "-c", ACTORS_OUT_OF_THREADS], capture_output=True, text=True,
                          timeout=25, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: can't start new thread"), lines
    assert lines[1:] == ["started: 2 registered: 2", "stop_all returned: True"], lines
