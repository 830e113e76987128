"""Fixtures of the engine contract tests: engines that are always closed, gates always released."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from engine_helpers import WAIT, close_bounded, release_all_gates


class EngineFactory:
    """``make_engine(path, **kwargs)`` opens an engine that the finalizer closes (after releasing
    every Gate), and ``client_actors`` collects pykka refs the finalizer stops."""

    def __init__(self) -> None:
        self.engines: list[Any] = []
        self.actor_refs: list[pykka.ActorRef[Any]] = []

    def __call__(self, path: Any, **kwargs: Any) -> Any:
        from taskengine import Engine

        kwargs.setdefault("jobs", {})
        engine = Engine.open(str(path), **kwargs)
        self.engines.append(engine)
        return engine

    def track(self, ref: pykka.ActorRef[Any]) -> pykka.ActorRef[Any]:
        self.actor_refs.append(ref)
        return ref

    def close(self, engine: Any) -> None:
        close_bounded(engine)

    def teardown(self) -> None:
        release_all_gates()
        errors: list[BaseException] = []
        for ref in self.actor_refs:
            try:
                ref.stop(timeout=WAIT)
            except pykka.ActorDeadError:
                pass
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        for engine in reversed(self.engines):
            try:
                close_bounded(engine)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def make_engine() -> Iterator[EngineFactory]:
    factory = EngineFactory()
    try:
        yield factory
    finally:
        factory.teardown()


@pytest.fixture
def db_path(tmp_path: Any) -> str:
    return str(tmp_path / "db")


@pytest.fixture(params=["leveldb", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Where an engine's database goes, once per backend: a LevelDB path, then a fresh
    PostgreSQL database (skipped, with the reason, where no server can be started)."""
    if request.param == "leveldb":
        return str(tmp_path / "db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def fresh_path(tmp_path: Any) -> Callable[[str], str]:
    def make(name: str) -> str:
        return str(tmp_path / name)

    return make


# the throwaway PostgreSQL server and a database per test (tests/pg.py)
from pg import cutter, pg_server, pg_url, pytest_runtest_teardown  # noqa: E402,F401
