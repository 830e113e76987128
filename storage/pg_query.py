"""A write's statements, its notification and its ``COMMIT`` as one query of the simple protocol
(what ``PostgresWriter._statements`` sends when the changes allow it: :func:`fits`).

Why one query: every round trip of a turn waits for the writer's server process to wake and
answer, and then for the client's thread; a turn's statements sent one group at a time, then the
notification, then the commit, paid that once each. Why not a pipeline: see ``_statements``. One
query is one message with one Sync: the server runs its statements in order, each with a snapshot
of its own (as if sent one by one), and at the first error skips the rest, ``COMMIT`` included.

Nothing can be looked at between two statements of one query, so each statement judges itself:

- a statement that must change a number of rows (``Stmt.expect``, not soft) raises an error when
  it changed another number (:func:`_checked`): the server skips the rest, the writer rolls back
  and reports the conflict (:func:`conflict`), as it did when it judged the row count itself;
- a soft statement (a claim that another node may have won) is sent in its ``Stmt.marked`` form:
  it returns the keys of the rows it changed, as before, so the writer knows its misses after the
  query; it also appends the positions of those it missed to the write mark's ``missed`` (so a
  commit in doubt knows them again), and its notification kind to a setting local to the
  transaction (``pg_changes.KINDS``) if it changed a row;
- the notification, last, tells the kinds of the statements that cannot miss and those that setting
  holds: one notification, nothing for a claim or finish that missed (``pgfeed.notification``).

A change that goes on after a soft statement of its own must lose that rest when the claim misses,
which one query cannot do: such writes (the engine makes none) go group by group (:func:`fits`), as
do writes of too many bytes for one query (:data:`MAX_VALUES`).

The values are bound by the client (``psycopg.ClientCursor``): array parameters go as literals
(``pgarrays``).

Each statement is prepared once per session (:class:`Prepared`: ``PREPARE``, in the query that first
sends it) and then sent as ``EXECUTE name(values)``: the server parses, analyses and plans it once,
not at every write (most of the server's work for a statement of a few dozen rows besides running
it). A prepared statement outlives the transaction that made it, aborted or not (``PREPARE`` is not
transactional), and dies with its session: a writer keeps the :class:`Prepared` of its connection.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg

from . import pgarrays
from .interface import Change
from .pg_changes import COUNTED, KINDS, Stmt
from .pgfeed import notification

Group = list[tuple[int, Stmt]]

#: what the error of a statement that changed another number of rows than it must says
_CONFLICT = "taskengine: a change did not apply as expected"
_CONFLICT_RE = re.compile(re.escape(_CONFLICT) + r"[^\"]*")


#: the most bytes of values (``Stmt.size``) a write sends as one query.
#: There binary values go as hex text, twice their size, and the server copies each literal into a
#: buffer that doubles as it grows, up to one allocation of 1 GB: a turn of a few hundred
#: executions of a megabyte of data each was refused ("invalid memory alloc request size"). A write
#: of more goes group by group, its values bound by the server, each group in parts of this size;
#: next to the time such a write takes to send, its round trips are nothing
MAX_VALUES = 32 << 20


def fits(changes: Sequence[Change]) -> bool:
    """Whether ``changes`` can go as one query: no change goes on after a soft statement, and
    their values are at most :data:`MAX_VALUES` bytes."""
    total = 0
    for change in changes:
        for stmt in change[:-1]:
            if stmt.soft:
                return False
            total += stmt.size
        if change:
            total += change[-1].size
    return total <= MAX_VALUES


def parts(run: Group) -> list[Group]:
    """A group (``pg_changes.plan``'s) as consecutive parts of at most :data:`MAX_VALUES` bytes of
    values each (at least one statement each). Its statements do not conflict, so its parts one
    after another do what the group as one statement does."""
    out: list[Group] = [[]]
    total = 0
    for position, stmt in run:
        weight = stmt.size
        if out[-1] and total + weight > MAX_VALUES:
            out.append([])
            total = 0
        out[-1].append((position, stmt))
        total += weight
    return out


def _checked(sql: str) -> str:
    """``sql`` (one INSERT, UPDATE or DELETE without a RETURNING of its own) as a statement that
    fails when it changed another number of rows than its last two parameters (the same number,
    twice) say. The error is a cast of the message to an integer: plain SQL has no ``RAISE``, and
    its text comes back in the server's message. ValueError for another statement: it would be
    sent unchecked, or not run."""
    if sql.lstrip().upper().startswith("WITH") or "RETURNING" in sql.upper():
        raise ValueError(f"the row count of this statement cannot be checked in SQL: {sql}")
    return (f"WITH r AS ({sql} RETURNING 1) SELECT CASE count(*) WHEN %s THEN 0 "
            f"ELSE ('{_CONFLICT} (' || count(*) || ' rows, not ' || %s || ')')::int END FROM r")


#: each statement of ``pg_changes.COUNTED`` as :func:`_checked` makes it: made as this module is
#: imported, so a statement that cannot be checked so fails the import
_CHECKED = {sql: _checked(sql) for sql in COUNTED}


@attrs.define
class Prepared:
    """The statements prepared on the session of ``conn``, by their SQL (``%s`` placeholders)."""

    conn: Any = None
    names: dict[str, str] = attrs.Factory(dict)

    def of(self, conn: Any) -> Prepared:
        """What is prepared on ``conn``: this, or nothing yet if it is another connection."""
        return self if conn is self.conn else Prepared(conn)

    def run(self, sql: str, prepare: list[str]) -> str:
        """``sql`` as an ``EXECUTE`` of its prepared form (same values, same order); its ``PREPARE``
        is added to ``prepare`` the first time, to be sent before it."""
        name = self.names.get(sql)
        count = sql.count("%s")
        if name is None:
            if "%%" in sql:
                raise ValueError(f"a statement to prepare has a literal %: {sql}")
            name = self.names[sql] = f"taskengine_{len(self.names)}"
            numbers = itertools.count(1)
            prepare.append(f"PREPARE {name} AS " + re.sub("%s", lambda _: f"${next(numbers)}", sql))
        return f"EXECUTE {name}(" + ", ".join(["%s"] * count) + ")" if count else f"EXECUTE {name}"


@attrs.frozen
class Query:
    """A write as one query: its text and values, and how many results its ``PREPARE``s come first with."""

    sql: str
    params: list[Any]
    prepares: int


def compose(groups: Sequence[Group], mark: tuple[str, int], prepared: Prepared, *, commit: bool) -> Query:
    """The groups (``pg_changes.plan``'s, none left out) as one query: each group one statement,
    then the notification, then (``commit``) ``COMMIT``; the statements ``prepared`` has not
    prepared yet are prepared first, in it. ``mark``: the key and epoch of the writer's write
    mark row."""
    parts: list[str] = []
    params: list[Any] = []
    kinds: set[str] = set()  # of the statements that cannot miss
    recorded = False  # whether a soft statement adds kinds to the transaction's setting
    for run in groups:
        stmt = run[0][1]
        if stmt.soft:
            parts.append(stmt.marked)
            params += pgarrays.columns(stmt.batch, [s.params for _, s in run])
            kind = "".join(sorted({s.notify for _, s in run}))
            recorded = recorded or bool(kind)
            params += [kind, pgarrays.BigintArray(p for p, _ in run), pgarrays.TextArray(s.key[0] for _, s in run),
                       pgarrays.BigintArray(s.key[1] for _, s in run), *mark, len(run)]
            continue
        kinds.update(s.notify for _, s in run if s.notify)
        if len(run) == 1:
            sql, values = stmt.sql, list(stmt.params)
        else:
            sql, values = stmt.batch, list(pgarrays.columns(stmt.batch, [s.params for _, s in run]))
        if stmt.expect is not None:
            sql = _CHECKED.get(sql) or _checked(sql)
            values += [stmt.expect * len(run)] * 2
        parts.append(sql)
        params += values
    if kinds or recorded:
        notice, notice_values = notification("".join(sorted(kinds)), KINDS if recorded else "")
        parts.append(notice)
        params += notice_values
    prepare: list[str] = []
    parts = [prepared.run(sql, prepare) for sql in parts]
    if commit:
        parts.append("COMMIT")
    return Query("; ".join(prepare + parts), params, len(prepare))


def read(cur: Any, query: Query, groups: Sequence[Group]) -> set[int]:
    """The positions of the changes that missed, from the results of ``query`` (:func:`compose`'s)
    on ``cur`` (positioned at its first): the changes of a soft group whose keys did not come back."""
    for _ in range(query.prepares):
        cur.nextset()
    missed: set[int] = set()
    for i, run in enumerate(groups):
        if i:
            cur.nextset()
        if run[0][1].soft:
            changed = {(str(t), int(x)) for t, x in cur.fetchall()}
            missed.update(p for p, s in run if s.key not in changed)
    return missed


def conflict(e: psycopg.Error) -> str | None:
    """What a statement of :func:`_checked` that failed says, if ``e`` is its error."""
    if not isinstance(e, psycopg.errors.InvalidTextRepresentation):
        return None
    found = _CONFLICT_RE.search(str(e))
    return None if found is None else found.group(0).removeprefix("taskengine: ")
