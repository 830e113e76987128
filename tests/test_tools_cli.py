"""The ``taskengine`` front end: every user mistake or database problem is one stderr line
``taskengine <command>: error: ...`` with a non-zero status and never a traceback; plugins
(stress, bench) are loaded only when chosen, so the read-only tools never import taskengine.actors."""

from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import plyvel
import pytest

from taskengine.storage import Database, DatabaseDamaged, keys
from taskengine.tools import cli
from taskengine.tools.cli import main
from tools_dbs import DbBuilder, run_cli, standard_db

Setup = Callable[[Path], str]


def _missing(tmp: Path) -> str:
    return str(tmp / "nothing-here")


def _file(tmp: Path) -> str:
    (tmp / "a-file").write_text("not a database")
    return str(tmp / "a-file")


def _empty_dir(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _foreign(tmp: Path) -> str:
    db = plyvel.DB(str(tmp / "foreign"), create_if_missing=True)
    db.put(b"some-other-program", b"its data")
    db.close()
    return str(tmp / "foreign")


def _unknown_schema(tmp: Path) -> str:
    with DbBuilder(tmp / "future") as b:
        b.task("t")
        b.put(keys.SCHEMA_KEY, b"99")
    return str(tmp / "future")


OPEN_ERRORS: dict[str, tuple[Setup, str]] = {
    "missing": (_missing, "the path does not exist"),
    "file": (_file, "is a file, not a database directory"),
    "empty-dir": (_empty_dir, "the directory holds no LevelDB (no CURRENT file)"),
    "foreign": (_foreign, "not one of taskengine (no schema key)"),
    "unknown-schema": (_unknown_schema, "has schema version 99; this taskengine knows versions 1 and 2 only"),
}


def _argv(command: str, path: str, tmp: Path) -> list[str]:
    if command == "backup":
        return ["backup", path, str(tmp / "copy")]
    if command == "inspect-task":
        return ["inspect", path, "--task", "t"]
    return [command, path]


def _one_error_line(err: str, command: str | None) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"taskengine {command}: error: " if command else "taskengine: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(OPEN_ERRORS))
@pytest.mark.parametrize("command", ["replay", "inspect", "inspect-task", "backup"])
def test_open_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, command: str) -> None:
    setup, expected = OPEN_ERRORS[case]
    path = setup(tmp_path)
    code = main(_argv(command, path, tmp_path))
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    line = _one_error_line(err, command.split("-")[0])
    assert expected in line
    assert not (tmp_path / "copy").exists()  # a refused backup creates nothing


@pytest.mark.parametrize("case", ["missing", "foreign", "unknown-schema"])
def test_open_errors_in_a_real_process(tmp_path: Path, case: str) -> None:
    setup, expected = OPEN_ERRORS[case]
    proc = run_cli("replay", setup(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert expected in _one_error_line(proc.stderr, "replay")


def test_a_tool_never_creates_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "typo")]) == 2
    assert main(["inspect", str(tmp_path / "typo")]) == 2
    capsys.readouterr()
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "argv", [["replay"], ["inspect"], ["backup", "COPY"], ["recover"], ["recover", "--accept-loss"]]
)
def test_an_empty_directory_is_refused_and_left_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    empty = _empty_dir(tmp_path)
    rest = [str(tmp_path / "copy") if a == "COPY" else a for a in argv[1:]]
    assert main([argv[0], empty, *rest]) == 2
    line = _one_error_line(capsys.readouterr().err, argv[0])
    assert "is not a database: the directory holds no LevelDB (no CURRENT file)" in line
    # LevelDB writes LOCK and LOG before it refuses a directory; recover --accept-loss made a database
    assert os.listdir(empty) == []
    assert not (tmp_path / "copy").exists()


def test_a_database_without_its_current_file_is_damaged_and_recover_rebuilds_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    standard_db(tmp_path / "db")
    db = str(tmp_path / "db")
    os.unlink(os.path.join(db, "CURRENT"))
    with pytest.raises(DatabaseDamaged):
        Database.open(db, create=True)  # the engine's mode: not "a directory that is not a database"
    for command in ("replay", "recover"):
        assert main([command, db]) == 2
        line = _one_error_line(capsys.readouterr().err, command)
        assert "is damaged: its CURRENT file is missing" in line
        assert f"`taskengine recover {db} --accept-loss`" in line  # the command for this database
    assert main(["recover", db, "--accept-loss"]) == 0
    capsys.readouterr()
    assert main(["replay", db]) == 0
    assert "OK: 3 task(s), 8 execution(s)" in capsys.readouterr().out


