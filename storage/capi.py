"""Write batches through LevelDB's C API, built without giving up the GIL for every key.

plyvel's ``WriteBatch.put`` releases the GIL around what is only a copy into the
batch's buffer. A counter actor builds its turn's batch while dozens of caller
threads want the GIL, so every put becomes two thread switches (BENCHMARKS.md has
what that costs). This module builds the batch with the C API that the libleveldb
shipped with plyvel exports (``leveldb/c.h``), through ctypes: the ``PyDLL``
functions keep the GIL for the copies, and the one ``CDLL`` call that writes, and
waits for the disk, releases it, as plyvel's own write does.

The C API needs the ``leveldb::DB*`` that plyvel's ``DB`` object holds and does
not expose. It is read at the place plyvel 1.5 declares it, and only after the
object is seen to have exactly that layout. Anything else (another plyvel
release, a libleveldb without the C API, another interpreter) makes
:func:`open_writer` return None and the caller keeps plyvel's batches, which
give the same bytes on disk. ``TASKENGINE_PLAIN_BATCH=1`` forces that path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

log = logging.getLogger(__name__)

#: plyvel releases whose ``DB`` layout this module knows (checked again at run time)
KNOWN_PLYVEL = ("1.5.",)


class _DBHandle(ctypes.Structure):
    """``struct leveldb_t { leveldb::DB* rep; }`` of LevelDB's c.cc."""

    _fields_ = [("rep", ctypes.c_void_p)]


class CBatch:
    """A ``leveldb_writebatch_t``: ``put`` and ``delete`` like plyvel's, then ``write`` once.
    ``close`` frees it (``write`` does too); both are idempotent."""

    __slots__ = ("_api", "_ref")

    def __init__(self, api: CWriter) -> None:
        self._api = api
        self._ref: int | None = api.create()

    def put(self, key: bytes, value: bytes) -> None:
        if self._ref is None:  # C would be handed NULL
            raise ValueError("the write batch was already written or closed")
        self._api.put(self._ref, key, len(key), value, len(value))

    def delete(self, key: bytes) -> None:
        if self._ref is None:
            raise ValueError("the write batch was already written or closed")
        self._api.delete(self._ref, key, len(key))

    def write(self) -> None:
        try:
            self._api.write(self._ref)
        finally:
            self.close()

    def close(self) -> None:
        if self._ref is not None:
            ref, self._ref = self._ref, None
            self._api.destroy(ref)


class CWriter:
    """The C functions, bound once, for one open database. ``sync`` is fixed here, at open.

    Not thread-safe against the database being closed: its one user, ``Committer``, writes
    and closes under the database's write lock."""

    def __init__(self, raw_db: Any, pointer: int, library: str, *, sync: bool) -> None:
        keep_gil, drop_gil = ctypes.PyDLL(library), ctypes.CDLL(library)
        vp, size = ctypes.c_void_p, ctypes.c_size_t
        self._raw_db = raw_db  # the pointer lives as long as this object is open
        self._handle = _DBHandle(pointer)
        self.create = _bind(keep_gil.leveldb_writebatch_create, [], vp)
        self.destroy = _bind(keep_gil.leveldb_writebatch_destroy, [vp], None)
        self.put = _bind(keep_gil.leveldb_writebatch_put, [vp, ctypes.c_char_p, size, ctypes.c_char_p, size], None)
        self.delete = _bind(keep_gil.leveldb_writebatch_delete, [vp, ctypes.c_char_p, size], None)
        self._write = _bind(drop_gil.leveldb_write, [ctypes.POINTER(_DBHandle), vp, vp, ctypes.POINTER(vp)], None)
        self._free = _bind(keep_gil.leveldb_free, [vp], None)
        self._options = _bind(keep_gil.leveldb_writeoptions_create, [], vp)()
        self._destroy_options = _bind(keep_gil.leveldb_writeoptions_destroy, [vp], None)
        _bind(keep_gil.leveldb_writeoptions_set_sync, [vp, ctypes.c_ubyte], None)(self._options, int(sync))

    def __del__(self) -> None:
        options, self._options = getattr(self, "_options", None), None
        if options:
            self._destroy_options(options)

    def batch(self) -> CBatch:
        return CBatch(self)

    def write(self, ref: int | None) -> None:
        """One LevelDB write of the batch; OSError with LevelDB's message if it failed."""
        if ref is None:
            raise OSError("the write batch was already written or closed")
        if self._raw_db.closed:  # the pointer is freed with the database
            raise OSError("the database is closed")
        error = ctypes.c_void_p()
        self._write(ctypes.byref(self._handle), self._options, ref, ctypes.byref(error))
        if error.value:
            message = ctypes.string_at(error.value).decode("utf-8", "replace")
            self._free(error.value)
            raise OSError(message)


