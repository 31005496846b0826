"""Loading bpf/net.bpf.c (the network.ebpf source): which programs the kernel accepts, attaching
them to the cgroup v2 root, and typed access to the maps and records (mirror of
bpf/include/heron_net_abi.h).

The kernel variant is chosen per program, in one place: everything is loaded at once when the
kernel accepts it; otherwise each program is tried alone, the state hook falls back from tp_btf
to raw_tp, and the programs the kernel refuses are left out with their reason (``refused``,
shown by ``heron doctor`` and in health messages). Without the essential ones (socket creation,
state changes, ingress and egress counting) loading fails. Everything returned is owned by the
caller's ``LoadedNetObject.close``; cgroup programs are attached through BPF links, so they go
away with the agent even when it is killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from heron.agent.ebpf.abi import Field, Layout
from heron.agent.ebpf.build import object_path, unavailable_reason
from heron.agent.ebpf.libbpf import BpfObject, LibbpfError, num_possible_cpus

log = logging.getLogger(__name__)

OBJECT = "net"
HERON_NET_ABI_VERSION = 2

# Record kinds and flags (heron_net_abi.h).
EV_FLOW_OPEN = 1
EV_FLOW_CLOSE = 2
EV_RELEASE = 3
EV_LISTEN = 4
EV_OWNER = 5
EV_DNS = 6

F_OUT = 0x1
F_IN = 0x2
F_INHERITED = 0x4
F_LISTENER = 0x8
F_UDP_BOUND = 0x10
F_SNAPSHOT = 0x40
F_HAS_FLOW = 0x80
UDP_MAX_PEERS = 256  # past this many, a UDP socket's new peers share one wildcard flow (address 0, port 0)

R_IN = 0x1
R_OPEN = 0x2
R_NO_FLOW = 0x4
R_CUT = 0x8
R_TCP_TOTALS = 0x10

STAT_LOST = 0
STAT_UNOWNED = 1
STAT_FLOWS_FULL = 2
STAT_UNPARSED = 3
STAT_NO_LISTENER = 4
STAT_DNS = 5
STAT_LISTENERS_FULL = 6
STAT_UDP_PEERS_FOLDED = 7
STAT_COUNT = 8
STAT_NAMES = {STAT_LOST: "lost", STAT_UNOWNED: "unowned_packets", STAT_FLOWS_FULL: "flows_full",
              STAT_UNPARSED: "unparsed_packets", STAT_NO_LISTENER: "no_listener", STAT_DNS: "dns_captured",
              STAT_LISTENERS_FULL: "listeners_full", STAT_UDP_PEERS_FOLDED: "udp_peers_folded"}

DNS_MAX = 1024
DNS_PORTS_BYTES = 8192
PROTO_TCP = 6
PROTO_UDP = 17
TCP_LISTEN = 10
UDP_UNCONNECTED = 7  # TCP_CLOSE: an unconnected UDP socket
BPF_ANY = 0
BPF_NOEXIST = 1

EVENTS_MAP = "heron_net_events"
STATS_MAP = "heron_net_stats"
SOCKS_MAP = "heron_net_socks"
FLOWS_MAP = "heron_net_flows"
LISTENERS_MAP = "heron_net_listeners"
DNSPORTS_MAP = "heron_net_dnsports"

# Programs: the state hook has a tp_btf and a raw_tp flavour; the others are one program each.
STATE_BTF = "heron_n_state_b"
STATE_RAW = "heron_n_state_r"
ESSENTIAL = ("heron_n_create", "heron_n_egress", "heron_n_ingress")
OPTIONAL = ("heron_n_release", "heron_n_pbind4", "heron_n_pbind6", "heron_n_send", "heron_n_recv", "heron_n_iter")
CGROUP_PROGRAMS = frozenset({"heron_n_create", "heron_n_egress", "heron_n_ingress", "heron_n_release",
                             "heron_n_pbind4", "heron_n_pbind6"})
ITER_PROGRAM = "heron_n_iter"
ALL_PROGRAMS = (*ESSENTIAL, STATE_BTF, STATE_RAW, *OPTIONAL)
# What each program adds, for doctor and health messages when it is missing.
PURPOSE = {
    "heron_n_release": "UDP flows end only when idle for gc_idle_s; UDP listening sockets are never reported closed",
    "heron_n_pbind4": "UDP listening sockets (IPv4) not reported",
    "heron_n_pbind6": "UDP listening sockets (IPv6) not reported",
    "heron_n_send": "accepted connections stay with the listener's owner",
    "heron_n_recv": "accepted connections stay with the listener's owner",
    "heron_n_iter": "sockets open before the agent started are not attributed (snapshot from /proc missing)",
}


def _layout(name: str, spec: list[tuple[str, str]]) -> Layout:
    fields = []
    offset = 0
    for fname, code in spec:
        size = struct.calcsize("<" + code)
        fields.append(Field(fname, offset, size))
        offset += size
    return Layout(name, struct.Struct("<" + "".join(code for _, code in spec)), tuple(fields))


_HDR = [("kind", "I"), ("flags", "I"), ("ts_boot_ns", "Q")]
_KEY = [("cookie", "Q"), ("raddr", "16s"), ("rport", "H"), ("proto", "B"), ("_pad", "5s")]
_OWNER = [("start_boottime_ns", "Q"), ("tgid", "I"), ("uid", "I"), ("flags", "Q")]
_COUNTERS = [("bytes_out", "Q"), ("bytes_in", "Q"), ("packets_out", "Q"), ("packets_in", "Q"),
             ("first_ns", "Q"), ("last_ns", "Q"), ("tcp_end_out", "I"), ("tcp_fin_out", "I"),
             ("tcp_fin_in", "I"), ("tcp_seen_out", "B"), ("tcp_fins", "B"), ("_pad", "2s")]

OWNER = _layout("heron_net_owner", _OWNER)
FLOW_KEY = _layout("heron_net_flow_key", _KEY)
COUNTERS = _layout("heron_net_counters", _COUNTERS)
LISTEN_KEY = _layout("heron_net_listen_key", [("netns", "I"), ("port", "H"), ("_pad", "H")])
LISTENER = _layout("heron_net_listener", [("cookie", "Q"), ("owner", "24s")])
HDR = _layout("heron_net_hdr", _HDR)
FLOW_OPEN = _layout("heron_net_flow_open", [("hdr", "16s"), ("key", "32s"), ("owner", "24s"), ("laddr", "16s"),
                                            ("lport", "H"), ("_pad", "6s")])
FLOW_CLOSE = _layout("heron_net_flow_close", [("hdr", "16s"), ("key", "32s"), ("counters", "64s"),
                                              ("tcp_bytes_out", "Q"), ("tcp_bytes_in", "Q")])
SOCK_EVENT = _layout("heron_net_sock_event", [("hdr", "16s"), ("cookie", "Q"), ("owner", "24s"), ("addr", "16s"),
                                              ("port", "H"), ("proto", "B"), ("_pad", "5s")])
DNS = _layout("heron_net_dns", [("hdr", "16s"), ("key", "32s"), ("owner", "24s"), ("laddr", "16s"), ("lport", "H"),
                                ("len", "H"), ("tcp_seq", "I"), ("payload_len", "I"), ("_pad", "I"),
                                ("data", f"{DNS_MAX}s")])
ITER_SOCK = _layout("heron_net_iter_sock", [
    ("cookie", "Q"), ("start_boottime_ns", "Q"), ("tgid", "I"), ("uid", "I"), ("netns", "I"), ("family", "H"),
    ("proto", "B"), ("state", "B"), ("lport", "H"), ("rport", "H"), ("_pad", "I"), ("laddr", "16s"),
    ("raddr", "16s"),
])
LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (
    OWNER, FLOW_KEY, COUNTERS, LISTEN_KEY, LISTENER, HDR, FLOW_OPEN, FLOW_CLOSE, SOCK_EVENT, DNS, ITER_SOCK)}

# Flat decoders for the hot path: a whole record in one unpack (nested structs spelled out).
FLOW_OPEN_FLAT = struct.Struct("<IIQ" + "Q16sHB5x" + "QIIQ" + "16sH6x")
FLOW_CLOSE_FLAT = struct.Struct("<IIQ" + "Q16sHB5x" + "QQQQQQ16x" + "QQ")
SOCK_EVENT_FLAT = struct.Struct("<IIQ" + "Q" + "QIIQ" + "16sHB5x")
DNS_FLAT = struct.Struct("<IIQ" + "Q16sHB5x" + "QIIQ" + "16sHHIII")
COUNTERS_FLAT = struct.Struct("<QQQQQQ16x")  # the TCP sequence marks are the kernel's business
CLOSE_HEAD = struct.Struct("<IIQQ")  # kind, flags, ts, cookie of a FLOW_CLOSE record
CLOSE_TOTALS = struct.Struct("<QQ")  # tcp_bytes_out, tcp_bytes_in of a FLOW_CLOSE record
CLOSE_TOTALS_OFFSET = 48 + 64
KEY_SIZE = FLOW_KEY.fmt.size
COUNTERS_SIZE = COUNTERS.fmt.size


def pack_owner(start_boottime_ns: int, tgid: int, uid: int, flags: int) -> bytes:
    return OWNER.fmt.pack(start_boottime_ns, tgid, uid & 0xFFFFFFFF, flags)


def dns_port_bitmap(ports: Iterable[int]) -> bytes:
    bits = bytearray(DNS_PORTS_BYTES)
    for port in ports:
        if 0 < port < 65536:
            bits[port >> 3] |= 1 << (port & 7)
    return bytes(bits)


def cgroup2_root(mounts: str = "/proc/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on a hybrid
    host); None without one. The first cgroup2 mount wins (later ones are usually bind mounts)."""
    try:
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1].replace("\\040", " ")
    except OSError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class IterSock:
    """One socket open in one process at start (from the iterator)."""

    cookie: int
    start_boottime_ns: int
    tgid: int
    uid: int
    netns: int
    family: int
    proto: int
    state: int
    lport: int
    rport: int
    laddr: bytes
    raddr: bytes


