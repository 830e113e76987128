"""Opening a taskengine LevelDB and reading it.

Readers here are all a replay or inspect tool needs; writes go through
``storage.batch`` so every change is one atomic batch.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shlex
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import plyvel

from . import codec, durable, interface, keys
from .errors import (
    CorruptRecord,
    DatabaseDamaged,
    NotADatabase,
    StorageError,
    StorageLocked,
    UnknownSchema,
)
from .interface import Changes, OnCorrupt, Store, Writer, is_url, shown
from .lock import LOCK_FILE, DirectoryLock, read_only_error
from .records import Execution, Task

log = logging.getLogger(__name__)


def plyvel_message(e: BaseException) -> str:
    """plyvel puts LevelDB's status in the message as bytes; make it text."""
    arg = e.args[0] if e.args else e
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def recover_hint(path: str) -> str:
    """The way out of damage, with the command written for this database."""
    where = shlex.quote(path)
    return (
        "to open it anyway, accepting the loss of what LevelDB cannot read, run "
        f"`taskengine recover {where} --accept-loss` (then `taskengine replay {where}`), or restore a backup"
    )


def path_problem(path: str) -> str | None:
    """Why LevelDB cannot use ``path`` (it takes UTF-8 names without NUL), or None."""
    if "\x00" in path:
        return "contains a NUL character"
    try:
        path.encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8 (LevelDB takes UTF-8 names only)"
    return None


def new_directory_problem(dest: str, what: str, src: str) -> str | None:
    """Why ``dest`` cannot become a copy of the database at ``src`` (a directory or a URL), or
    None: it must be a new or empty directory outside ``src`` (a copy inside the database would be
    copied with it, and the database's directory would hold a second LevelDB)."""
    if os.path.exists(dest) and not os.path.isdir(dest):
        return f"{what} {dest!r} is a file; choose a new directory"
    if os.path.exists(dest) and os.listdir(dest):
        return f"{what} {dest!r} exists and is not empty; choose a new directory"
    if not is_url(src):
        real_src, real_dest = os.path.realpath(src), os.path.realpath(dest)
        if real_dest == real_src or real_dest.startswith(real_src + os.sep):
            return f"{what} {dest!r} is inside the source database {src!r}"
    return None


def backup_problem(src: str, dest: str) -> str | None:
    """Why ``dest`` cannot take a backup of the database at ``src``, or None."""
    if is_url(dest):
        return (f"backup destination {shown(dest)} is a PostgreSQL database: a backup is a new LevelDB "
                "directory; copy into PostgreSQL with `taskengine copy SRC URL`")
    return new_directory_problem(dest, "backup destination", src)