SECRET_URL = "postgresql://app:s3cret-pw@127.0.0.1:1/tasks"


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        (["recover", SECRET_URL], "a PostgreSQL server recovers its own database"),
        (["recover", SECRET_URL, "--accept-loss"], "a PostgreSQL server recovers its own database"),
        (["backup", SECRET_URL, "COPY"], "`taskengine copy URL DIR`"),
        (["backup", "DB", SECRET_URL], "`taskengine copy SRC URL`"),
    ],
)
def test_leveldb_only_commands_refuse_a_url_and_hide_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], instead: str
) -> None:
    standard_db(tmp_path / "db")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [{"COPY": str(tmp_path / "copy"), "DB": str(tmp_path / "db")}.get(a, a) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = _one_error_line(err, argv[0])
    assert "s3cret" not in out + err  # the URL was taken for a path and shown whole
    assert "postgresql://app:***@127.0.0.1:1/tasks is a PostgreSQL database" in line and instead in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "argv",
    [
        [b"inspect", b"DB", b"--after", b"\xff"],
        [b"inspect", b"DB", b"--task", b"t\xff"],
        [b"replay", b"DB", b"--task", b"t\xff"],
        [b"backup", b"DB", b"COPY\xff"],
        [b"replay", b"postgresql://app:s3cret@127.0.0.1:1/tasks\xff"],
    ],
)
def test_arguments_that_are_not_utf8_are_one_line(tmp_path: Path, argv: list[bytes]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates, which no key or URL can hold: they
    ended in a UnicodeEncodeError traceback (plyvel's, psycopg's or the key encoder's)."""
    standard_db(tmp_path / "db")
    db, copy = os.fsencode(tmp_path / "db"), os.fsencode(tmp_path / "copy")
    args = [a.replace(b"DB", db).replace(b"COPY", copy) for a in argv]
    import subprocess

    done = subprocess.run([sys.executable, "-m", "taskengine.tools.cli", *args], capture_output=True, timeout=60)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 2, err
    line = _one_error_line(err, argv[0].decode())
    assert "is not valid UTF-8" in line and "s3cret" not in err
    assert sorted(os.listdir(tmp_path)) == ["db"]


@pytest.mark.parametrize("command", ["copy", "backup"])
def test_a_copy_into_its_own_database_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    standard_db(tmp_path / "db")
    assert main([command, str(tmp_path / "db"), str(tmp_path / "db" / "copy")]) == 2  # copy made it, exit 0
    assert "is inside the source database" in _one_error_line(capsys.readouterr().err, command)
    assert not (tmp_path / "db" / "copy").exists()


@pytest.mark.parametrize("argv", [["-v", "replay", "DB"], ["replay", "-v", "DB"], ["replay", "DB", "--verbose"]])
def test_verbose_before_or_after_the_command(tmp_path: Path, argv: list[str]) -> None:
    """After the command it was "unrecognized arguments: -v"."""
    standard_db(tmp_path / "db")
    proc = run_cli(*[str(tmp_path / "db") if a == "DB" else a for a in argv])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("taskengine: INFO: replay checked 8 executions"), proc.stderr


def test_locked_database_in_another_process(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    holder = plyvel.DB(str(tmp_path / "db"))  # what a running engine does: hold the LevelDB lock
    try:
        for args in (("replay", str(tmp_path / "db")), ("backup", str(tmp_path / "db"), str(tmp_path / "c"))):
            proc = run_cli(*args)
            assert proc.returncode == 2, proc.stderr
            assert proc.stdout == ""
            line = _one_error_line(proc.stderr, args[0])
            assert "is locked" in line and "Engine.backup" in line and "engine.serve_status()" in line
    finally:
        holder.close()
    assert run_cli("replay", str(tmp_path / "db")).returncode == 0


def test_locked_database_in_this_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    standard_db(tmp_path / "db")
    holder = plyvel.DB(str(tmp_path / "db"))
    try:
        assert main(["inspect", str(tmp_path / "db")]) == 2
    finally:
        holder.close()
    assert "is locked" in _one_error_line(capsys.readouterr().err, "inspect")


@pytest.mark.parametrize(
    ("argv", "command", "expected"),
    [
        ([], None, "the following arguments are required: COMMAND"),
        (["frobnicate"], None, "invalid choice: 'frobnicate'"),
        (["replay"], "replay", "the following arguments are required: DB"),
        (["replay", "db", "--bogus"], None, "unrecognized arguments: --bogus"),
        (["inspect", "db", "--limit", "many"], "inspect", "argument --limit: invalid int value: 'many'"),
        (["inspect", "db", "--execution", "X", "--index", "1"], "inspect", "not allowed with argument"),
        (["backup", "only-one"], "backup", "the following arguments are required: DEST"),
    ],
)
def test_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], command: str | None, expected: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in _one_error_line(err, command)


@pytest.mark.parametrize("command", ["replay", "inspect", "backup"])
def test_help_explains_each_tool(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: taskengine {command} ")
    description = out.split("\n\n")[1]
    assert len(description.split()) > 12  # a sentence or two, not just a name


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("replay", "inspect", "backup", "recover", "copy"):
        assert f"\n    {name} " in out
    for name in cli.PLUGINS:
        if cli._plugin_exists(name):
            assert f"\n    {name} " in out
    description = " ".join(out.split("\n\n")[1].split())
    for name in ("replay", "inspect", "backup", "recover", "copy", *cli.PLUGINS):  # recover was left out
        assert f"({name}" in description or f" {name}," in description or f" {name})" in description, name


def test_console_script_in_a_real_process(tmp_path: Path) -> None:
    made = standard_db(tmp_path / "db")
    proc = run_cli("replay", str(tmp_path / "db"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["id"] for d in lines[:-1]] == [ex.id for tid in ("alpha", "beta") for ex in made[tid]]
    assert lines[-1]["summary"] is True and lines[-1]["ok"] is True


def test_violations_in_a_real_process(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    with DbBuilder(tmp_path / "db") as b:
        b.delete(keys.execution_key("alpha", 3))
        b.delete(keys.exec_id_key("alpha", "x"))
    proc = run_cli("replay", str(tmp_path / "db"))
    assert proc.returncode == 1
    assert "violation: task 'alpha': gap at index 3" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("FAILED: ")


def test_read_only_tools_never_import_actors(tmp_path: Path) -> None:
    standard_db(tmp_path / "db")
    code = (
        "import sys\n"
        "from taskengine.tools.cli import main\n"
        f"codes = [main(['replay', {str(tmp_path / 'db')!r}]), main(['inspect', {str(tmp_path / 'db')!r}])]\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('taskengine.actors', 'pykka',"
        " 'taskengine.tools.stress.', 'taskengine.tools.bench.')))\n"
        "print(codes, loaded, file=sys.stderr)\n"
        "sys.exit(0 if codes == [0, 0] and not loaded else 1)\n"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# -- plugins ----------------------------------------------------------------------------------


class FakePlugin:
    """A module that looks like taskengine.tools.stress.command: registered by name, imported only when chosen."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str = "fakeplug") -> None:
        self.name = name
        self.added = 0
        self.ran: list[object] = []
        module = types.ModuleType(f"taskengine.tools.{name}")
        module.__spec__ = importlib.machinery.ModuleSpec(f"taskengine.tools.{name}", None)
        module.DESCRIPTION = "Pretend to drive an engine. Used by the tests of the front end."  # type: ignore[attr-defined]
        module.add_arguments = self.add_arguments  # type: ignore[attr-defined]
        module.run = self.run  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, f"taskengine.tools.{name}", module)
        monkeypatch.setattr(cli, "PLUGINS", {**cli.PLUGINS, name: f".{name}"})

    def add_arguments(self, parser: object) -> None:
        self.added += 1
        parser.add_argument("--rounds", type=int, default=1)  # type: ignore[attr-defined]

    def run(self, args: object) -> int:
        self.ran.append(args)
        if args.rounds < 0:  # type: ignore[attr-defined]
            from taskengine.tools.common import ToolError

            raise ToolError("rounds must not be negative")
        return 0


def test_plugin_is_registered_and_run(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = FakePlugin(monkeypatch)
    assert main([plugin.name, "--rounds", "3"]) == 0
    assert plugin.added == 1 and plugin.ran[0].rounds == 3  # type: ignore[attr-defined]


def test_plugin_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = FakePlugin(monkeypatch)
    assert main([plugin.name, "--rounds", "-1"]) == 1
    assert _one_error_line(capsys.readouterr().err, plugin.name).endswith("rounds must not be negative")


def test_plugin_is_not_loaded_for_other_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = FakePlugin(monkeypatch)
    standard_db(tmp_path / "db")
    assert main(["-v", "replay", str(tmp_path / "db")]) == 0
    assert plugin.added == 0
    assert main(["--help"]) == 0
    assert plugin.added == 1 and f"\n    {plugin.name} " in capsys.readouterr().out


def test_missing_plugin_is_simply_absent(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "PLUGINS", {"no_such_tool_here": ".no_such_tool_here"})
    assert main(["no_such_tool_here"]) == 2
    assert "invalid choice: 'no_such_tool_here'" in _one_error_line(capsys.readouterr().err, None)


def test_broken_plugin_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = types.ModuleType("taskengine.tools.brokenplug")
    module.__spec__ = importlib.machinery.ModuleSpec("taskengine.tools.brokenplug", None)
    monkeypatch.setitem(sys.modules, "taskengine.tools.brokenplug", module)  # found, but has no add_arguments
    monkeypatch.setattr(cli, "PLUGINS", {"brokenplug": ".brokenplug"})
    assert main(["brokenplug"]) == 2
    assert "cannot load the brokenplug command" in _one_error_line(capsys.readouterr().err, "brokenplug")
    assert main(["--help"]) == 0  # the other commands still work
    assert "\n    replay " in capsys.readouterr().out