def decode_iter(data: bytes) -> list[IterSock]:
    size = ITER_SOCK.fmt.size
    out = []
    for (cookie, start, tgid, uid, netns, family, proto, state, lport, rport, _pad, laddr,
         raddr) in ITER_SOCK.fmt.iter_unpack(data[: len(data) - len(data) % size]):
        out.append(IterSock(cookie, start, tgid, uid, netns, family, proto, state, lport, rport, laddr, raddr))
    return out


@dataclass
class LoadedNetObject:
    obj: BpfObject
    programs: list[str]  # loaded, in attach order
    refused: dict[str, str] = field(default_factory=dict)  # program -> why the kernel refused it
    _stats_fd: int = -1
    _ncpu: int = 0
    _stats_buf: ctypes.Array[ctypes.c_char] | None = None
    _fds: dict[str, int] = field(default_factory=dict)

    def fd(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = self.obj.map_fd(name)
        return fd

    @property
    def state_flavor(self) -> str:
        return "tp_btf" if STATE_BTF in self.programs else "raw_tp"

    def has(self, program: str) -> bool:
        return program in self.programs

    def attach(self, cgroup_path: str) -> None:
        """Attaches every loaded program: cgroup ones to ``cgroup_path`` (the v2 root), tracing
        ones to their tracepoints. The iterator is not attached: ``iterate_sockets`` runs it."""
        cg_fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for prog in self.programs:
                if prog in CGROUP_PROGRAMS:
                    self.obj.attach_cgroup(prog, cg_fd)
                elif prog != ITER_PROGRAM:
                    self.obj.attach(prog)
        finally:
            os.close(cg_fd)

    def events_map(self) -> tuple[int, int]:
        """(fd, size in bytes) of the ring buffer."""
        return self.fd(EVENTS_MAP), self.obj.map_max_entries(EVENTS_MAP)

    def stats(self) -> list[int]:
        """Every heron_net_stats slot, summed over CPUs: STAT_COUNT map lookups."""
        if self._stats_buf is None:
            self._stats_fd = self.fd(STATS_MAP)
            self._ncpu = num_possible_cpus()
            self._stats_buf = ctypes.create_string_buffer(8 * self._ncpu)
        out = []
        for slot in range(STAT_COUNT):
            if not self.obj.map_lookup(self._stats_fd, slot.to_bytes(4, "little"), self._stats_buf):
                out.append(0)
                continue
            raw = self._stats_buf.raw
            out.append(sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 8 * self._ncpu, 8)))
        return out

    def read_flows(self) -> tuple[bytes, bytes, int]:
        """Every flow's key and cumulative counters: (keys, values, count), batched."""
        return self.obj.map_lookup_batch(self.fd(FLOWS_MAP), KEY_SIZE, COUNTERS_SIZE)

    def lookup_flow(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(COUNTERS_SIZE)
        return buf.raw if self.obj.map_lookup(self.fd(FLOWS_MAP), key, buf) else None

    def delete_flows(self, keys: list[bytes]) -> int:
        return self.obj.map_delete_batch(self.fd(FLOWS_MAP), b"".join(keys), KEY_SIZE) if keys else 0

    def owner_of(self, cookie: int) -> bytes | None:
        buf = ctypes.create_string_buffer(OWNER.fmt.size)
        return buf.raw if self.obj.map_lookup(self.fd(SOCKS_MAP), cookie.to_bytes(8, "little"), buf) else None

    def add_socket(self, cookie: int, owner: bytes) -> bool:
        """Registers a socket found at start; a live hook's entry wins (BPF_NOEXIST)."""
        return self.obj.map_update_fd(self.fd(SOCKS_MAP), cookie.to_bytes(8, "little"), owner, BPF_NOEXIST)

    def add_listener(self, netns: int, port: int, cookie: int, owner: bytes) -> bool:
        key = LISTEN_KEY.fmt.pack(netns, port, 0)
        return self.obj.map_update_fd(self.fd(LISTENERS_MAP), key, LISTENER.fmt.pack(cookie, owner), BPF_NOEXIST)

    def set_dns_ports(self, ports: Iterable[int]) -> None:
        self.obj.map_update(DNSPORTS_MAP, b"\0\0\0\0", dns_port_bitmap(ports))

    def iterate_sockets(self) -> list[IterSock]:
        """Every TCP/UDP socket open in any process (all network namespaces), once per process
        that holds it, lowest pid first."""
        if ITER_PROGRAM not in self.programs:
            return []
        return decode_iter(self.obj.read_iter(ITER_PROGRAM))

    def detach(self) -> None:
        self.obj.detach()

    def close(self) -> None:
        self.obj.close()


def _open(path: Path, programs: Iterable[str], sizes: dict[str, int]) -> BpfObject:
    """Opens the object with only ``programs`` set to load, and loads it."""
    wanted = set(programs)
    obj = BpfObject(path)
    try:
        for name, n in sizes.items():
            obj.set_map_max_entries(name, n)
        for prog in ALL_PROGRAMS:
            obj.set_autoload(prog, prog in wanted)
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def load(ring_bytes: int | None = None, max_sockets: int | None = None, max_flows: int | None = None,
         force_raw_tp: bool = False) -> LoadedNetObject:
    """Loads (not attaches) the network programs the kernel accepts. Raises OSError with a
    readable reason when an essential one is refused."""
    path = object_path(OBJECT)
    if path is None:
        raise FileNotFoundError(unavailable_reason(OBJECT))
    sizes = {k: v for k, v in ((EVENTS_MAP, ring_bytes), (SOCKS_MAP, max_sockets), (FLOWS_MAP, max_flows)) if v}
    state = STATE_RAW if force_raw_tp else STATE_BTF
    wanted = [*ESSENTIAL, state, *OPTIONAL]
    refused: dict[str, str] = {}
    if force_raw_tp:
        refused[STATE_BTF] = "raw_tp forced by option"
    try:
        return LoadedNetObject(_open(path, wanted, sizes), wanted, refused)
    except LibbpfError as first:
        log.info("network programs did not load together (%s); trying each", first)
    # One program at a time (with the same map sizes) to find what this kernel refuses.
    chosen: list[str] = []
    for prog in wanted:
        candidates = [prog, STATE_RAW] if prog == STATE_BTF else [prog]
        for cand in candidates:
            try:
                _open(path, [cand], sizes).close()
                chosen.append(cand)
                break
            except LibbpfError as e:
                refused[cand] = str(e)
    missing = [p for p in ESSENTIAL if p not in chosen]
    if not any(p in chosen for p in (STATE_BTF, STATE_RAW)):
        missing.append("inet_sock_set_state (tp_btf and raw_tp)")
    if missing:
        why = "; ".join(f"{p}: {r}" for p, r in refused.items())
        raise OSError(f"kernel refused essential network programs {', '.join(missing)} ({why})")
    return LoadedNetObject(_open(path, chosen, sizes), chosen, refused)


def trial_load() -> tuple[str | None, LoadedNetObjectSummary | None]:
    """Loads and unloads the programs: (None, what loaded) when the kernel accepts the
    essential ones, else (why not, None)."""
    try:
        loaded = load()
    except (OSError, ValueError) as e:
        return str(e), None
    summary = LoadedNetObjectSummary(list(loaded.programs), dict(loaded.refused))
    loaded.close()
    return None, summary


@dataclass(frozen=True)
class LoadedNetObjectSummary:
    programs: list[str]
    refused: dict[str, str]

    def describe(self) -> str:
        """One line for doctor: the programs that loaded, and what is lost with those that did not."""
        text = f"{len(self.programs)} programs ({', '.join(p.removeprefix('heron_n_') for p in self.programs)})"
        text += f", state hook {'tp_btf' if STATE_BTF in self.programs else 'raw_tp'}"
        missing = [p for p in OPTIONAL if p not in self.programs]
        if missing:
            text += "; without " + ", ".join(f"{p} ({PURPOSE.get(p, 'refused')})" for p in missing)
        return text
