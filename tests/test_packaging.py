"""What is installed: one package, ``taskengine``, that a user's own ``storage``, ``actors`` or
``tools`` packages can neither shadow nor be shadowed by; its types visible to mypy from a
user's code; its entry points; and a wheel that holds nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

USER_PROGRAM = textwrap.dedent(
    """
    import actors, storage, tools  # the user's own packages, first on sys.path

    from taskengine import Engine, JobContext, errors

    def double(ctx: JobContext) -> int:
        return ctx.data * 2

    with Engine.open("db", jobs={"double": double}) as engine:
        engine.create_task("t", job="double")
        done = engine.trigger("t", 21, blocking=True, timeout=30)
        try:
            engine.get_task("missing")
        except errors.TaskNotFound:
            pass
    assert (storage.OWNER, actors.OWNER, tools.OWNER) == ("user", "user", "user")
    import taskengine.storage, taskengine.actors, taskengine.tools
    assert taskengine.storage is not storage and taskengine.actors is not actors
    print(done.index, done.result)
    """
)


def _user_project(root: Path) -> Path:
    for name in ("storage", "actors", "tools"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text('OWNER = "user"\n')
    (root / "main.py").write_text(USER_PROGRAM)
    return root


def test_a_user_project_with_its_own_storage_actors_and_tools_packages_runs_the_engine(tmp_path: Path) -> None:
    project = _user_project(tmp_path / "project")
    env = {**os.environ, "PYTHONPATH": str(project)}
    proc = subprocess.run(
        [sys.executable, "main.py"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "42"]


def test_nothing_generic_is_importable_from_the_install(tmp_path: Path) -> None:
    """From a directory with no packages of its own, only ``taskengine`` comes from the install."""
    code = textwrap.dedent(
        """
        import importlib.util
        found = [n for n in ("actors", "storage", "tools", "tests") if importlib.util.find_spec(n)]
        print(found)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_mypy_finds_the_types_from_a_users_code(tmp_path: Path) -> None:
    """With the README's editable install, mypy on a user's module sees the real types: a
    correct program passes under --strict, a wrong one is reported as wrong (not as Any)."""
    (tmp_path / "good.py").write_text(
        textwrap.dedent(
            """
            from taskengine import Engine, Execution, errors

            def first_index(engine: Engine) -> int | None:
                ex: Execution = engine.trigger("t")
                return ex.index

            def missing(e: errors.EngineError) -> str:
                return str(e)
            """
        )
    )
    (tmp_path / "bad.py").write_text("from taskengine import Engine\n\nx: int = Engine.open\n")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull]
    good = subprocess.run([*cmd, "good.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = subprocess.run([*cmd, "bad.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "Incompatible types in assignment" in bad.stdout, bad.stdout
    assert "import-not-found" not in bad.stdout


@pytest.mark.parametrize(
    "argv",
    [["-m", "taskengine", "--version"], ["-m", "taskengine.tools.cli", "--version"]],
    ids=["package", "cli-module"],
)
def test_entry_points_print_the_version(tmp_path: Path, argv: list[str]) -> None:
    import taskengine

    proc = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"taskengine {taskengine.__version__}"


def test_the_wheel_holds_one_package_and_no_tests(tmp_path: Path) -> None:
    """Built from a copy of the sources (the build writes next to them) with the test
    environment's setuptools, so no network is needed."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(".venv*", ".git", "*-db", "build"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("taskengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"taskengine"}
    for part in ("actors/engine.py", "storage/FORMAT.md", "tools/cli.py", "tools/stress/command.py", "py.typed"):
        assert f"taskengine/{part}" in names, part
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [ln.split(":", 1)[1].strip() for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    runtime = sorted(r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if "extra ==" not in r)
    assert runtime == ["attrs", "plyvel", "pykka"]
    # the versions the suite runs on (.ci/run), and the licence text the metadata's MIT refers to
    for version in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}" in metadata.splitlines(), version
    licence = [n for n in names if n.endswith("LICENSE") and ".dist-info/" in n]
    assert licence and b"MIT License" in zipfile.ZipFile(wheel).read(licence[0])


WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.util, sys
    from taskengine import Engine, errors
    from taskengine.tools.cli import main

    assert importlib.util.find_spec("psycopg") is None
    Engine.open("db").close()  # LevelDB needs no extra
    try:
        Engine.open("postgresql://app:s3cret@127.0.0.1:1/tasks")
    except errors.StorageError as e:
        print(e)
    try:
        import taskengine.prometheus
    except ImportError as e:
        print(e)
    sys.exit(main(["replay", "postgresql://app:s3cret@127.0.0.1:1/tasks"]))
    """
)


def test_without_the_extras_a_url_and_the_metrics_say_what_to_install(tmp_path: Path) -> None:
    """The base install (pykka, plyvel, attrs) and nothing else on the path: a postgresql:// URL
    was a ModuleNotFoundError from Engine.open, and a traceback from the tools."""
    import attr
    import plyvel
    import pykka

    site = tmp_path / "site"
    site.mkdir()
    for module in (pykka, plyvel, attr):
        package = Path(module.__file__).parent
        (site / package.name).symlink_to(package)
    (site / "attrs").symlink_to(Path(attr.__file__).parent.parent / "attrs")
    script = f"import sys; sys.path[:0] = [{str(site)!r}, {str(REPO / 'src')!r}]\n" + WITHOUT_EXTRAS
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    needs = "PostgreSQL needs the psycopg driver, which is not installed"
    assert needs in done.stdout and "pip install 'taskengine[postgres]'" in done.stdout
    assert done.stderr.count("\n") == 1 and needs in done.stderr, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert "taskengine.prometheus needs prometheus_client" in done.stdout  # was: No module named 'prometheus_client'