def _check_path(path: str, create: bool, *, repairing: bool = False) -> None:
    """Refuse what is not a database before LevelDB is touched: LevelDB writes its LOCK and LOG
    files into a directory even when it then refuses to open it, so a mistyped path would be left
    with files that later opens take for a database. A LevelDB directory whose CURRENT file is
    gone is damaged, not foreign: its repairer rebuilds it from the tables (``repairing``)."""
    problem = path_problem(path)
    if problem is not None:
        raise NotADatabase(f"{path!r} {problem}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADatabase(f"{path!r} is a file, not a database directory")
    if not os.path.isdir(path):
        if create:
            _create(path)
            return
        raise NotADatabase(f"no database at {path!r}")
    names = _names(path)
    if "CURRENT" in names:
        return
    if any(n.startswith("MANIFEST-") or n.endswith((".ldb", ".sst", ".log")) for n in names):
        if repairing:
            return
        raise DatabaseDamaged(f"{path!r} is damaged: its CURRENT file is missing; {recover_hint(path)}")
    if not create:
        raise NotADatabase(f"{path!r} is not a database: the directory holds no LevelDB (no CURRENT file)")
    if names - {LOCK_FILE}:
        raise NotADatabase(f"{path!r} is a non-empty directory that is not a LevelDB database")
    _create(path)


def _names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError as e:
        raise StorageError(f"cannot read the directory {path!r}: {e.strerror}") from None


def _create(path: str) -> None:
    """A new taskengine database at ``path``, whole or not at all (``durable.create_atomically``):
    a first open cut short by a crash, a power loss or a full disk leaves nothing behind that a
    later open would refuse."""

    def build(where: str) -> None:
        raw = _open_leveldb(where, create=True, paranoid=True)
        try:
            raw.put(keys.SCHEMA_KEY, codec.encode_int(keys.SCHEMA_VERSION), sync=True)
        except plyvel.Error as e:
            raise StorageError(f"cannot create {path!r}: {plyvel_message(e)}") from None
        finally:
            raw.close()

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if durable.create_atomically(path, build):
            log.info("created taskengine database at %s (schema %d)", path, keys.SCHEMA_VERSION)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise read_only_error(path, e) from None
        raise StorageError(f"cannot create {path!r}: {e.strerror}") from None


def _open_leveldb(path: str, create: bool, paranoid: bool) -> Any:
    """plyvel's DB, with LevelDB's paranoid checks unless the caller accepts a loss: recovery
    that would drop log records then fails instead of carrying on without them."""
    try:
        return plyvel.DB(path, create_if_missing=create, paranoid_checks=paranoid)
    except plyvel.IOError as e:
        msg = plyvel_message(e)
        if "Permission denied" in msg or "Read-only file system" in msg:
            raise read_only_error(path, OSError(errno.EACCES, msg)) from None
        if "lock" in msg.lower():  # another program holds LevelDB's own lock
            raise StorageLocked(path, msg) from None
        raise _cannot_open(path, msg) from None
    except plyvel.CorruptionError as e:
        raise DatabaseDamaged(f"{path!r} is damaged: {plyvel_message(e)}; {recover_hint(path)}") from None
    except plyvel.Error as e:
        raise NotADatabase(f"{path!r} is not a LevelDB database: {plyvel_message(e)}") from None


def _cannot_open(path: str, msg: str) -> StorageError:
    """LevelDB's I/O error at open; one that names a table file is a table cut short (its footer is
    gone), which is damage the way out of which is ``taskengine recover``."""
    if ".ldb:" in msg or ".sst:" in msg:
        return DatabaseDamaged(f"{path!r} is damaged: {msg}; {recover_hint(path)}")
    return StorageError(f"cannot open {path!r}: {msg}")


def dropped_by_recovery(path: str) -> list[str]:
    """Lines of LevelDB's info log (rewritten at every open) where recovery dropped data."""
    try:
        with open(os.path.join(path, "LOG"), encoding="utf-8", errors="replace") as f:
            return [line.strip() for line in f if "dropping" in line or "ignoring error" in line]
    except OSError:
        return []


def recover(path: str) -> list[str]:
    """Make a damaged database open again, accepting the loss of what LevelDB cannot read: open it
    without paranoid checks (recovery drops unreadable log records and rewrites the rest), or, if
    that fails too, run LevelDB's repairer. Returns what was dropped, from LevelDB's info log."""
    _check_path(path, create=False, repairing=True)
    lock = DirectoryLock.acquire(path)
    try:
        try:
            _read_everything(_open_leveldb(path, create=False, paranoid=False), path)
            dropped = dropped_by_recovery(path)
        except StorageError as e:
            if isinstance(e, StorageLocked):
                raise
            why = str(e).replace(f"; {recover_hint(path)}", "")  # not "run taskengine recover" to its user
            log.warning("%s: LevelDB cannot read it (%s); running its repairer", path, why)
            try:
                plyvel.repair_db(path)
            except plyvel.Error as e2:
                raise StorageError(f"cannot repair {path!r}: {plyvel_message(e2)}") from None
            dropped = [f"repaired by LevelDB's repairer after: {why}"]
            restored = _restore_schema_key(path)
            if restored is not None:
                dropped.append(restored)
    finally:
        lock.release()
    return dropped


#: what follows a task's id and its NUL in each of its keys (FORMAT.md)
_TASK_KINDS = frozenset(b"".join((keys.COUNTER, keys.EXEC_ID, keys.IDEMPOTENCY, keys.PRUNE_MARK, keys.TASK,
                                  keys.EXECUTION)))


def _restore_schema_key(path: str) -> str | None:
    """The repairer keeps the tables it can read; the schema key, written first, sits alone in the
    oldest table, so a damaged or missing first table leaves every task with no schema key and the
    database refused as foreign. Written again (this version) only when every key left is a
    taskengine key: a version-1 database is version 2 without prune marks, read the same."""
    raw = _open_leveldb(path, create=False, paranoid=False)
    try:
        with _reading(f"the repaired {path!r}"):
            if raw.get(keys.SCHEMA_KEY) is not None:
                return None
            seen = False
            with raw.iterator(include_value=False) as it:
                for key in it:
                    tag, sep, rest = key[:1], key.find(keys.SEP), b""
                    if sep > 0:
                        rest = key[sep + 1:]
                    ours = (tag == keys.TASK_TAG and rest[:1] != b"" and rest[0] in _TASK_KINDS) or (
                        tag == keys.LIVE_TAG and len(rest) == 8)
                    if not ours:
                        return None
                    seen = True
            if not seen:
                return None
            raw.put(keys.SCHEMA_KEY, codec.encode_int(keys.SCHEMA_VERSION), sync=True)
    finally:
        raw.close()
    return (f"the schema version key went with the damage; written again (version {keys.SCHEMA_VERSION}), "
            "since every key left is taskengine's")


def _read_everything(raw: Any, path: str) -> None:
    """Read every key and value with checksums verified (a damaged table shows only when read),
    then close ``raw``; DatabaseDamaged if anything cannot be read."""
    try:
        _verify(raw, path)
    finally:
        raw.close()


def _verify(raw: Any, path: str) -> None:
    try:
        with raw.iterator(verify_checksums=True) as it:
            for _ in it:
                pass
    except plyvel.Error as e:
        raise DatabaseDamaged(f"{path!r} is damaged: {plyvel_message(e)}; {recover_hint(path)}") from None


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """LevelDB read errors (a damaged table file, a closed handle) as StorageError."""
    try:
        yield
    except plyvel.Error as e:
        raise StorageError(f"cannot read {what}: {plyvel_message(e)}") from None
    except RuntimeError as e:  # plyvel: "Database is closed"
        raise StorageError(f"cannot read {what}: {e}") from None


_F = TypeVar("_F", bound=Callable[..., Any])


def _reads(fn: _F) -> _F:
    """A point read whose LevelDB errors become StorageError (iterators use ``_reading``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _reading(fn.__name__.replace("_", " ")):
            return fn(*args, **kwargs)

    return cast(_F, wrapper)


class Database(Store):
    """One open LevelDB database (the embedded backend of :class:`Store`). Reads are safe from any
    thread (LevelDB allows it); writes go through a :class:`~taskengine.storage.batch.Committer`,
    which takes ``write_lock``, so ``close`` never frees the handle under a write."""

    def __init__(
        self, raw: Any, path: str, lock: DirectoryLock | None = None, schema: int = keys.SCHEMA_VERSION
    ) -> None:
        self.raw = raw
        self.path = path
        self._lock = lock
        self.write_lock = threading.Lock()
        #: run by close(): what writers hold that outlives no database (a directory watch)
        self.closing: list[Callable[[], None]] = []
        #: the schema version stored in the database (one of ``keys.KNOWN_SCHEMAS``)
        self.schema = schema

    @classmethod
    def open(cls, path: str, *, create: bool = False, accept_loss: bool = False) -> Database:
        """Open a taskengine database; ``create`` makes a new one (the engine's mode).

        Tools open with ``create=False`` so a typo never leaves an empty database behind, and
        never write: a version-1 database stays version 1 for them. The engine's mode upgrades
        it to the current version, which only adds what version 1 cannot hold (prune marks).
        The database's own lock (see ``storage.lock``) is taken before LevelDB is touched.
        Damage that LevelDB would skip (a log record that fails its checksum) raises
        DatabaseDamaged, unless ``accept_loss``: then LevelDB drops what it cannot read and
        the dropped parts are logged.
        """
        _check_path(path, create)
        lock = DirectoryLock.acquire(path)
        try:
            raw = _open_leveldb(path, create, paranoid=not accept_loss)
            try:
                dropped = dropped_by_recovery(path)
                if dropped and not accept_loss:
                    raise DatabaseDamaged(f"{path!r}: LevelDB dropped data while opening it ({dropped[0]}); "
                                          f"{recover_hint(path)}")
                for line in dropped:
                    log.error("%s: recovery accepted a loss: %s", path, line)
                schema = cls._check_schema(raw, path, create)
            except BaseException:
                raw.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(raw, path, lock, schema)

    @classmethod
    def _check_schema(cls, raw: Any, path: str, create: bool) -> int:
        try:
            return cls._check_schema_version(raw, path, create)
        except plyvel.CorruptionError as e:
            raise DatabaseDamaged(f"{path!r} is damaged: {plyvel_message(e)}; {recover_hint(path)}") from None
        except plyvel.Error as e:  # an unreadable table file, or a full disk writing a new schema
            raise _cannot_open(path, plyvel_message(e)) from None

    @staticmethod
    def _check_schema_version(raw: Any, path: str, create: bool) -> int:
        stored = raw.get(keys.SCHEMA_KEY)
        if stored is None:
            with raw.iterator(include_value=False) as it:
                empty = next(it, None) is None
            if not empty:
                raise NotADatabase(f"{path!r} is a LevelDB database, but not one of taskengine (no schema key)")
            if not create:
                raise NotADatabase(f"{path!r} is an empty LevelDB database, not one of taskengine")
            raw.put(keys.SCHEMA_KEY, codec.encode_int(keys.SCHEMA_VERSION), sync=True)
            log.info("created taskengine database at %s (schema %d)", path, keys.SCHEMA_VERSION)
            return keys.SCHEMA_VERSION
        try:
            version = codec.decode_int(keys.SCHEMA_KEY, stored)
        except CorruptRecord:
            raise UnknownSchema(f"{path!r} has an unreadable schema version {stored[:20]!r}") from None
        if version not in keys.KNOWN_SCHEMAS:
            known = " and ".join(str(v) for v in keys.KNOWN_SCHEMAS)
            raise UnknownSchema(f"{path!r} has schema version {version}; this taskengine knows versions {known} only")
        if create and version != keys.SCHEMA_VERSION:
            raw.put(keys.SCHEMA_KEY, codec.encode_int(keys.SCHEMA_VERSION), sync=True)
            log.info("upgraded taskengine database at %s from schema %d to %d", path, version, keys.SCHEMA_VERSION)
            return keys.SCHEMA_VERSION
        return version

    @property
    def changes(self) -> Changes:
        from . import changes  # it builds on batch, which builds on this module

        return changes

    def writer(self, *, sync: bool = True) -> Writer:
        from .batch import Committer

        return Committer(self, sync=sync)

    def verify(self) -> None:
        """Read every key and value with checksums verified: a damaged table shows only when it is
        read, which an open does not do. DatabaseDamaged (with the way out) if anything fails."""
        _verify(self.raw, self.path)

    def close(self) -> None:
        """Idempotent; waits for a write in progress, then releases the database's lock."""
        with self.write_lock:
            if not self.raw.closed:
                self.raw.close()
            closing, self.closing = self.closing, []
        for fn in closing:
            fn()
        if self._lock is not None:
            self._lock.release()

    # -- tasks ---------------------------------------------------------------------------

    @_reads
    def read_counter(self, task_id: str, snapshot: Any = None) -> int:
        return self._read_int(keys.counter_key(task_id), snapshot)

    def _read_int(self, key: bytes, snapshot: Any) -> int:
        """A stored decimal (a counter, a prune mark); 0 when the key is absent."""
        value = (snapshot or self.raw).get(key)
        return 0 if value is None else codec.decode_int(key, value)

    @_reads
    def last_index(self, task_id: str, snapshot: Any = None) -> int | None:
        """Highest stored execution index of a task: one seek, never a scan."""
        src = snapshot or self.raw
        with src.iterator(prefix=keys.execution_prefix(task_id), reverse=True, include_value=False) as it:
            key = next(it, None)
        return None if key is None else keys.decode_index(key[-8:])

    @_reads
    def read_prune_mark(self, task_id: str, snapshot: Any = None) -> int:
        """The lowest stored index of the task (0 unless its history was pruned)."""
        return self._read_int(keys.prune_mark_key(task_id), snapshot)

    @_reads
    def get_task(self, task_id: str, snapshot: Any = None) -> Task | None:
        """The stored task with its stored counter and prune mark (not reconciled; see ``actors``)."""
        src = snapshot or self.raw
        key = keys.task_key(task_id)
        value = src.get(key)
        if value is None:
            return None
        return codec.decode_task(key, value, self.read_counter(task_id, src), self.read_prune_mark(task_id, src))

    def iter_task_ids(
        self, after: str | None = None, snapshot: Any = None, on_corrupt: OnCorrupt | None = None
    ) -> Iterator[str]:
        """Every task id that has any key, in key order (the order of the ids' UTF-8 bytes, which
        is code point order; ``after``: the ids past that one); seeks past each task's executions.
        A malformed key raises CorruptRecord, or, given ``on_corrupt``, is passed to it and
        skipped with the keys that share its prefix."""
        src = snapshot or self.raw
        with _reading("task ids"), src.iterator(include_value=False) as it:
            it.seek(keys.TASK_TAG if after is None else keys.prefix_end(keys.task_prefix(after)))
            for key in it:
                if not key.startswith(keys.TASK_TAG):
                    return
                parsed = keys.parse_task_key(key)
                if parsed is None:
                    if on_corrupt is None:
                        raise CorruptRecord(key, "malformed task key")
                    on_corrupt(CorruptRecord(key, "malformed task key"))
                    sep = key.find(keys.SEP, 1)
                    if sep > 0:
                        it.seek(keys.prefix_end(key[: sep + 1]))
                    continue
                yield parsed.task_id
                it.seek(keys.prefix_end(keys.task_prefix(parsed.task_id)))

    def list_tasks(self, after: str | None = None, limit: int = 50, on_corrupt: OnCorrupt | None = None) -> list[Task]:
        """A page of tasks in id order, read from one snapshot (each with its stored counter and
        prune mark). A task whose keys do not decode raises CorruptRecord, or, given
        ``on_corrupt``, is passed to it and left out, so one damaged task cannot hide the others."""
        out: list[Task] = []
        with _reading("tasks"), self.raw.snapshot() as snap:
            for task_id in self.iter_task_ids(after, snap, on_corrupt):
                try:
                    task = self.get_task(task_id, snap)
                except CorruptRecord as e:
                    if on_corrupt is None:
                        raise
                    on_corrupt(e)
                    continue
                if task is not None:  # keys without a task record are replay's to report
                    out.append(task)
                    if len(out) >= limit:
                        break
        return out

    # -- executions ----------------------------------------------------------------------

    @_reads
    def get_execution_at(self, task_id: str, index: int) -> Execution | None:
        key = keys.execution_key(task_id, index)
        value = self.raw.get(key)
        return None if value is None else codec.decode_execution(key, value, task_id, index)

    @_reads
    def get_execution(self, task_id: str, execution_id: str) -> Execution | None:
        with self.raw.snapshot() as snap:
            key = keys.exec_id_key(task_id, execution_id)
            raw_index = snap.get(key)
            if raw_index is None:
                return None
            index = codec.decode_int(key, raw_index)
            rkey = keys.execution_key(task_id, index)
            value = snap.get(rkey)
            if value is None:
                raise CorruptRecord(key, f"execution {execution_id} points at index {index}, which has no record")
            return codec.decode_execution(rkey, value, task_id, index)

    @_reads
    def find_idempotent(self, task_id: str, key: str) -> str | None:
        raw_key = keys.idempotency_key(task_id, key)
        value = self.raw.get(raw_key)
        return None if value is None else codec.decode_execution_id(raw_key, value)

    def iter_executions(
        self, task_id: str, *, after: int | None = None, limit: int | None = None, newest_first: bool = False
    ) -> Iterator[Execution]:
        """A task's executions in index order; ``after`` is exclusive in the scan direction."""
        prefix = keys.execution_prefix(task_id)
        if newest_first:
            start, stop = prefix, (keys.execution_key(task_id, after) if after is not None else None)
        else:
            start, stop = (keys.execution_key(task_id, after + 1) if after is not None else prefix), None
        with _reading(f"executions of {task_id!r}"), self.raw.iterator(
            start=start, stop=stop or keys.prefix_end(prefix), reverse=newest_first
        ) as it:
            for n, (key, value) in enumerate(it):
                if limit is not None and n >= limit:
                    return
                yield codec.decode_execution(key, value, task_id, keys.decode_index(key[-8:]))

    def iter_live(self, on_corrupt: OnCorrupt | None = None) -> Iterator[tuple[str, int, str | None]]:
        """(task id, index, execution id) of every execution that holds an index and has not
        finished: what recovery needs, without reading finished history.

        A live entry that does not decode raises CorruptRecord, or, given ``on_corrupt``, is
        passed to it and the walk goes on (so one bad entry cannot keep a node from starting):
        a malformed key is skipped, and a key whose value is not an execution id is yielded with
        ``None`` for the id, since the record at its index still says what is there."""
        with _reading("live executions"), self.raw.iterator(prefix=keys.live_prefix()) as it:
            for key, value in it:
                parsed = keys.parse_live_key(key)
                try:
                    if parsed is None:
                        raise CorruptRecord(key, "malformed live key")
                    execution_id: str | None = codec.decode_execution_id(key, value)
                except CorruptRecord as e:
                    if on_corrupt is None:
                        raise
                    on_corrupt(e)
                    if parsed is None:
                        continue
                    execution_id = None
                yield parsed[0], parsed[1], execution_id

    # -- retention -------------------------------------------------------------------------

    @_reads
    def first_live(self, task_id: str) -> int | None:
        """The lowest index of the task that holds a live key (PENDING or RUNNING): one seek."""
        with self.raw.iterator(prefix=keys.live_prefix(task_id), include_value=False) as it:
            key = next(it, None)
        return None if key is None else keys.decode_index(key[-8:])

    def finished_run(self, task_id: str, start: int, stop: int) -> list[Execution]:
        """The records at ``start, start+1, ...`` below ``stop`` while each is there and finished:
        the executions a prune mark at ``start`` may move past, in order (it stops at the first
        unfinished, missing or undecodable one, so the stored indexes stay contiguous)."""
        if stop <= start:
            return []

        def decoder(key: bytes, value: bytes, index: int) -> Callable[[], Execution]:
            return lambda: codec.decode_execution(key, value, task_id, index)

        with _reading(f"executions of {task_id!r}"), self.raw.iterator(
            start=keys.execution_key(task_id, start), stop=keys.execution_key(task_id, stop)
        ) as it:
            records = ((index, decoder(key, value, index)) for key, value in it
                       for index in (keys.decode_index(key[-8:]),))
            return interface.finished_run(task_id, start, records)

    # -- copies --------------------------------------------------------------------------

    def backup(self, dest: str, batch_size: int = 10_000) -> int:
        """Copy a consistent snapshot into a new database at ``dest``; returns keys copied."""
        problem = backup_problem(self.path, dest)
        if problem is not None:
            raise StorageError(problem)
        try:
            out = plyvel.DB(dest, create_if_missing=True, error_if_exists=True)
        except plyvel.Error as e:
            raise StorageError(f"cannot create backup at {dest!r}: {plyvel_message(e)}") from None
        copied = 0
        try:
            with _reading("the database to back up"), self.raw.snapshot() as snap, snap.iterator() as it:
                batch = out.write_batch()
                for key, value in it:
                    if key == keys.SCHEMA_KEY:
                        continue  # written last: an interrupted copy is not a taskengine database
                    batch.put(key, value)
                    copied += 1
                    if copied % batch_size == 0:
                        batch.write()
                        batch = out.write_batch()
                batch.write()
            out.put(keys.SCHEMA_KEY, codec.encode_int(self.schema), sync=True)
            copied += 1
        finally:
            out.close()
        return copied