def _bind(fn: Any, argtypes: list[Any], restype: Any) -> Any:
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _library() -> str | None:
    """The libleveldb this process has loaded for plyvel (the very copy whose DB the pointer is
    into); without ``/proc``, the copy plyvel's wheel ships, else the system's."""
    import plyvel

    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split(None, 5)[5].strip() for line in maps if "libleveldb" in line}
    except (OSError, IndexError):
        loaded = set()
    if len(loaded) == 1:
        return loaded.pop()
    libs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(plyvel.__file__))), "plyvel.libs")
    try:
        names = sorted(n for n in os.listdir(libs) if n.startswith("libleveldb"))
    except OSError:
        names = []
    return os.path.join(libs, names[0]) if names else ctypes.util.find_library("leveldb")


def db_pointer(raw_db: Any) -> int | None:
    """The ``leveldb::DB*`` inside an open plyvel ``DB``; None unless its layout is plyvel 1.5's.

    plyvel 1.5 declares ``cdef class DB: leveldb.DB* _db; Options options; readonly name; lock;
    iterators`` and has a ``cpdef`` method, so the object is: header (2 words), vtable, ``_db``, the
    Options struct, then three object pointers. ``name`` is readable, which pins the layout down.
    Word 3 is then taken only if it points at readable memory holding a C++ object whose vtable
    is that of a ``DBImpl`` of the very libleveldb loaded here (read from a throwaway database
    opened through the C API): any other pointer in that place, e.g. to the options'
    comparator, is refused."""
    import plyvel

    if sys.implementation.name != "cpython" or not plyvel.__version__.startswith(KNOWN_PLYVEL):
        return None
    if type(raw_db) is not plyvel.DB or raw_db.closed:
        return None
    word = ctypes.sizeof(ctypes.c_void_p)
    size = type(raw_db).__basicsize__
    if size % word or size < 8 * word:
        return None
    words = (ctypes.c_void_p * (size // word)).from_address(id(raw_db))
    if words[1] != id(type(raw_db)) or words[size // word - 3] != id(raw_db.name) or not words[3]:
        return None  # the header is not (refcount, type), or name is not where plyvel 1.5 has it
    pointer = int(words[3])
    return pointer if points_at_dbimpl(pointer) else None


def points_at_dbimpl(pointer: int) -> bool:
    """Whether ``pointer`` is the address of a ``DBImpl`` of the libleveldb loaded here."""
    library = _library()
    if library is None or not _readable(pointer, ctypes.sizeof(ctypes.c_void_p)):
        return False
    reference = _dbimpl_vtable(library)
    return reference is not None and ctypes.c_void_p.from_address(pointer).value == reference


def _readable(address: int, size: int) -> bool:
    """Whether ``[address, address + size)`` lies in one readable mapping of this process."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                span, perms = line.split(None, 2)[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                if start <= address and address + size <= end:
                    return perms.startswith("r")
    except (OSError, ValueError):
        pass
    return False


@functools.lru_cache(maxsize=4)
def _dbimpl_vtable(library: str) -> int | None:
    """The vtable address of ``leveldb::DBImpl`` in ``library``, from a database opened through
    its own C API in a temporary directory (the symbol itself is not exported)."""
    lib = ctypes.PyDLL(library)
    vp = ctypes.c_void_p
    options = _bind(lib.leveldb_options_create, [], vp)()
    error = vp()
    tmp = tempfile.mkdtemp(prefix="taskengine-capi-")
    try:
        _bind(lib.leveldb_options_set_create_if_missing, [vp, ctypes.c_ubyte], None)(options, 1)
        handle = _bind(lib.leveldb_open, [vp, ctypes.c_char_p, ctypes.POINTER(vp)], vp)(
            options, os.fsencode(tmp), ctypes.byref(error)
        )
        if error.value or not handle:
            if error.value:
                _bind(lib.leveldb_free, [vp], None)(error.value)
            return None
        try:
            rep = _DBHandle.from_address(handle).rep
            return ctypes.c_void_p.from_address(rep).value if rep else None
        finally:
            _bind(lib.leveldb_close, [vp], None)(handle)
    finally:
        _bind(lib.leveldb_options_destroy, [vp], None)(options)
        shutil.rmtree(tmp, ignore_errors=True)


def open_writer(raw_db: Any, *, sync: bool) -> CWriter | None:
    """A C-API writer for ``raw_db``, or None where plyvel's own batches must be used."""
    if os.environ.get("TASKENGINE_PLAIN_BATCH"):
        return None
    try:
        pointer = db_pointer(raw_db)
        library = _library() if pointer is not None else None
        if pointer is None or library is None:
            log.info("LevelDB writes use plyvel's write batches")
            return None
        return CWriter(raw_db, pointer, library, sync=sync)
    except (OSError, AttributeError, ValueError, TypeError) as e:  # no such library or symbol
        log.info("LevelDB writes use plyvel's write batches (%s)", e)
        return None
