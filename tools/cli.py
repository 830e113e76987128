"""The ``taskengine`` command: ``replay``, ``inspect`` and ``backup`` of a database, plus
``stress`` and ``bench`` when those tools are installed.

Each subcommand is a module with ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``. ``stress`` and ``bench`` drive an engine, so they import ``actors``;
they are imported only when chosen (or to list them in ``taskengine --help``), so the
read-only tools never load the actor layer.

Every failure a user can cause or meet (a mistyped path, a database in use, a foreign or
damaged database) ends the command with one line on stderr,
``taskengine <command>: error: <message>``, and a non-zero status: 2 when the command could
not start (usage, opening the database), 1 when it ran and found a problem (replay
violations, a corrupt record, a task that does not exist). Never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import plyvel

from taskengine import __version__
from taskengine.storage import CorruptRecord, StorageError, shown
from taskengine.storage.db import plyvel_message

from . import backup, recover, replay
from . import copy as copy_tool
from . import inspect as inspect_tool
from .common import EXIT_FAILED, EXIT_USAGE, ToolError

log = logging.getLogger(__name__)

PROG = "taskengine"

#: subcommands that read a database through ``storage`` only, always present
BUILTIN: dict[str, ModuleType] = {
    "replay": replay, "inspect": inspect_tool, "backup": backup, "recover": recover, "copy": copy_tool,
}
#: subcommands that drive an engine: name -> the command module (relative to this package),
#: registered when that module exists
PLUGINS = {"stress": ".stress.command", "bench": ".bench.command"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage text is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _summary(module: ModuleType) -> str:
    """A tool's line in ``taskengine --help``: its ``SUMMARY``, else its description's first
    sentence up to the first colon or parenthesis."""
    summary = getattr(module, "SUMMARY", None)
    if summary:
        return str(summary)
    text = _one_line(getattr(module, "DESCRIPTION", None) or module.__doc__ or "")
    for stop in (". ", ": ", " ("):
        text = text.split(stop)[0]
    return text.rstrip(".")


def _plugin_module(name: str) -> str:
    return importlib.util.resolve_name(PLUGINS[name], __package__ or "taskengine.tools")


def _plugin_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(_plugin_module(name)) is not None
    except (ImportError, ValueError):
        return False


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (top-level options take no value)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


VERBOSE_HELP = "log more (twice for debug)"


def _add_command(sub: argparse._SubParsersAction[_Parser], name: str, module: ModuleType) -> None:
    description = getattr(module, "DESCRIPTION", None) or module.__doc__
    parser = sub.add_parser(name, help=_summary(module), description=description)
    # also after the command (taskengine replay -v DB), where a user puts it; SUPPRESS keeps the count
    # given before the command when none is given after it
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def build_parser(argv: Sequence[str] = ()) -> _Parser:
    """The parser; a plugin is imported only if ``argv`` chooses it or chooses nothing
    (``taskengine --help`` lists every command)."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Tools for taskengine databases: check the invariants of a database (replay), look "
            "inside it (inspect), copy it (backup; copy, to another backend), open a damaged one again "
            "(recover), and drive or measure an engine (stress, bench)."
        ),
        epilog="Exit status: 0 fine, 1 a problem found (e.g. a replay violation), 2 a usage or open error.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, module in BUILTIN.items():
        _add_command(sub, name, module)
    chosen = _chosen(argv)
    for name in PLUGINS:
        if not _plugin_exists(name):
            continue
        if chosen is None or chosen == name:
            try:
                module = importlib.import_module(_plugin_module(name))
                _add_command(sub, name, module)
            except Exception as e:  # a broken plugin must not take the other commands down
                log.debug("cannot load the %s command", name, exc_info=True)
                if chosen == name:
                    raise ToolError(f"cannot load the {name} command: {e}", EXIT_USAGE) from None
                if name not in sub.choices:
                    sub.add_parser(name, help=f"(unavailable: {_one_line(str(e))})")
        else:  # listed so argparse knows the name; never parsed
            sub.add_parser(name, add_help=False)
    return parser


def _is_utf8(arg: str) -> bool:
    """Python hands bytes that are not UTF-8 over as lone surrogates, which no database can store
    or look up (LevelDB keys and names are UTF-8, PostgreSQL text too)."""
    try:
        arg.encode()
    except UnicodeEncodeError:
        return False
    return True


def _fail(command: str | None, message: str, code: int) -> int:
    prog = f"{PROG} {command}" if command else PROG
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _chosen(args_list)
    for arg in args_list:
        if not _is_utf8(arg):
            return _fail(command, f"argument {shown(arg)!r} is not valid UTF-8: task ids, paths and URLs are text",
                         EXIT_USAGE)
    try:
        parser = build_parser(args_list)
    except ToolError as e:
        return _fail(command, e.message, e.exit_code)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # --help, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _configure_logging(args.verbose)
    try:
        return int(args.run(args))
    except ToolError as e:
        return _fail(args.command, e.message, e.exit_code)
    except CorruptRecord as e:
        return _fail(args.command, str(e), EXIT_FAILED)
    except StorageError as e:
        return _fail(args.command, str(e), EXIT_FAILED)
    except plyvel.Error as e:  # LevelDB found damage while reading (a checksum, a missing file)
        return _fail(args.command, f"the database cannot be read: {plyvel_message(e)}", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", 130)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        _silence_stdout()
        return EXIT_FAILED


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s")
    elif verbose:
        root.setLevel(level)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so flushing at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
