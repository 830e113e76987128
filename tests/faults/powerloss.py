"""What a disk holds after a power loss, rebuilt from the fault shim's journal (shim.c).

Two models of a file system that lost power at the kill:

- ``ordered`` (ext4 ``data=ordered``-like): every file keeps the bytes it had when it was last
  fsynced; the directory tree is as it was at the last fsync of *any* file or directory (the
  journal commits metadata in order).
- ``strict`` (POSIX): file data as above, but each directory's entries are as they were at the
  last fsync of *that* directory.

Before the run the tree is synced (``os.sync``) and recorded as durable; files unlinked or
renamed over during the run live on as hard links in the keep directory, named by inode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import attrs

MODELS = ("ordered", "strict")

Listing = dict[int, dict[str, tuple[int, bool]]]  # directory inode -> name -> (inode, is_dir)


@attrs.define
class Tree:
    """A directory tree by inode: its listings and its files' sizes."""

    root: int
    listings: Listing
    sizes: dict[int, int]

    @classmethod
    def scan(cls, root: str) -> Tree:
        tree = cls(os.stat(root).st_ino, {}, {})

        def walk(path: str, ino: int) -> None:
            entries = tree.listings.setdefault(ino, {})
            for e in os.scandir(path):
                st = e.stat(follow_symlinks=False)
                entries[e.name] = (st.st_ino, e.is_dir(follow_symlinks=False))
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, st.st_ino)
                else:
                    tree.sizes[st.st_ino] = st.st_size

        walk(root, tree.root)
        return tree


@attrs.define
class Sync:
    """One sync that returned: the inode, its size before the sync, every listing before it."""

    ino: int
    size: int
    is_dir: bool
    listing: Listing


def events(journal: str) -> Iterator[Sync | str]:
    """The journal in order: each successful sync as a ``Sync``, each acknowledgement line as
    its text (``ACK ...``); failed syncs, opens and faults are skipped."""
    block: Sync | None = None
    with open(journal, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            kind = line[:2]
            if kind == "S ":
                _, ino, size, t = line.split(" ")
                block = Sync(int(ino), int(size), t == "d", {})
            elif kind == "D " and block is not None:
                _, dino, ino, t, name = line.split(" ", 4)
                block.listing.setdefault(int(dino), {})[name] = (int(ino), t == "d")
                if t == "d":
                    block.listing.setdefault(int(ino), {})
            elif kind == "E " and block is not None:
                if line == "E 0":
                    yield block
                block = None
            elif kind == "A ":
                yield line[2:]


def durable_state(initial: Tree, journal: str, model: str) -> Tree:
    """The tree a power loss at the end of the journal leaves under ``model``."""
    assert model in MODELS
    listings: Listing = {k: dict(v) for k, v in initial.listings.items()}
    synced = dict(initial.sizes)
    for ev in events(journal):
        if not isinstance(ev, Sync):
            continue
        if not ev.is_dir:
            synced[ev.ino] = max(synced.get(ev.ino, 0), ev.size)
        if model == "ordered":
            listings = {k: dict(v) for k, v in ev.listing.items()}
            listings.setdefault(initial.root, {})
        elif ev.is_dir:
            listings[ev.ino] = dict(ev.listing.get(ev.ino, {}))
    return Tree(initial.root, listings, synced)


def inode_files(*dirs: str) -> dict[int, str]:
    """Every regular file under ``dirs`` by inode: where the bytes of an inode can be read."""
    found: dict[int, str] = {}
    for top in dirs:
        for path, _dirs, files in os.walk(top):
            for name in files:
                p = os.path.join(path, name)
                found.setdefault(os.stat(p).st_ino, p)
    return found


def materialise(state: Tree, sources: dict[int, str], dest: str) -> None:
    """Write ``state`` at ``dest`` (which must not exist): each file cut to its durable length."""

    def build(ino: int, path: str) -> None:
        os.mkdir(path)
        for name, (child, is_dir) in state.listings.get(ino, {}).items():
            target = os.path.join(path, name)
            if is_dir:
                build(child, target)
                continue
            keep = state.sizes.get(child, 0)
            data = b""
            if keep:
                with open(sources[child], "rb") as f:
                    data = f.read(keep)
            with open(target, "wb") as out:
                out.write(data)

    build(state.root, dest)


def power_loss(root: str, keep: str, initial: Tree, journal: str, model: str, dest: str) -> None:
    """Rebuild at ``dest`` what the disk under ``root`` holds after a power loss at the kill."""
    materialise(durable_state(initial, journal, model), inode_files(root, keep), dest)


def unsynced_acks(journal: str, sources: dict[int, str]) -> list[str]:
    """Acknowledgements that left before an fsync covered their record in a LevelDB log.

    A record is found by its execution id's first appearance in any log file the run wrote
    (``sources``: inode -> path, kept ones included); the log's synced length at the ack
    must reach past it."""
    logs: dict[int, bytes] = {}
    for ino, path in sources.items():
        if path.endswith(".log"):
            with open(path, "rb") as f:
                logs[ino] = f.read()
    synced: dict[int, int] = {}
    bad: list[str] = []
    for ev in events(journal):
        if isinstance(ev, Sync):
            if not ev.is_dir:
                synced[ev.ino] = max(synced.get(ev.ino, 0), ev.size)
            continue
        parts = ev.split(" ")
        if parts[0] != "ACK":
            continue
        eid = parts[2].encode()
        where = [(data.find(eid), ino) for ino, data in logs.items() if eid in data]
        if not where:
            bad.append(f"{parts[2]}: in no log file")
            continue
        offset, ino = min(where)
        if synced.get(ino, 0) < offset + len(eid):
            bad.append(f"{parts[2]}: acknowledged with log {ino} synced to {synced.get(ino, 0)}, record at {offset}")
    return bad


def describe(state: Tree) -> dict[str, Any]:
    """A readable form of a state, for assertion messages."""
    return {"listings": state.listings, "sizes": state.sizes}
