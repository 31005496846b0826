"""The engine behind the user-mode network rungs (sock_diag, procfs): poll socket tables.

Every ``poll_interval_s`` it reads the TCP and UDP socket table of every network namespace in
use (one dump or one file per table, never one call per socket), and

- attributes each new socket to a process: inode -> pid through an incremental /proc/PID/fd
  scan (``heron.agent.linux.sockets``), only for inodes it does not know yet. A socket whose
  owner cannot be found is counted (``<name>.unattributed``) and reported with no process,
  never with a guessed one. The process is a pid and the socket's uid; the agent's enricher
  fills exe, user and container from its process table;
- feeds per-socket cumulative counters to the ``FlowAggregator`` (sock_diag: tcp_info bytes
  acked / received and segments; procfs and UDP: none, so bytes and packets are 0), which
  emits one NetFlow per flow per ``interval_s``. Direction: a TCP socket whose local port is a
  listening port of its namespace is "in", else "out"; a connected UDP socket whose local port
  is also held by an unconnected (listening) one is "in". Sockets present at the first poll
  count from then: their earlier traffic is not reported;
- reports listening sockets (TCP LISTEN; unconnected UDP sockets on a port outside the
  ephemeral range, or alive for ``UDP_LISTENER_POLLS`` polls) as NetListen open/closed, all
  of them once at start (source ``network.snapshot``);
- when ``dns`` is on, captures DNS on each namespace (``heron.agent.linux.packet``), ties each
  message to its client socket with a targeted lookup by local port made as the packet is read,
  and labels flows with the names processes resolved (``dns_track``).

Limits, plainly: polling sees at least 99% of connections that live longer than one polling
interval; a connection opened and closed between two polls is missed, except the TCP ones the
kernel still lists afterwards (FIN_WAIT, TIME_WAIT: counted in ``<name>.short_lived``; an
incoming one is attributed to the process listening on its port when exactly one does, else
to nobody), and bytes a socket moved after the last poll before it closed are lost. UDP flows
carry connections only (one per connected socket). A DNS client socket that closes before its
packet is read (a stub resolver answering in microseconds) cannot be attributed: the message
is reported with no process (``<name>.dns_unattributed``). NATed addresses are not mapped back
(no conntrack): a container's flow shows the addresses its namespace sees.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from heron.agent.config import NetworkConfig
from heron.agent.host import Host
from heron.agent.linux import sock_diag as sd
from heron.agent.linux.sock_diag import DumpResult, InetSocket
from heron.agent.linux.sockets import NetnsRef, NetnsWatch, SocketOwners, netns_of
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.network.aggregate import FlowAggregator, SocketSample, endpoint
from heron.agent.sources.network.listeners import Listener, ListenerInventory
from heron.schema.events import Event, Process

STOP_CHECK_S = 0.25
UDP_LISTENER_POLLS = 3
DNS_RESOLVES_PER_S = 50  # /proc scans for DNS sockets; past this, messages go unattributed
DNS_RESOLVE_BUDGET = 2_000  # readlinks per DNS socket lookup
NETNS_RETRY_S = 60.0
_SHORT_TCP = frozenset({sd.TCP_FIN_WAIT1, sd.TCP_FIN_WAIT2, sd.TCP_TIME_WAIT, sd.TCP_CLOSE_WAIT,
                        sd.TCP_LAST_ACK, sd.TCP_CLOSING})
_NOT_FLOW_TCP = frozenset({sd.TCP_LISTEN, sd.TCP_NEW_SYN_RECV, sd.TCP_CLOSE})


class SocketReader(Protocol):
    """One namespace's TCP/UDP socket table."""

    def read(self) -> DumpResult: ...

    def find_by_local_port(self, protocol: str, port: int, family: int | None = None) -> list[InetSocket]: ...

    def retarget(self, ref: NetnsRef | None) -> None:
        """The namespace's process ``ref.pid`` changed (readers that go through a pid)."""
        ...

    def close(self) -> None: ...


class Capture(Protocol):
    def fileno(self) -> int: ...

    def read(self, max_packets: int = ...) -> list[Any]: ...

    def drops(self) -> int: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Netns:
    ref: NetnsRef
    index: int
    reader: SocketReader
    capture: Capture | None = None
    listen_tcp: set[int] = field(default_factory=set)
    listen_udp: set[int] = field(default_factory=set)
    # (protocol, port) -> owners of the listeners there, for short-lived incoming connections
    listen_owners: dict[tuple[str, int], set[int]] = field(default_factory=dict)
    capture_drops: int = 0  # the capture's drop total already counted


