"""Network flows, listening sockets and DNS from eBPF (bpf/net.bpf.c): the first rung of the
network ladder.

What the kernel does (see the C file's header): cgroup programs on the cgroup v2 root and the
``inet_sock_set_state`` tracepoint attribute every TCP/UDP socket to the process that created,
connected or listened on it (an accepted socket to its listener's owner, then to the first
process that sends or receives on it), and count per (socket, peer) in a BPF hash map. Only a
few records per connection reach the ring buffer: FLOW_OPEN at the first packet, FLOW_CLOSE
with the final counters when a TCP socket reaches CLOSE, RELEASE when a UDP socket closes,
LISTEN open/closed, OWNER, and DNS payloads.

What this does: decodes those records as they come (one batch per poll), reads the counters
map in batches every ``map_read_interval_s`` and before each flow flush, and folds everything
into ``FlowAggregator`` (per ``NetworkConfig.interval_s``); DNS payloads go through
``parse_message`` into ``DnsTracker``, whose ``NameCache`` labels flows with ``domain``. At start
a BPF iterator lists every socket open in every process (all network namespaces): listening ones
are reported once (source ``network.snapshot``) and every one is registered so its later traffic
is attributed. Nothing is read from /proc per event.

Counting: bytes are **L4 payload** bytes (TCP/UDP headers excluded). While a TCP connection
lives, outgoing bytes are counted once per sequence number (a retransmission, keepalive or window
probe adds nothing) and incoming bytes as they arrive (a retransmitted or out-of-window segment
counts again: a mark moved by what a peer sends could be pushed ahead by a forged segment and
hide the real data). When the socket reaches CLOSE, its record carries the kernel's exact totals
(tcp_sock bytes_acked and bytes_received less SYN and FIN): those become the connection's final
totals, so its last interval corrects what the per-packet counts got wrong (an overcount
already reported in an earlier interval stays; a smaller final total adds nothing). A transfer of
N bytes thus ends at exactly N on both ends, as the user-mode collectors' bytes_acked/bytes_received
do. Packets are packets on the wire (GSO segments, retransmissions included). A UDP socket
counts up to 256 peers apart; the kernel folds later ones into one flow with remote address
0.0.0.0 (or ::) and port 0 (``udp_peers_folded``). The handshake
packets a listener answers are not counted (they belong to no connection yet), nor are the last
ACKs of a connection in TIME_WAIT (sent by the kernel's control socket: ``unowned_packets``).

Attribution limits: an accepted connection belongs to the process that called listen() on that
port in that network namespace (the last one, for SO_REUSEPORT groups) until a process sends or
receives on it; sockets passed to another process (fork, SCM_RIGHTS) stay with their creator
unless the other process connects them. A socket that listens without bind() is reported
with port 0. Kernel sockets (NFS, tunnels) are not attributed (``unowned_packets``).

Options (``ctx.options``): ``config`` (NetworkConfig), ``ring_buffer_bytes`` (power of two),
``max_sockets``, ``max_flows`` (map sizes, 65,536 each), ``force_raw_tp`` (bool, tests),
``map_read_interval_s`` (default 5 s, at most the flow interval), ``gc_interval_s`` (60 s) and
``gc_idle_s`` (120 s): how often and after how long idle flow entries are finished.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

from heron.agent.config import NetworkConfig
from heron.agent.ebpf import net_objects as nb
from heron.agent.ebpf.build import unavailable_reason
from heron.agent.ebpf.libbpf import available as libbpf_unavailable
from heron.agent.ebpf.ringbuf import RingBuffer
from heron.agent.host import Host
from heron.agent.linux.dns import DnsParseError, TcpDnsStream, parse_message
from heron.agent.linux.sock_diag import addr_text
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.network.aggregate import FlowAggregator, SocketSample, endpoint
from heron.agent.sources.network.dns_track import DnsTracker, NameCache
from heron.agent.sources.network.listeners import SNAPSHOT_SOURCE
from heron.schema.events import Event, NetListen, Process, ProcessRef, process_key

NAME = "network.ebpf"
POLL_TIMEOUT_S = 0.25
MIN_BATCH_INTERVAL_S = 0.05  # after a drain, let records accumulate: fewer wake-ups, bigger batches
STATS_INTERVAL_S = 1.0
OWNER_HOLD_NS = 300_000_000  # how long an accepted socket waits for its first user to be known
MAP_READ_INTERVAL_S = 5.0
GC_INTERVAL_S = 60.0
# A flow entry idle this long is finished: a UDP peer that went quiet (a server's socket lives on
# while its peers come and go), or a socket whose close record was lost.
GC_IDLE_S = 120.0
MAX_BATCH = 8192
MAX_TCP_DNS_STREAMS = 256  # each holds at most one partial message (64 KiB)
_NS = 1_000_000_000
DECODE_ERRORS = (struct.error, ValueError, IndexError, TypeError, OverflowError)
_PROTO = {nb.PROTO_TCP: "tcp", nb.PROTO_UDP: "udp"}


def boottime_offset_ns() -> int:
    """Wall clock minus CLOCK_BOOTTIME: bpf_ktime_get_boot_ns() + this = wall ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)



