"""Network flows from inet_diag (NETLINK_SOCK_DIAG) polling: the user-mode rung below eBPF.

Each poll dumps every TCP and UDP socket (IPv4 and IPv6, all states) of every network namespace
in use, through a sock_diag socket opened inside that namespace (``heron.agent.linux.netns``),
with tcp_info for byte and segment counters: four dumps per namespace per poll. Everything else
(attribution, aggregation, listeners, DNS) is the shared engine's, see
``heron.agent.sources.network.usermode`` for what it sees and what it misses: at least 99% of
connections that live longer than one polling interval; shorter ones only when the kernel
still lists them (FIN_WAIT/TIME_WAIT), and no bytes a socket moved after the last poll before
it closed. Byte counts are TCP payload acknowledged by the peer (out) and received (in); UDP
flows count connected sockets only. No conntrack: NATed addresses are not mapped back.

As non-root the dump still works (inode and uid of every socket) but other users' sockets
cannot be mapped to processes (their /proc/PID/fd is closed to us) and other namespaces cannot
be entered (setns needs CAP_SYS_ADMIN): those sockets are reported without a process and counted.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux.netlink import NetlinkSocket
from heron.agent.linux.netns import netlink_in_netns
from heron.agent.linux.sock_diag import NETLINK_SOCK_DIAG, TCP_TIME_WAIT, DumpResult, InetSocket, SockDiag
from heron.agent.linux.sockets import NetnsRef
from heron.agent.sources.base import ProbeResult
from heron.agent.sources.network.usermode import UserModeNetworkSource

RCVBUF = 4 * 1024 * 1024
TIME_WAIT_KEEP_S = 180.0  # the kernel keeps TIME_WAIT 60 s
MAX_TIME_WAIT = 1_000_000


class SockDiagReader:
    """One namespace's sockets through one sock_diag netlink socket.

    A TIME_WAIT socket is parsed once: its cookie is remembered (for longer than the kernel
    keeps it) and later dumps skip it after reading only the cookie.
    """

    def __init__(self, diag: SockDiag) -> None:
        self.diag = diag
        self.time_wait: dict[int, float] = {}  # cookie -> when first seen (monotonic)
        self._next_prune = 0.0

    def read(self) -> DumpResult:
        result = self.diag.dump_all(info=True, known_time_wait=self.time_wait)
        now = time.monotonic()
        tw = self.time_wait
        for s in result.sockets:
            if s.state == TCP_TIME_WAIT and s.cookie:
                tw[s.cookie] = now
        if now >= self._next_prune or len(tw) > MAX_TIME_WAIT:
            self._next_prune = now + TIME_WAIT_KEEP_S / 4
            cutoff = now - TIME_WAIT_KEEP_S
            self.time_wait = {c: t for c, t in tw.items() if t > cutoff}
            if len(self.time_wait) > MAX_TIME_WAIT:
                self.time_wait = {}  # absurd churn: parse them again rather than grow
        return result

    def retarget(self, ref: NetnsRef | None) -> None:
        pass  # the socket stays in its namespace whichever process keeps that alive

    def find_by_local_port(self, protocol: str, port: int, family: int | None = None) -> list[InetSocket]:
        return self.diag.find_by_local_port(protocol, port, family)

    def close(self) -> None:
        self.diag.close()


class SockDiagNetworkSource(UserModeNetworkSource):
    mechanism: ClassVar[str] = "sock_diag"
    counts_bytes: ClassVar[bool] = True

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        try:
            diag = SockDiag(NetlinkSocket(NETLINK_SOCK_DIAG, rcvbuf=256 * 1024))
        except OSError as e:
            return ProbeResult.no(f"cannot open a NETLINK_SOCK_DIAG socket: {e}")
        try:
            diag.dump("tcp", 2, info=True)  # AF_INET
        except (OSError, TimeoutError) as e:
            return ProbeResult.no(f"inet_diag TCP dump failed (inet_diag/tcp_diag module?): {e}")
        finally:
            diag.close()
        note = "polls inet_diag every poll interval: connections shorter than it may be missed"
        if os.geteuid() != 0:
            note += "; not root: other users' sockets cannot be mapped to processes"
        return ProbeResult.yes(note)

    def open_reader(self, ref: NetnsRef | None) -> SockDiagReader:
        if ref is None:
            return SockDiagReader(SockDiag(NetlinkSocket(NETLINK_SOCK_DIAG, rcvbuf=RCVBUF)))
        return SockDiagReader(SockDiag(netlink_in_netns(ref.path, NETLINK_SOCK_DIAG, RCVBUF)))
