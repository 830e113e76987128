"""A node cut off from the database by a network namespace (``stress --nodes N --netns``).

Each node place gets a network namespace of its own joined to the host by a veth pair, and a
``/30`` of ``10.231.0.0/16`` that no interface of the host has yet (its second address in the
namespace, its first on the host), chosen under a lock file: runs at once on one machine (several
test suites) never share a subnet. Two host interfaces with one subnet would send every reply of
the server to one of them: the other place cut off from the start, and a cut of one letting the
other through. Its node processes run in it
(``ip netns exec``) and reach the server at the host's end of their pair. Cutting a node off is
taking the host's end down: its packets are dropped, no connection is reset, the process runs on
(unlike a SIGSTOP, its jobs finish) and can write nothing; bringing the link up again lets its
connections through to a server that has since ended its sessions and, through another node's
reaper, taken its lease. The engine's own TCP settings (a TCP user timeout and keepalives from
its lease, ``taskengine.storage.pg_common.tcp_settings``) make a write stuck on the cut link fail
within half a lease, not when TCP gives up minutes later: the node's URL adds none of its own, so
a cut tests those.

It needs root, ``ip`` (iproute2) and a server that accepts connections on those host addresses
(``listen_addresses`` covering them and a ``pg_hba.conf`` line for ``10.231.0.0/16``: the throwaway
server of ``taskengine.tools.pgserver`` does that when asked, ``netns=True``).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

SUBNET = "10.231.0.0/16"
#: held while a place chooses its subnet and puts its host address on: one chooser at a time
LOCK_FILE = os.path.join(tempfile.gettempdir(), "taskengine-netns.lock")


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here; the message says why."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def check() -> None:
    """Raise NetnsUnavailable unless a namespace and a veth pair can be made here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("no `ip` command (iproute2)")
    probe = Place(0, tag=f"p{os.getpid() % 100000}")
    try:
        probe.create()
    finally:
        probe.remove()


@contextlib.contextmanager
def _choosing() -> Iterator[None]:
    with open(LOCK_FILE, "a", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def _free_subnet() -> ipaddress.IPv4Network:
    """The first /30 of SUBNET none of whose addresses an interface of the host has."""
    done = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip -4 -o addr show: {done.stderr.strip() or done.returncode}")
    used = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.add(ipaddress.IPv4Interface(words[words.index("inet") + 1]).ip)
    for subnet in ipaddress.IPv4Network(SUBNET).subnets(new_prefix=30):
        if not used.intersection(subnet):
            return subnet
    raise NetnsUnavailable(f"every /30 of {SUBNET} is in use on this host")


class Place:
    """The namespace of node place ``slot`` and its veth pair; its addresses are chosen by
    :meth:`create`."""

    def __init__(self, slot: int, tag: str | None = None) -> None:
        self.slot = slot
        tag = tag or f"{os.getpid() % 100000}s{slot}"
        self.ns = f"te{tag}"
        self.host_if = f"te{tag}h"[:15]
        self.node_if = f"te{tag}n"[:15]
        self.host_addr = ""
        self.node_addr = ""
        self.cut_off = False

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        _ip("link", "set", self.node_if, "netns", self.ns)
        with _choosing():  # the host address is on before another run looks
            host, node = list(_free_subnet().hosts())
            self.host_addr, self.node_addr = str(host), str(node)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"{self.node_addr}/30", "dev", self.node_if)
        _ip("-n", self.ns, "link", "set", self.node_if, "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")

    def remove(self) -> None:
        for args in (("link", "del", self.host_if), ("netns", "del", self.ns)):
            subprocess.run(["ip", *args], capture_output=True, timeout=30)

    def prefix(self) -> list[str]:
        """The command prefix that runs a process in the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def url(self, url: str) -> str:
        """``url`` as seen from the namespace: the server at the host's end of the pair."""
        parts = urlsplit(url)
        netloc = parts.netloc
        userinfo, _, hostport = netloc.rpartition("@")
        port = hostport.rsplit(":", 1)[1] if ":" in hostport and not hostport.endswith("]") else ""
        hostport = self.host_addr + (f":{port}" if port else "")
        return urlunsplit((parts.scheme, f"{userinfo}@{hostport}" if userinfo else hostport, parts.path,
                           parts.query, ""))

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")
        self.cut_off = True

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")
        # what the namespace learnt of the host's address while cut off (a neighbour entry that
        # failed) would answer its next connections "no route to host" for a while
        _ip("-n", self.ns, "neigh", "flush", "dev", self.node_if)
        self.cut_off = False


__all__ = ["NetnsUnavailable", "Place", "SUBNET", "check"]
