"""Get-or-create (``create_task(..., exist_ok=True)``) and paging through tasks (``list_tasks``):
what a node that creates its tasks at every start needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine_helpers import REPO, WAIT, Recorder, run_threads
from taskengine import errors


def noop(ctx):  # type: ignore[no-untyped-def]
    return None


@pytest.mark.timeout(60)
def test_get_or_create_returns_the_task_as_it_stands_after_a_restart(make_engine, store):
    """The README's example run twice: the second run gets the task back, with its counter."""
    engine = make_engine(store, jobs={"job": noop})
    first = engine.create_task("daily", job="job", config={"region": "eu", "n": [1, 2]}, max_executions=10)
    engine.trigger("daily", blocking=True, timeout=30)
    make_engine.close(engine)

    engine = make_engine(store, jobs={"job": noop})
    again = engine.create_task(
        "daily", job="job", config={"n": [1, 2], "region": "eu"}, max_executions=10, exist_ok=True
    )  # key order does not matter
    assert again.incarnation == first.incarnation and again.created_at == first.created_at
    assert again.execution_count == 1 == engine.next_index("daily")
    assert again == engine.get_task("daily")
    assert engine.trigger("daily", blocking=True, timeout=30).index == 1
    with pytest.raises(errors.TaskAlreadyExists) as plain:
        engine.create_task("daily", job="job", config={"region": "eu", "n": [1, 2]}, max_executions=10)
    assert plain.value.difference is None


@pytest.mark.parametrize(
    "change, named",
    [
        ({"job": "other"}, 'job ("job", not "other")'),
        ({"config": {"region": "us"}}, 'config ({"region": "eu"}, not {"region": "us"})'),
        ({"config": None}, 'config ({"region": "eu"}, not null)'),
        ({"config": {"region": "eu", "x": 1.0}}, "config"),
        ({"max_executions": 5}, "max_executions (null, not 5)"),
    ],
)
def test_get_or_create_names_what_differs_and_changes_nothing(make_engine, store, change, named):
    engine = make_engine(store, jobs={"job": noop, "other": noop})
    made = engine.create_task("t", job="job", config={"region": "eu"})
    asked = {"job": "job", "config": {"region": "eu"}, "max_executions": None, **change}
    with pytest.raises(errors.TaskAlreadyExists) as e:
        engine.create_task("t", exist_ok=True, **asked)
    assert e.value.task_id == "t" and named in str(e.value) and named in (e.value.difference or "")
    assert engine.get_task("t") == made
    assert engine.next_index("t") == 0


def test_json_numbers_are_compared_as_stored(make_engine, store):
    """1 and 1.0 (and true and 1) are different configs: JSON stores them differently."""
    engine = make_engine(store, jobs={"job": noop})
    engine.create_task("t", job="job", config={"n": 1, "flag": True})
    engine.create_task("t", job="job", config={"flag": True, "n": 1}, exist_ok=True)
    for other in ({"n": 1.0, "flag": True}, {"n": 1, "flag": 1}):
        with pytest.raises(errors.TaskAlreadyExists, match="config"):
            engine.create_task("t", job="job", config=other, exist_ok=True)


@pytest.mark.timeout(60)
def test_concurrent_get_or_create_makes_one_task(make_engine, store):
    rec = Recorder()
    engine = make_engine(store, jobs={"job": rec}, counter_actors=3)
    ids = [f"node-{i % 4}" for i in range(32)]
    res = run_threads(32, lambda i: engine.create_task(ids[i], job="job", exist_ok=True))
    res.raise_unexpected()
    for tid in set(ids):
        made = {t.incarnation for t, i in zip(res.results, ids, strict=True) if i == tid}
        assert made == {engine.get_task(tid).incarnation}, f"{tid}: {len(made)} tasks were created"


def test_get_or_create_validates_like_create(make_engine, db_path):
    engine = make_engine(db_path, jobs={"job": noop})
    with pytest.raises(errors.InvalidArgument):
        engine.create_task("t", job="job", exist_ok="yes")
    with pytest.raises(errors.UnknownJob):
        engine.create_task("t", job="nope", exist_ok=True)
    assert engine.list_tasks() == []


def test_list_tasks_pages_by_id(make_engine, store):
    engine = make_engine(store, jobs={"job": noop}, counter_actors=2)
    ids = ["b", "a:", "a", "ü", "a:b", "A", "a/x"]
    for tid in ids:
        engine.create_task(tid, job="job")
    engine.trigger("a", blocking=True, timeout=30)
    expected = sorted(ids)  # code point order, which is the keys' order: "a" < "a/x" < "a:" < "a:b"
    assert [t.id for t in engine.list_tasks()] == expected
    pages, after = [], None
    while True:
        page = engine.list_tasks(after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2
        pages.append([t.id for t in page])
        after = page[-1].id
    assert [tid for page in pages for tid in page] == expected
    assert len(pages) == 4
    listed = {t.id: t for t in engine.list_tasks(limit=100)}
    assert listed["a"] == engine.get_task("a") and listed["a"].execution_count == 1
    engine.delete_task("a:")
    assert [t.id for t in engine.list_tasks(after="a/x", limit=2)] == ["a:b", "b"]
    assert [t.id for t in engine.list_tasks(after="a:", limit=1)] == ["a:b"]  # a deleted id still pages
    assert engine.list_tasks(after="ü") == []


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 10_001}, {"limit": True}, {"after": ""}, {"after": 3}])
def test_list_tasks_refuses_bad_arguments(make_engine, db_path, bad):
    engine = make_engine(db_path, jobs={"job": noop})
    with pytest.raises(errors.InvalidArgument):
        engine.list_tasks(**bad)


def test_list_tasks_on_a_closed_engine(make_engine, db_path):
    engine = make_engine(db_path, jobs={"job": noop})
    make_engine.close(engine)
    with pytest.raises(errors.EngineClosed):
        engine.list_tasks()


@pytest.mark.timeout(120)
def test_the_readme_example_runs_twice(tmp_path):
    """The README's embedding example, run as a program twice on one database: the second run gets
    its task back instead of failing with TaskAlreadyExists."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Embedding it", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(code)
    for run in range(2):
        proc = subprocess.run(
            [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=WAIT * 2
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [str(2 * run), str(2 * run + 1), "SUCCESS"]