def _addr(raw: bytes) -> str:
    """The kernel's 16-byte address (IPv4 as v4-mapped IPv6) as text: the same cached
    conversion sock_diag uses, so both rungs write addresses alike."""
    return addr_text(socket.AF_INET6, raw)

@dataclass(slots=True)
class _FlowState:
    sample: SocketSample  # reused: the aggregator copies what it keeps
    cookie: int
    observed: bool = False
    last_ns: int = -1  # the kernel's last-packet time at the previous read
    hold_until: int = 0  # accepted: not reported before the first user is known, or this time


@dataclass(slots=True)
class _Listening:
    process: ProcessRef | None
    protocol: str
    addr: str
    port: int
    since_ns: int


class _DnsStream:
    __slots__ = ("next_seq", "stream")

    def __init__(self, seq: int) -> None:
        self.stream = TcpDnsStream()
        self.next_seq = seq


class EbpfNetworkSource:
    capability: ClassVar[str] = "network"
    mechanism: ClassVar[str] = "ebpf"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        reason = unavailable_reason(nb.OBJECT) or libbpf_unavailable()
        if reason:
            return ProbeResult.no(reason)
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            return ProbeResult.no("kernel BTF /sys/kernel/btf/vmlinux missing (CONFIG_DEBUG_INFO_BTF)")
        root = nb.cgroup2_root()
        if root is None:
            return ProbeResult.no("no cgroup v2 hierarchy mounted (cgroup_skb programs attach there)")
        reason, summary = nb.trial_load()
        if reason or summary is None:
            return ProbeResult.no(f"kernel refused the network programs: {reason}")
        return ProbeResult.yes(f"cgroup_skb/sock programs on {root}, {summary.describe()}")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = NAME
        opts = ctx.options
        cfg = opts.get("config")
        self.config: NetworkConfig = cfg if isinstance(cfg, NetworkConfig) else NetworkConfig()
        self.boot_id = ctx.host.boot_id
        self.clk_tck = ctx.host.clk_tck
        self.ring_bytes = int(opts["ring_buffer_bytes"]) if opts.get("ring_buffer_bytes") else None
        self.max_sockets = int(opts["max_sockets"]) if opts.get("max_sockets") else None
        self.max_flows = int(opts["max_flows"]) if opts.get("max_flows") else None
        self.force_raw_tp = bool(opts.get("force_raw_tp", False))
        interval = max(self.config.interval_s, 0.1)
        self.read_interval_s = min(float(opts.get("map_read_interval_s", MAP_READ_INTERVAL_S)), interval)
        self.gc_interval_s = float(opts.get("gc_interval_s", GC_INTERVAL_S))
        self.gc_idle_ns = int(float(opts.get("gc_idle_s", GC_IDLE_S)) * _NS)
        self.names = NameCache(self.config.dns_cache_entries)
        self.flows = FlowAggregator(interval, names=self.names.lookup, source=NAME)
        self.dns = DnsTracker(self.names, interval, NAME)
        self.loaded: nb.LoadedNetObject | None = None
        self.cgroup_root = ""
        self._ring: RingBuffer | None = None
        self._offset_ns = 0
        self._lock = threading.Lock()
        self._snapshot: list[Event] = []
        self._flow_state: dict[bytes, _FlowState] = {}  # flow key (as the kernel's) -> state
        self._udp_keys: dict[int, set[bytes]] = {}  # UDP cookie -> its flow keys
        self._await_owner: dict[int, _FlowState] = {}  # accepted, owner not settled (hold order)
        self._listening: dict[int, _Listening] = {}  # cookie -> listening socket
        self._dns_streams: OrderedDict[tuple[int, int], _DnsStream] = OrderedDict()
        self._next_id = 1
        self._kernel_stats = [0] * nb.STAT_COUNT

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Loads and attaches the programs, then lists the sockets that already exist (after
        attaching: a socket created meanwhile is seen by both, none by neither). Idempotent."""
        with self._lock:
            if self.loaded is not None:
                return
            root = nb.cgroup2_root()
            if root is None:
                raise OSError("no cgroup v2 hierarchy mounted")
            loaded = nb.load(self.ring_bytes, self.max_sockets, self.max_flows, self.force_raw_tp)
            try:
                fd, size = loaded.events_map()
                ring = RingBuffer(fd, size)
                try:
                    loaded.set_dns_ports(self.config.dns_ports if self.config.dns else [])
                    self._offset_ns = boottime_offset_ns()
                    loaded.attach(root)
                    self.loaded, self._ring, self.cgroup_root = loaded, ring, root
                    self._snapshot = self._register_existing(loaded)
                except BaseException:
                    self.loaded, self._ring = None, None
                    ring.close()
                    raise
            except BaseException:
                loaded.close()
                raise
            health = self.ctx.health
            for counter in ("received", "lost", "decode_errors", "unowned_packets", "flows_full", "unattributed"):
                health.add(f"{self.name}.{counter}", 0)
            for prog, why in loaded.refused.items():
                health.note(f"{self.name}: program {prog} not loaded ({nb.PURPOSE.get(prog, 'fallback')}): {why}")

    def close(self) -> None:
        """Detaches and unloads everything (idempotent)."""
        with self._lock:
            ring, self._ring = self._ring, None
            loaded, self.loaded = self.loaded, None
        if ring is not None:
            ring.close()
        if loaded is not None:
            loaded.close()

    def snapshot(self) -> list[Process]:
        """Attaches, then reports every listening socket once (source network.snapshot)."""
        self.start()
        events, self._snapshot = self._snapshot, []
        if events:
            self.ctx.emit(events)
        return []

    def run(self, stop: threading.Event) -> None:
        self.start()
        ring = self._ring
        assert ring is not None
        try:
            if self._snapshot:
                self.snapshot()
            now = time.monotonic()
            next_stats, next_read, next_gc = now, now + self.read_interval_s, now + self.gc_interval_s
            while not stop.is_set():
                if ring.wait(POLL_TIMEOUT_S) and self.poll_once():
                    stop.wait(MIN_BATCH_INTERVAL_S)
                now = time.monotonic()
                wall = time.time_ns()
                self.settle_owners(wall)
                if now >= next_read:
                    next_read = now + self.read_interval_s
                    self.read_flows()
                if now >= next_gc:
                    next_gc = now + self.gc_interval_s
                    self.collect_garbage(wall)
                self.flush_due(wall)
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL_S
                    self.read_kernel_stats()
            # Detach so nothing more arrives, drain what the kernel wrote, read the counters of
            # the connections still open, flush everything.
            if self.loaded is not None:
                self.loaded.detach()
            while self.poll_once() >= MAX_BATCH:
                pass
            self.settle_owners(1 << 63)
            self.read_flows()
            self.read_kernel_stats()
            self.flush_due(time.time_ns(), everything=True)
        finally:
            self.close()

    def flush_due(self, now_ns: int, everything: bool = False) -> None:
        out: list[Event] = []
        if everything or self.flows.due(now_ns):
            if not everything:
                self.read_flows()
            out.extend(self.flows.flush(now_ns))
            self.ctx.health.set(f"{self.name}.dropped_sockets", self.flows.dropped_sockets)
            self.ctx.health.set(f"{self.name}.folded_flows", self.flows.folded_sockets)
        if everything or self.dns.due(now_ns):
            out.extend(self.dns.flush(now_ns))
            self._dns_health()
        if out:
            self.ctx.emit(out)

    # -- start-up --------------------------------------------------------------------------

    def _register_existing(self, loaded: nb.LoadedNetObject) -> list[Event]:
        """Registers every socket open now so its traffic is attributed; returns the
        listening ones as snapshot records."""
        socks = loaded.iterate_sockets()
        listening_ports = {(s.netns, s.lport) for s in socks if s.proto == nb.PROTO_TCP and s.state == nb.TCP_LISTEN}
        now = time.time_ns()
        out: list[Event] = []
        seen: set[int] = set()
        for s in socks:
            if s.cookie in seen:
                continue  # shared with a child or another process: the lowest pid holds it
            seen.add(s.cookie)
            udp_listening = s.proto == nb.PROTO_UDP and s.state == nb.UDP_UNCONNECTED and s.lport != 0
            if s.proto == nb.PROTO_TCP:
                if s.state == nb.TCP_LISTEN:
                    flags = nb.F_LISTENER
                else:
                    flags = nb.F_IN if (s.netns, s.lport) in listening_ports else nb.F_OUT
            else:
                flags = nb.F_UDP_BOUND if udp_listening else 0
            owner = nb.pack_owner(s.start_boottime_ns, s.tgid, s.uid, flags | nb.F_SNAPSHOT)
            loaded.add_socket(s.cookie, owner)
            if s.proto == nb.PROTO_TCP and s.state == nb.TCP_LISTEN:
                loaded.add_listener(s.netns, s.lport, s.cookie, owner)
            elif not udp_listening:
                continue
            ref = self._ref(s.tgid, s.start_boottime_ns, s.uid)
            lst = _Listening(ref, _PROTO[s.proto], _addr(s.laddr), s.lport, now)
            self._listening[s.cookie] = lst
            out.append(NetListen(ts=now, source=SNAPSHOT_SOURCE, process=ref, protocol=lst.protocol, addr=lst.addr,
                                 port=lst.port, state="open", since_ts=now))
        self.ctx.health.set(f"{self.name}.snapshot_sockets", len(seen))
        return out

    # -- the hot path ----------------------------------------------------------------------

    def poll_once(self) -> int:
        """Decodes up to MAX_BATCH records; emits the listening-socket changes; returns how many."""
        ring = self._ring
        if ring is None:
            return 0
        out: list[Event] = []
        errors = n = 0
        handlers = {
            nb.EV_FLOW_OPEN: self._on_open,
            nb.EV_FLOW_CLOSE: self._on_close,
            nb.EV_RELEASE: self._on_release,
            nb.EV_LISTEN: self._on_listen,
            nb.EV_OWNER: self._on_owner,
            nb.EV_DNS: self._on_dns,
        }
        now = time.time_ns()
        for rec in ring.records(MAX_BATCH):
            n += 1
            try:
                handler = handlers.get(rec[0])
                if handler is None:
                    errors += 1
                    continue
                handler(rec, out, now)
            except DECODE_ERRORS:
                errors += 1
        if n:
            health = self.ctx.health
            health.add(f"{self.name}.received", n)
            if errors:
                health.add(f"{self.name}.decode_errors", errors)
        if out:
            self.ctx.emit(out)
        return n

    def _key(self, tgid: int, start_boottime_ns: int) -> str:
        return process_key(self.boot_id, tgid, start_boottime_ns * self.clk_tck // _NS)

    def _ref(self, tgid: int, start_boottime_ns: int, uid: int) -> ProcessRef | None:
        if tgid <= 0:
            return None
        return ProcessRef(key=self._key(tgid, start_boottime_ns), pid=tgid, uid=uid)

    def _observe(self, st: _FlowState, now: int) -> None:
        st.observed = True
        if st.sample.pid <= 0:
            self.ctx.health.add(f"{self.name}.unattributed")
        self.flows.observe(st.sample, now)

    def _on_open(self, rec: bytes, out: list[Event], now: int) -> None:
        (_kind, rflags, ts, cookie, raddr, rport, proto, start, tgid, uid, oflags, laddr,
         lport) = nb.FLOW_OPEN_FLAT.unpack_from(rec)
        key = rec[16:48]
        sample = SocketSample(
            sock_id=self._next_id, pid=tgid, protocol=_PROTO.get(proto, "tcp"),
            direction="in" if rflags & nb.R_IN else "out", local_addr=_addr(laddr), local_port=lport,
            remote_addr=_addr(raddr), remote_port=rport, key=self._key(tgid, start) if tgid else "",
            uid=uid if tgid else -1, seen_ns=ts + self._offset_ns,
        )
        self._next_id += 1
        st = _FlowState(sample, cookie)
        self._flow_state[key] = st
        if proto == nb.PROTO_UDP:
            self._udp_keys.setdefault(cookie, set()).add(key)
        if oflags & nb.F_INHERITED:
            # The listener's owner, until a process uses the socket: an OWNER record comes within
            # milliseconds when another process (a worker) reads it; none when the owner does.
            st.hold_until = now + OWNER_HOLD_NS
            self._await_owner[cookie] = st
        else:
            self._observe(st, now)

    def _finish(self, st: _FlowState, counters: bytes | None, now: int,
                totals: tuple[int, int] | None = None) -> None:
        """A flow's last counters: fold them in, forget the socket. ``totals`` (TCP: the kernel's
        exact bytes out, in at CLOSE) replace the per-packet byte counts."""
        s = st.sample
        if counters is not None:
            s.bytes_out, s.bytes_in, s.packets_out, s.packets_in, _first, last = nb.COUNTERS_FLAT.unpack(counters)
            s.seen_ns = last + self._offset_ns
        if totals is not None:
            s.bytes_out, s.bytes_in = totals
        self._await_owner.pop(st.cookie, None)
        st.observed = True
        if s.pid <= 0:
            self.ctx.health.add(f"{self.name}.unattributed")
        self.flows.observe(s, now, final=True)
        self.flows.closed(s.sock_id)

    def _on_close(self, rec: bytes, out: list[Event], now: int) -> None:
        _kind, rflags, _ts, cookie = nb.CLOSE_HEAD.unpack_from(rec)
        key = rec[16:48]
        st = self._flow_state.pop(key, None)
        if self._dns_streams:
            self._dns_streams.pop((cookie, 0), None)
            self._dns_streams.pop((cookie, 1), None)
        if st is None:
            if not rflags & nb.R_NO_FLOW:
                self.ctx.health.add(f"{self.name}.orphan_closes")
            return
        totals = nb.CLOSE_TOTALS.unpack_from(rec, nb.CLOSE_TOTALS_OFFSET) if rflags & nb.R_TCP_TOTALS else None
        self._finish(st, rec[48 : 48 + nb.COUNTERS_SIZE], now, totals)

    def _on_release(self, rec: bytes, out: list[Event], now: int) -> None:
        cookie = nb.SOCK_EVENT_FLAT.unpack_from(rec)[3]
        keys = list(self._udp_keys.pop(cookie, ()))
        loaded = self.loaded
        for key in keys:
            st = self._flow_state.pop(key, None)
            if st is not None:
                self._finish(st, loaded.lookup_flow(key) if loaded is not None else None, now)
        if keys and loaded is not None:
            loaded.delete_flows(keys)
        lst = self._listening.pop(cookie, None)
        if lst is not None:
            out.append(NetListen(ts=now, source=NAME, process=lst.process, protocol=lst.protocol, addr=lst.addr,
                                 port=lst.port, state="closed", since_ts=lst.since_ns))

    def _on_listen(self, rec: bytes, out: list[Event], now: int) -> None:
        (_kind, rflags, ts, cookie, start, tgid, uid, _oflags, addr, port,
         proto) = nb.SOCK_EVENT_FLAT.unpack_from(rec)
        wall = ts + self._offset_ns
        if rflags & nb.R_OPEN:
            lst = _Listening(self._ref(tgid, start, uid), _PROTO.get(proto, "tcp"), _addr(addr), port, wall)
            self._listening[cookie] = lst
            state = "open"
        else:
            known = self._listening.pop(cookie, None)
            lst = known or _Listening(self._ref(tgid, start, uid), _PROTO.get(proto, "tcp"), _addr(addr), port, 0)
            state = "closed"
        out.append(NetListen(ts=wall, source=NAME, process=lst.process, protocol=lst.protocol, addr=lst.addr,
                             port=lst.port, state=state, since_ts=lst.since_ns))

    def _on_owner(self, rec: bytes, out: list[Event], now: int) -> None:
        (_kind, _rflags, _ts, cookie, start, tgid, uid, _oflags, _addr, _port,
         _proto) = nb.SOCK_EVENT_FLAT.unpack_from(rec)
        st = self._await_owner.pop(cookie, None)
        if st is not None and not st.observed:
            s = st.sample
            s.pid, s.key, s.uid = tgid, self._key(tgid, start), uid
            self._observe(st, now)

    def _on_dns(self, rec: bytes, out: list[Event], now: int) -> None:
        (_kind, rflags, ts, cookie, raddr, rport, proto, start, tgid, uid, _oflags, laddr, lport, length, seq,
         _payload_len, _pad) = nb.DNS_FLAT.unpack_from(rec)
        data = rec[nb.DNS_FLAT.size : nb.DNS_FLAT.size + min(length, nb.DNS_MAX)]
        client = endpoint(_addr(laddr), lport)
        server = endpoint(_addr(raddr), rport)
        pid = tgid
        key = self._key(tgid, start) if tgid else ""
        wall = ts + self._offset_ns
        if proto == nb.PROTO_UDP:
            if rflags & nb.R_CUT:
                self._count("dns_cut")
            messages = [data]
            protocol = "udp"
        else:
            messages = self._tcp_dns(cookie, 1 if rflags & nb.R_IN else 0, seq, data, bool(rflags & nb.R_CUT))
            protocol = "tcp"
        for m in messages:
            try:
                msg = parse_message(m)
            except DnsParseError:
                self._count("dns_malformed")
                continue
            if msg.is_response and not rflags & nb.R_IN:
                # A local process sending a "response" to a DNS port: not an answer this host
                # received (it would let any process teach the name cache).
                self._count("dns_egress_responses")
                continue
            self.dns.observe(msg, pid=pid, key=key, uid=uid if tgid else -1, server=server, protocol=protocol,
                             client=client, now_ns=wall)

    def _tcp_dns(self, cookie: int, direction: int, seq: int, data: bytes, cut: bool) -> list[bytes]:
        """DNS over TCP: segments in order into one stream per direction; a gap (a segment
        missed, or cut to DNS_MAX bytes) drops the stream until the connection's next message."""
        sid = (cookie, direction)
        st = self._dns_streams.get(sid)
        if st is None:
            st = _DnsStream(seq)
            self._dns_streams[sid] = st
            if len(self._dns_streams) > MAX_TCP_DNS_STREAMS:
                self._dns_streams.popitem(last=False)
        off = (st.next_seq - seq) & 0xFFFFFFFF
        if off >= 0x80000000:  # the segment starts after what we expect: bytes are missing
            self._count("dns_tcp_gaps")
            st = self._dns_streams[sid] = _DnsStream(seq)
            off = 0
        if off >= len(data):
            return []  # a retransmission of bytes already seen
        st.next_seq = (seq + len(data)) & 0xFFFFFFFF
        if cut:
            self._count("dns_cut")
            del self._dns_streams[sid]
            return []
        try:
            return st.stream.feed(data[off:])
        except ValueError:
            self._count("dns_malformed")
            del self._dns_streams[sid]
            return []

    def settle_owners(self, now_ns: int) -> None:
        """Accepted sockets whose hold ended without an OWNER record stay with the listener's
        owner (the usual case: the process that listens also reads)."""
        waiting = self._await_owner
        while waiting:
            cookie, st = next(iter(waiting.items()))
            if st.hold_until > now_ns:
                break
            del waiting[cookie]
            if not st.observed:
                self._observe(st, now_ns)

    def _count(self, counter: str) -> None:
        self.ctx.health.add(f"{self.name}.{counter}")

    # -- periodic --------------------------------------------------------------------------

    def read_flows(self) -> int:
        """Reads every flow's counters (a few batched syscalls) into the aggregator; idle flows
        cost a comparison. Returns how many entries the map held."""
        loaded = self.loaded
        if loaded is None:
            return 0
        keys, values, n = loaded.read_flows()
        now = time.time_ns()
        state = self._flow_state
        unpack = nb.COUNTERS_FLAT.unpack_from
        ks = nb.KEY_SIZE
        vs = nb.COUNTERS_SIZE
        offset = self._offset_ns
        for i in range(n):
            st = state.get(keys[i * ks : (i + 1) * ks])
            if st is None or (st.hold_until and not st.observed):
                continue
            bo, bi, po, pi, _first, last = unpack(values, i * vs)
            if last == st.last_ns and st.observed:
                continue
            st.last_ns = last
            s = st.sample
            s.bytes_out, s.bytes_in, s.packets_out, s.packets_in = bo, bi, po, pi
            s.seen_ns = last + offset
            self._observe(st, now)
        self.ctx.health.set(f"{self.name}.flows_tracked", n)
        return n

    def collect_garbage(self, now_ns: int) -> int:
        """Flow entries idle for ``gc_idle_s``: UDP peers that went quiet, and flows of sockets
        that are gone (their close record was lost). Their last counters are folded in and the
        entries deleted; a UDP peer that comes back is a new flow."""
        loaded = self.loaded
        if loaded is None:
            return 0
        keys, values, n = loaded.read_flows()
        cutoff = now_ns - self._offset_ns - self.gc_idle_ns
        stale: list[bytes] = []
        ks, vs = nb.KEY_SIZE, nb.COUNTERS_SIZE
        for i in range(n):
            last = nb.COUNTERS_FLAT.unpack_from(values, i * vs)[5]
            if last > cutoff:
                continue
            key = keys[i * ks : (i + 1) * ks]
            cookie = int.from_bytes(key[:8], "little")
            if key[26] != nb.PROTO_UDP and loaded.owner_of(cookie) is not None:
                continue  # an idle but open TCP connection
            st = self._flow_state.pop(key, None)
            if st is not None:
                self._finish(st, values[i * vs : (i + 1) * vs], now_ns)
                udp = self._udp_keys.get(cookie)
                if udp is not None:
                    udp.discard(key)
                    if not udp:
                        del self._udp_keys[cookie]
            stale.append(key)
        if stale:
            loaded.delete_flows(stale)
            self.ctx.health.add(f"{self.name}.gc_flows", len(stale))
        return len(stale)

    def read_kernel_stats(self) -> None:
        loaded = self.loaded
        if loaded is None:
            return
        health = self.ctx.health
        for slot, value in enumerate(loaded.stats()):
            name = nb.STAT_NAMES.get(slot)
            delta = value - self._kernel_stats[slot]
            if name and delta > 0:
                health.add(f"{self.name}.{name}", delta)
                self._kernel_stats[slot] = value

    def _dns_health(self) -> None:
        d = self.dns
        health = self.ctx.health
        for counter, value in (("dns_queries", d.queries), ("dns_responses", d.responses),
                               ("dns_unmatched", d.unmatched), ("dns_timeouts", d.timeouts),
                               ("dns_truncated", d.truncated), ("dns_duplicates", d.duplicates),
                               ("dns_dropped", d.dropped)):
            health.set(f"{self.name}.{counter}", value)
