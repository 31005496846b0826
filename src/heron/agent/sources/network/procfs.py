"""Network flows from /proc/net/{tcp,tcp6,udp,udp6} polling: the last rung of the network ladder.

For each network namespace in use it reads the four tables through one process of that
namespace (/proc/PID/net/...): addresses, ports, state, uid and inode of every socket, and
nothing else. So, plainly: **no byte or packet counters** (flows carry connections only:
bytes_out, bytes_in, packets_out and packets_in are always 0), no socket cookie (a socket is
known by its inode, so a connection is lost from view once its owner closes it: the TIME_WAIT
lines have no inode), and a namespace nobody runs in (/run/netns only) is not read. The rest
(attribution, aggregation, listeners, DNS, what polling misses: at least 99% of connections
that live longer than one polling interval are seen) is the shared engine's, see
``heron.agent.sources.network.usermode``. No conntrack: NATed addresses are not mapped back.
It needs nothing but a readable /proc.
"""

from __future__ import annotations

import os
import socket
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux.sock_diag import DumpResult, InetSocket
from heron.agent.linux.sockets import NetnsRef
from heron.agent.sources.base import ProbeResult
from heron.agent.sources.network.usermode import UserModeNetworkSource

TABLES = (("tcp", "tcp", socket.AF_INET), ("tcp6", "tcp", socket.AF_INET6),
          ("udp", "udp", socket.AF_INET), ("udp6", "udp", socket.AF_INET6))
MAX_TABLE_BYTES = 256 * 1024 * 1024  # a hostile or absurd table is cut here (and counted)

_LITTLE = socket.htonl(1) != 1
_addr_cache: dict[str, str] = {}


def hex_addr(text: str) -> str:
    """/proc/net/* address (hex, 32-bit words in host order) as text; v4-mapped v6 as v4."""
    cached = _addr_cache.get(text)
    if cached is not None:
        return cached
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        out = socket.inet_ntop(socket.AF_INET, raw[::-1] if _LITTLE else raw)
    elif len(raw) == 16:
        if _LITTLE:
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        if raw[:12] == b"\0" * 10 + b"\xff\xff":
            out = socket.inet_ntop(socket.AF_INET, raw[12:])
        else:
            out = socket.inet_ntop(socket.AF_INET6, raw)
    else:
        raise ValueError(f"bad address {text!r}")
    if len(_addr_cache) > 65_536:
        _addr_cache.clear()
    _addr_cache[text] = out
    return out


def parse_table(data: bytes, protocol: str, family: int, out: DumpResult, port: int = 0) -> None:
    """Lines of one /proc/net table into ``out`` (bad lines counted in ``out.malformed``);
    ``port`` keeps only sockets with that local port. Sockets without inode (TIME_WAIT,
    orphaned) are left out: nothing can follow or attribute them here."""
    lines = data.split(b"\n")
    for line in lines[1:]:
        if not line.strip():
            continue
        f = line.split()
        try:
            inode = int(f[9])
            if not inode:
                continue  # TIME_WAIT or orphaned: no owner, no cookie to follow it by
            laddr, lport = f[1].split(b":")
            raddr, rport = f[2].split(b":")
            local_port = int(lport, 16)
            if port and local_port != port:
                continue
            out.sockets.append(InetSocket(
                family, protocol, int(f[3], 16), hex_addr(laddr.decode()), local_port,
                hex_addr(raddr.decode()), int(rport, 16), inode, int(f[7])))
        except (IndexError, ValueError):
            out.malformed += 1


class ProcfsReader:
    """One namespace's tables, read through /proc/PID/net (or the agent's own /proc/net)."""

    def __init__(self, proc_root: str, ref: NetnsRef | None) -> None:
        self.proc_root = proc_root
        self.retarget(ref)

    def retarget(self, ref: NetnsRef | None) -> None:
        self.base = f"{self.proc_root}/net" if ref is None else f"{self.proc_root}/{ref.pid}/net"

    def _read(self, name: str) -> bytes:
        with open(f"{self.base}/{name}", "rb") as f:
            return f.read(MAX_TABLE_BYTES)

    def read(self, port: int = 0, protocols: tuple[str, ...] = ("tcp", "udp"),
             family: int | None = None) -> DumpResult:
        out = DumpResult()
        for name, protocol, fam in TABLES:
            if protocol not in protocols or (family is not None and fam != family):
                continue
            try:
                data = self._read(name)
            except FileNotFoundError:
                if name.endswith("6") and os.path.isdir(self.base):
                    continue  # IPv6 off
                raise
            parse_table(data, protocol, fam, out, port)
        return out

    def find_by_local_port(self, protocol: str, port: int, family: int | None = None) -> list[InetSocket]:
        return self.read(port, (protocol,), family).sockets

    def close(self) -> None:
        pass


class ProcfsNetworkSource(UserModeNetworkSource):
    mechanism: ClassVar[str] = "procfs"
    counts_bytes: ClassVar[bool] = False
    enter_by_pid: ClassVar[bool] = True

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        try:
            with open(f"{host.proc_root}/net/tcp", "rb") as f:
                f.readline()
        except OSError as e:
            return ProbeResult.no(f"{host.proc_root}/net/tcp unreadable: {e}")
        return ProbeResult.yes("polls /proc/net/{tcp,udp}[6]: no byte counters, connections shorter than "
                               "the poll interval may be missed")

    def open_reader(self, ref: NetnsRef | None) -> ProcfsReader:
        reader = ProcfsReader(self.proc_root, ref)
        reader.read(protocols=("tcp",))  # fails now if the process is gone or /proc is closed
        return reader
