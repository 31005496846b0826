"""Per-interval flow aggregation shared by every network collector.

A collector reports what it knows about each socket as cumulative counters (``SocketSample``:
the eBPF maps and sock_diag's tcp_info both count from the socket's birth); this turns them into
deltas and folds them into one ``NetFlow`` per (process, direction, protocol, local address, local
port class, remote address, remote port class) per interval. Ephemeral ports collapse: an
outgoing flow keeps the remote port and drops the local one, an incoming flow the reverse. The
socket table is bounded; past ``max_sockets`` new sockets are counted as dropped, not tracked.
The flows of one interval are bounded too: past ``max_flows``, a socket whose flow is new is
folded into an overflow flow per (process, direction, protocol, local address, local port class)
with remote address 0.0.0.0 and remote port 0, counted in ``folded_sockets`` (many distinct
inbound peers, a scan).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from heron.schema.events import NetFlow, ProcessRef

# remote address, pid -> the name the process (or the host) resolved to that address
NameLookup = Callable[[str, int], "str | None"]
FlowKey = tuple[str, int, str, str, str, int, str, int]
OVERFLOW_ADDR = "0.0.0.0"  # remote address of the flow that holds what max_flows left out


def normalize_addr(addr: str | bytes) -> str:
    """Text form of an IPv4/IPv6 address (4 or 16 raw bytes, or text); IPv4-mapped IPv6 becomes
    IPv4. Raises ValueError on anything else."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def endpoint(addr: str, port: int) -> str:
    """``addr:port``, with IPv6 addresses in brackets."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(slots=True)
class SocketSample:
    """One socket as a collector sees it now; counters are totals since the socket was created."""

    sock_id: int  # unique while the socket lives: a per-flow counter (eBPF) or the inode (user mode)
    pid: int
    protocol: str  # tcp | udp
    direction: str  # out | in
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    bytes_out: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_in: int = 0
    key: str = ""  # process key when the collector knows it (eBPF)
    uid: int = -1
    seen_ns: int = 0  # when the collector observed this state (0: the aggregator's now)


@dataclass(slots=True)
class _Sock:
    flow: FlowKey
    bytes_out: int
    bytes_in: int
    packets_out: int
    packets_in: int


@dataclass(slots=True)
class _Flow:
    pid: int
    key: str
    uid: int
    connections: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_in: int = 0
    first_ns: int = 0
    last_ns: int = 0


class FlowAggregator:
    def __init__(self, interval_s: float, names: NameLookup | None = None, max_sockets: int = 262_144,
                 source: str = "", max_flows: int = 65_536) -> None:
        self.interval_ns = int(interval_s * 1e9)
        self.names = names
        self.max_sockets = max_sockets
        self.max_flows = max_flows
        self.folded_sockets = 0  # sockets counted in an overflow flow (max_flows reached), since start
        self.source = source
        self.sockets: dict[int, _Sock] = {}
        self.flows: dict[FlowKey, _Flow] = {}
        self.dropped_sockets = 0
        self._next_flush_ns = 0

    @staticmethod
    def flow_key(s: SocketSample) -> FlowKey:
        who = s.key or f"pid:{s.pid}"
        if s.direction == "out":
            return (who, s.pid, s.direction, s.protocol, s.local_addr, 0, s.remote_addr, s.remote_port)
        return (who, s.pid, s.direction, s.protocol, s.local_addr, s.local_port, s.remote_addr, 0)

    def observe(self, s: SocketSample, now_ns: int, final: bool = False) -> None:
        """Fold one socket's current totals in (first sight counts one connection). ``final``: the
        socket's exact last totals, which may be smaller than an earlier overcount (then that
        counter adds nothing) instead of a reused id starting again."""
        ts = s.seen_ns or now_ns
        known = self.sockets.get(s.sock_id)
        if known is None:
            if len(self.sockets) >= self.max_sockets:
                self.dropped_sockets += 1
                return
            fk = self.flow_key(s)
            known = _Sock(fk, 0, 0, 0, 0)
            self.sockets[s.sock_id] = known
            new_connection = True
        else:
            new_connection = False
        delta = _final_delta if final else _delta
        d_bo, d_bi = delta(s.bytes_out, known.bytes_out), delta(s.bytes_in, known.bytes_in)
        d_po, d_pi = delta(s.packets_out, known.packets_out), delta(s.packets_in, known.packets_in)
        known.bytes_out, known.bytes_in = s.bytes_out, s.bytes_in
        known.packets_out, known.packets_in = s.packets_out, s.packets_in
        if not new_connection and not (d_bo or d_bi or d_po or d_pi):
            return  # an idle long-lived socket adds no record
        fk = known.flow
        flow = self.flows.get(fk)
        if flow is None:
            if len(self.flows) >= self.max_flows:  # this interval only: the next starts afresh
                who, pid, direction, protocol, laddr, lport, _raddr, _rport = fk
                fk = (who, pid, direction, protocol, laddr, lport, OVERFLOW_ADDR, 0)
                self.folded_sockets += 1
                flow = self.flows.get(fk)
            if flow is None:  # overflow flows may pass max_flows: at most one per local endpoint
                flow = _Flow(s.pid, s.key, s.uid, first_ns=ts)
                self.flows[fk] = flow
        if new_connection:
            flow.connections += 1
        flow.bytes_out += d_bo
        flow.bytes_in += d_bi
        flow.packets_out += d_po
        flow.packets_in += d_pi
        flow.last_ns = max(flow.last_ns, ts)

    def closed(self, sock_id: int) -> None:
        """The socket is gone: its last totals were observed, forget it."""
        self.sockets.pop(sock_id, None)

    def due(self, now_ns: int) -> bool:
        if self._next_flush_ns == 0:
            self._next_flush_ns = now_ns + self.interval_ns
        return now_ns >= self._next_flush_ns

    def flush(self, now_ns: int) -> list[NetFlow]:
        """Every flow with activity since the last flush, as records; the next interval starts."""
        self._next_flush_ns = now_ns + self.interval_ns
        out: list[NetFlow] = []
        for fk, f in self.flows.items():
            _who, pid, direction, protocol, laddr, lport, raddr, rport = fk
            domain = self.names(raddr, pid) if self.names is not None else None
            out.append(NetFlow(
                ts=now_ns, source=self.source,
                process=ProcessRef(key=f.key, pid=pid, uid=f.uid) if pid > 0 else None,
                direction=direction, protocol=protocol, local_addr=laddr, local_port=lport,
                remote_addr=raddr, remote_port=rport, domain=domain, connections=f.connections,
                bytes_out=f.bytes_out, bytes_in=f.bytes_in, packets_out=f.packets_out,
                packets_in=f.packets_in, first_ts=f.first_ns, last_ts=f.last_ns,
            ))
        self.flows = {}
        return out


def _delta(now: int, before: int) -> int:
    # Counters only grow; a smaller total means a reused id: take the new total whole.
    return now - before if now >= before else now


def _final_delta(now: int, before: int) -> int:
    return now - before if now > before else 0