@dataclass(slots=True)
class _Pending:
    sock: InetSocket
    direction: str


def ephemeral_ports(proc_root: str = "/proc") -> tuple[int, int]:
    try:
        with open(f"{proc_root}/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


class UserModeNetworkSource:
    """Base of the sock_diag and procfs rungs: subclasses say how to read one namespace."""

    capability: ClassVar[str] = "network"
    mechanism: ClassVar[str] = ""
    counts_bytes: ClassVar[bool] = False
    enter_by_pid: ClassVar[bool] = False  # reads a namespace through one of its processes

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        raise NotImplementedError

    # -- subclass hooks ------------------------------------------------------------------

    def open_reader(self, ref: NetnsRef | None) -> SocketReader:
        """A reader of the namespace ``ref`` (None: the agent's own). Raises OSError."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = f"network.{self.mechanism}"
        cfg = ctx.options.get("config")
        self.config: NetworkConfig = cfg if isinstance(cfg, NetworkConfig) else NetworkConfig()
        self.poll_s = max(0.05, float(self.config.poll_interval_s))
        root = ctx.host.proc_root
        self.proc_root = root
        self.owners = SocketOwners(root)
        self.netns_watch = NetnsWatch(root)
        self.names: Any = None
        self.dns: Any = None
        self.aggregator = FlowAggregator(self.config.interval_s, source=self.name)
        self.listeners = ListenerInventory(self.name)
        self.ephemeral = ephemeral_ports(root)
        self.host_ns = netns_of(root, os.getpid()) or 1
        self.namespaces: dict[int, _Netns] = {}
        self.tracked: dict[int, SocketSample] = {}
        self.sock_ns: dict[int, int] = {}  # sock id -> index of its namespace
        self._dropped: set[int] = set()  # namespaces closed since the last poll
        self.base: dict[int, tuple[int, int, int, int]] = {}  # counters at the first poll
        self.pending: dict[int, _Pending] = {}  # sock id -> socket waiting for its owner
        self.asked: dict[int, int] = {}  # inode -> owners.generation() when first asked
        self.given_up: set[int] = set()
        self.closing: set[int] = set()  # sock ids already closing at the first poll
        self.udp_age: dict[tuple[int, str, int, int], int] = {}  # unconnected UDP -> polls seen
        self._udp_seen: dict[tuple[int, str, int, int], int] = {}
        self.live: set[int] = set()
        self._new_pids: list[int] = []
        self._gone_pids: list[int] = []
        self.polls = 0
        self._failed_ns: dict[int, float] = {}
        self._next_index = 1
        self._dns_tokens = float(DNS_RESOLVES_PER_S)
        self._dns_refill = time.monotonic()
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Opens the own namespace's reader and DNS capture (idempotent)."""
        with self._lock:
            if self._started:
                return
            reader = self.open_reader(None)
            own = NetnsRef(self.host_ns, f"{self.proc_root}/self/ns/net", os.getpid())
            self.namespaces[self.host_ns] = _Netns(own, 0, reader)
            self._started = True
            if self.config.dns:
                self._start_dns()
            for counter in ("polls", "unattributed", "short_lived", "malformed", "read_errors",
                            "netns_gone", "netns_unavailable"):
                self.ctx.health.add(f"{self.name}.{counter}", 0)

    def _start_dns(self) -> None:
        try:
            from heron.agent.linux.packet import DnsCapture
            from heron.agent.sources.network.dns_track import DnsTracker, NameCache
        except ImportError as e:  # pragma: no cover - the modules ship together
            self.ctx.health.note(f"{self.name}: DNS capture unavailable: {e}")
            return
        self.names = NameCache(self.config.dns_cache_entries)
        self.dns = DnsTracker(self.names, self.config.interval_s, self.name)
        self.aggregator.names = self.names.lookup
        ns = self.namespaces[self.host_ns]
        try:
            ns.capture = DnsCapture(list(self.config.dns_ports), use_ring=False)
        except (OSError, ValueError) as e:
            self.ctx.health.add(f"{self.name}.dns_unavailable")
            self.ctx.health.note(f"{self.name}: DNS capture unavailable (flows still work): {e}")

    def _open_capture(self, ref: NetnsRef) -> Capture | None:
        if self.dns is None:
            return None
        from heron.agent.linux.netns import call_in_netns
        from heron.agent.linux.packet import DnsCapture

        ports = list(self.config.dns_ports)
        try:
            return call_in_netns(ref.path, lambda: DnsCapture(ports, use_ring=False))
        except (OSError, ValueError, TimeoutError):
            self.ctx.health.add(f"{self.name}.dns_netns_unavailable")
            return None

    def close(self) -> None:
        with self._lock:
            namespaces, self.namespaces = self.namespaces, {}
            self._started = False
        for ns in namespaces.values():
            self._close_ns(ns)

    def _close_ns(self, ns: _Netns) -> None:
        with contextlib.suppress(OSError):
            ns.reader.close()
        if ns.capture is not None:
            with contextlib.suppress(OSError):
                ns.capture.close()
            ns.capture = None

    def snapshot(self) -> list[Process]:
        """Opens everything and reports the listening sockets that exist now."""
        self.start()
        self._poll()
        return []

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            next_poll = time.monotonic() + (self.poll_s if self.polls else 0.0)
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    self._poll()
                    next_poll = max(next_poll + self.poll_s, now)
                timeout = min(max(0.0, next_poll - time.monotonic()), STOP_CHECK_S)
                captures = {ns.capture.fileno(): ns for ns in self.namespaces.values() if ns.capture is not None}
                if captures:
                    try:
                        ready, _, _ = select.select(list(captures), [], [], timeout)
                    except (OSError, ValueError):
                        ready = []
                        stop.wait(timeout)
                    if ready:
                        self._read_dns([captures[fd] for fd in ready])
                else:
                    stop.wait(timeout)
            captures = {ns.capture.fileno(): ns for ns in self.namespaces.values() if ns.capture is not None}
            if captures:
                self._read_dns(list(captures.values()))
            self._poll(final=True)
        finally:
            self.close()

    # -- polling -------------------------------------------------------------------------

    def _poll(self, final: bool = False) -> None:
        now_ns = time.time_ns()
        events: list[Event] = self.poll_once(now_ns)
        if final or self.aggregator.due(now_ns):
            events.extend(self.aggregator.flush(now_ns))
        if self.dns is not None and (final or self.dns.due(now_ns)):
            events.extend(self.dns.flush(now_ns))
            self._dns_counters()
        self._health()
        if events:
            self.ctx.emit(events)

    def poll_once(self, now_ns: int) -> list[Event]:
        """One pass over every namespace's tables: feeds the aggregator, returns listener changes."""
        self.polls += 1
        health = self.ctx.health
        owners = self.owners
        try:
            self._refresh_pids()
            new, gone, self._new_pids, self._gone_pids = self._new_pids, self._gone_pids, [], []
            refs = self.netns_watch.update(list(owners.pids), new, gone)
            self._sync_namespaces(refs)
        except OSError:
            health.add(f"{self.name}.read_errors")
        tables: list[tuple[_Netns, list[InetSocket]]] = []
        live: set[int] = set()
        for ns in list(self.namespaces.values()):
            try:
                result = ns.reader.read()
            except (OSError, TimeoutError):
                health.add(f"{self.name}.read_errors")
                if ns.ref.inode != self.host_ns:
                    self._drop_ns(ns)  # gone (or broken): its sockets close with it
                continue
            if result.malformed:
                health.add(f"{self.name}.malformed", result.malformed)
            tables.append((ns, result.sockets))
            for s in result.sockets:
                if s.inode:
                    live.add(s.inode)
        self.live = live

        seen: set[int] = set()
        wanted: set[int] = set()
        self._udp_seen = {}
        listeners: list[tuple[_Netns, InetSocket]] = []
        for ns, socks in tables:
            self._listening_ports(ns, socks)
            for s in socks:
                if s.protocol == "tcp":
                    if s.state in _NOT_FLOW_TCP:
                        if s.state == sd.TCP_LISTEN:
                            listeners.append((ns, s))
                        continue
                elif s.remote_port == 0:
                    if self._udp_listener(ns, s):
                        listeners.append((ns, s))
                    continue
                self._flow_socket(ns, s, now_ns, seen, wanted)
        self.udp_age = self._udp_seen
        for _ns, s in listeners:
            if s.inode and owners.owner(s.inode) is None and s.inode not in self.given_up:
                wanted.add(s.inode)

        self._attribute(wanted, live, now_ns)
        # Gone from a table read now: closed. (A namespace whose read failed keeps its sockets.)
        read = {ns.index for ns, _socks in tables} | self._dropped
        self._dropped = set()
        sock_ns = self.sock_ns
        for sid in [sid for sid in self.pending if sid not in seen and sock_ns[sid] in read]:
            self._give_up(sid, now_ns)  # closed before its owner was found
        for sid in [sid for sid in self.tracked if sid not in seen and sock_ns[sid] in read]:
            del self.tracked[sid]
            del sock_ns[sid]
            self.base.pop(sid, None)
            self.aggregator.closed(sid)
        owners.prune(live)
        self.given_up &= live
        self.closing &= seen
        for ino in [i for i in self.asked if i not in live]:
            del self.asked[ino]

        current: dict[Listener, int] = {}
        for ns, s in listeners:
            pid = owners.owner(s.inode) if s.inode else None
            if pid is None and s.inode not in self.given_up:
                continue  # owner still being looked for: report it once known
            current[Listener(ns.ref.inode, s.protocol, s.local_addr, s.local_port, pid or 0)] = s.uid
        return list(self.listeners.update(current.items(), now_ns))

    def _refresh_pids(self) -> None:
        """Re-list /proc; the changes wait for the next poll's namespace update."""
        new, gone = self.owners.refresh()
        self._new_pids.extend(new)
        self._gone_pids.extend(gone)

    def _listening_ports(self, ns: _Netns, socks: list[InetSocket]) -> None:
        tcp: set[int] = set()
        udp: set[int] = set()
        owners_at: dict[tuple[str, int], set[int]] = {}
        for s in socks:
            if s.protocol == "tcp":
                if s.state != sd.TCP_LISTEN:
                    continue
                tcp.add(s.local_port)
            elif s.remote_port == 0 and s.local_port:
                udp.add(s.local_port)
            else:
                continue
            pid = self.owners.owner(s.inode) if s.inode else None
            if pid is not None:
                owners_at.setdefault((s.protocol, s.local_port), set()).add(pid)
        ns.listen_tcp, ns.listen_udp, ns.listen_owners = tcp, udp, owners_at

    def _udp_listener(self, ns: _Netns, s: InetSocket) -> bool:
        if not s.local_port:
            return False
        lo, hi = self.ephemeral
        if not lo <= s.local_port <= hi:
            return True
        key = (ns.index, s.local_addr, s.local_port, s.inode)
        age = self.udp_age.get(key, 0) + 1
        self._udp_seen[key] = age
        return age >= UDP_LISTENER_POLLS

    def sock_id(self, ns: _Netns, s: InetSocket) -> int:
        # The cookie names a socket for its whole life (TIME_WAIT included); readers without one
        # use the inode (global).
        return (ns.index << 48) | s.cookie if s.cookie else s.inode

    def _flow_socket(self, ns: _Netns, s: InetSocket, now_ns: int, seen: set[int], wanted: set[int]) -> None:
        sid = self.sock_id(ns, s)
        if not sid:
            return  # a closed socket without cookie (procfs TIME_WAIT): nothing to follow
        seen.add(sid)
        self.sock_ns[sid] = ns.index
        sample = self.tracked.get(sid)
        if sample is not None:
            if sid in self.pending:
                self.pending[sid].sock = s
            else:
                self._update(sid, sample, s, now_ns)
            return
        if s.protocol == "tcp":
            direction = "in" if s.local_port in ns.listen_tcp else "out"
        else:
            direction = "in" if s.local_port in ns.listen_udp else "out"
        if self.polls == 1 and s.has_info:  # existed before we started: count from now on
            bo, bi = sd.payload_bytes(s, direction == "out")
            self.base[sid] = (bo, bi, s.segs_out, s.segs_in)
        if not s.inode:
            if self.polls == 1 or sid in self.closing:
                self.closing.add(sid)  # closed before we started: not ours to report
                return
            # Orphaned or TIME_WAIT before we ever saw it: a connection shorter than a poll.
            self.ctx.health.add(f"{self.name}.short_lived")
            pids = ns.listen_owners.get((s.protocol, s.local_port), set()) if direction == "in" else set()
            pid = next(iter(pids)) if len(pids) == 1 else 0
            if not pid:
                self.ctx.health.add(f"{self.name}.unattributed")
            self._track(sid, s, direction, pid, now_ns)
            return
        owner = self.owners.owner(s.inode)
        if owner is not None:
            self._track(sid, s, direction, owner, now_ns)
            return
        if s.inode in self.given_up:
            self._track(sid, s, direction, 0, now_ns)
            return
        self.pending[sid] = _Pending(s, direction)
        self.tracked[sid] = self._sample(sid, s, direction, 0)  # placeholder until attributed
        wanted.add(s.inode)

    def _attribute(self, wanted: set[int], live: set[int], now_ns: int) -> None:
        if not wanted:
            return
        owners = self.owners
        gen = owners.generation()
        for ino in wanted:
            self.asked.setdefault(ino, gen)
        owners.resolve(wanted, live)
        for ino in wanted:
            if owners.owner(ino) is None and owners.rounds >= self.asked[ino]:
                self.given_up.add(ino)
        for sid, p in list(self.pending.items()):
            pid = owners.owner(p.sock.inode)
            if pid is not None:
                del self.pending[sid]
                self._track(sid, p.sock, p.direction, pid, now_ns)
            elif p.sock.inode in self.given_up:
                self._give_up(sid, now_ns)

    def _give_up(self, sid: int, now_ns: int) -> None:
        p = self.pending.pop(sid)
        self.ctx.health.add(f"{self.name}.unattributed")
        self._track(sid, p.sock, p.direction, 0, now_ns)

    def _sample(self, sid: int, s: InetSocket, direction: str, pid: int) -> SocketSample:
        return SocketSample(sid, pid, s.protocol, direction, s.local_addr, s.local_port, s.remote_addr,
                            s.remote_port, uid=s.uid)

    def _track(self, sid: int, s: InetSocket, direction: str, pid: int, now_ns: int) -> None:
        sample = self._sample(sid, s, direction, pid)
        self.tracked[sid] = sample
        self._update(sid, sample, s, now_ns)

    def _update(self, sid: int, sample: SocketSample, s: InetSocket, now_ns: int) -> None:
        if s.has_info:
            bo, bi = sd.payload_bytes(s, sample.direction == "out")
            po, pi = s.segs_out, s.segs_in
            base = self.base.get(sid)
            if base is not None:
                bo, bi, po, pi = bo - base[0], bi - base[1], po - base[2], pi - base[3]
            sample.bytes_out, sample.bytes_in, sample.packets_out, sample.packets_in = bo, bi, po, pi
        self.aggregator.observe(sample, now_ns)

    # -- namespaces ----------------------------------------------------------------------

    def _sync_namespaces(self, refs: dict[int, NetnsRef]) -> None:
        for ino in [i for i in self.namespaces if i not in refs and i != self.host_ns]:
            self._drop_ns(self.namespaces[ino])
        now = time.monotonic()
        for ino, ref in refs.items():
            known = self.namespaces.get(ino)
            if known is not None:
                if known.ref.pid != ref.pid and ino != self.host_ns:
                    known.ref = ref
                    known.reader.retarget(ref)
                continue
            if self._failed_ns.get(ino, 0.0) > now or (self.enter_by_pid and not ref.pid):
                continue
            try:
                reader = self.open_reader(ref)
            except (FileNotFoundError, ProcessLookupError):
                self.ctx.health.add(f"{self.name}.netns_gone")  # its last process exited meanwhile
                continue
            except (OSError, TimeoutError) as e:
                if ino not in self._failed_ns:
                    self.ctx.health.add(f"{self.name}.netns_unavailable")
                    self.ctx.health.note(f"{self.name}: cannot read network namespace {ino}: {e}")
                self._failed_ns[ino] = now + NETNS_RETRY_S
                continue
            self._failed_ns.pop(ino, None)
            ns = _Netns(ref, self._next_index, reader)
            self._next_index += 1
            ns.capture = self._open_capture(ref)
            self.namespaces[ino] = ns
        for ino in [i for i in self._failed_ns if i not in refs]:
            del self._failed_ns[ino]

    def _drop_ns(self, ns: _Netns) -> None:
        """Its processes are gone: close our sockets there (they would keep it alive)."""
        self.namespaces.pop(ns.ref.inode, None)
        self._dropped.add(ns.index)
        self._close_ns(ns)
        self.ctx.health.add(f"{self.name}.netns_gone")

    # -- DNS -----------------------------------------------------------------------------

    def _read_dns(self, namespaces: list[_Netns]) -> None:
        from heron.agent.linux.dns import DnsParseError, parse_message

        health = self.ctx.health
        batch: list[tuple[int, int, Any, str, str, str, int]] = []
        for ns in namespaces:
            cap = ns.capture
            if cap is None:
                continue
            try:
                packets = cap.read(256)
            except (OSError, ValueError, IndexError, struct.error):
                # A capture that keeps failing would keep select() ready: give it up.
                health.add(f"{self.name}.dns_errors")
                with contextlib.suppress(OSError):
                    cap.close()
                ns.capture = None
                continue
            for p in packets:
                try:
                    msg = parse_message(p.payload)
                except DnsParseError:
                    health.add(f"{self.name}.dns_malformed")
                    continue
                if msg.is_response:
                    client_addr, client_port, server = p.dst, p.dport, endpoint(p.src, p.sport)
                else:
                    client_addr, client_port, server = p.src, p.sport, endpoint(p.dst, p.dport)
                pid, uid = self._dns_owner(ns, p.protocol, client_addr, client_port)
                batch.append((pid, uid, msg, server, p.protocol, endpoint(client_addr, client_port), p.ts_ns))
        # Copies of one message seen in two namespaces (a container's veth seen from the host):
        # the tracker keeps the first copy, so the copy that found its process stands for all.
        best: dict[tuple[str, str, int, bool, str], tuple[int, int]] = {}
        for pid, uid, msg, server, _proto, client, _ts in batch:
            key = (client, server, msg.id, msg.is_response, repr(msg.questions))
            if key not in best or (pid > 0 and best[key][0] <= 0):
                best[key] = (pid, uid)
        for _pid, _uid, msg, server, protocol, client, ts in batch:
            key = (client, server, msg.id, msg.is_response, repr(msg.questions))
            owner = best.pop(key, None)
            if owner is None:
                continue  # a copy already passed on
            pid, uid = owner
            if pid <= 0 and not msg.is_response:
                health.add(f"{self.name}.dns_unattributed")
            self.dns.observe(msg, pid=pid, uid=uid, server=server, protocol=protocol, client=client, now_ns=ts)

    def _dns_owner(self, ns: _Netns, protocol: str, addr: str, port: int) -> tuple[int, int]:
        """The process holding the client socket of a DNS message, found now (it may live only
        milliseconds): (pid, uid), pid 0 when it cannot be found."""
        try:
            # An IPv6 client is an AF_INET6 socket; an IPv4 one may be either (dual-stack).
            socks = ns.reader.find_by_local_port(protocol, port, socket.AF_INET6 if ":" in addr else None)
        except (OSError, TimeoutError):
            return 0, -1
        match = [s for s in socks if s.inode and s.local_addr in (addr, "0.0.0.0", "::")]
        if not match:
            return 0, -1
        s = match[0]
        pid = self.owners.owner(s.inode)
        if pid is None and s.inode not in self.given_up and self._dns_token():
            try:
                self._refresh_pids()  # the asking process may have started since the last poll
            except OSError:
                return 0, s.uid
            found = self.owners.resolve({s.inode}, self.live | {s.inode}, budget=DNS_RESOLVE_BUDGET,
                                        round_robin=False)
            pid = found.get(s.inode)
        return (pid or 0), s.uid

    def _dns_token(self) -> bool:
        now = time.monotonic()
        refill = (now - self._dns_refill) * DNS_RESOLVES_PER_S
        self._dns_tokens = min(float(DNS_RESOLVES_PER_S), self._dns_tokens + refill)
        self._dns_refill = now
        if self._dns_tokens < 1:
            self.ctx.health.add(f"{self.name}.dns_resolve_limited")
            return False
        self._dns_tokens -= 1
        return True

    def _dns_counters(self) -> None:
        health, d = self.ctx.health, self.dns
        for counter in ("queries", "responses", "unmatched", "timeouts", "truncated", "duplicates", "dropped"):
            health.set(f"{self.name}.dns_{counter}", int(getattr(d, counter)))
        for ns in self.namespaces.values():
            if ns.capture is not None:
                with contextlib.suppress(OSError):
                    total = ns.capture.drops()  # since that capture opened
                    health.add(f"{self.name}.dns_capture_drops", total - ns.capture_drops)
                    ns.capture_drops = total

    def _health(self) -> None:
        health, st = self.ctx.health, self.owners.stats
        health.add(f"{self.name}.polls")
        health.set(f"{self.name}.sockets", len(self.tracked))
        health.set(f"{self.name}.netns", len(self.namespaces))
        health.set(f"{self.name}.fd_readlinks", st.readlinks)
        health.set(f"{self.name}.fd_tables_truncated", st.truncated)
        health.set(f"{self.name}.fd_denied_pids", st.denied)
        health.set(f"{self.name}.aggregator_dropped", self.aggregator.dropped_sockets)
        health.set(f"{self.name}.folded_flows", self.aggregator.folded_sockets)
