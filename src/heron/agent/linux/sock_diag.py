"""TCP and UDP sockets from inet_diag (NETLINK_SOCK_DIAG), stdlib only.

One dump per (family, protocol) returns every socket of the netlink socket's network namespace,
all states, with its inode, owner uid, cookie and, for TCP, the ``tcp_info`` counters
(bytes_acked, bytes_received, segs_out, segs_in; kernel 4.2+ for the byte counters, shorter
``tcp_info`` is read as zero). ``find_by_local_port`` asks the kernel to filter by local port
(inet_diag bytecode), so a DNS packet can be tied to its socket within milliseconds.

No policy here. Replies are parsed in place from the receive buffer; a truncated or malformed
message is counted (``DumpResult.malformed``), never raised. Errors the kernel returns for a
request raise ``NetlinkError``; a dump that stops answering raises ``TimeoutError``.
Non-root callers get every socket too (inode and uid included), but cannot map other users'
inodes to processes (that needs their /proc/PID/fd).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
from collections.abc import Container
from dataclasses import dataclass, field

from heron.agent.linux.netlink import (
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NLMSG_HDRLEN,
    NetlinkError,
    NetlinkSocket,
    align,
)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2
INET_DIAG_BC_S_EQ = 11  # local port == op[1].no (kernel 4.16+)
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF

# TCP states as the kernel numbers them (include/net/tcp_states.h).
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12

# struct inet_diag_req_v2 (with its inet_diag_sockid); ports are network order, passed pre-swapped.
_REQ = struct.Struct("=BBBxIHH16s16sIII")
# struct inet_diag_msg: family, state, timer, retrans, sockid (sport, dport, src, dst, if, cookie[2]),
# expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBBHH16s16sIIIIIIII")
_MSG_LEN = _MSG.size  # 72
_RTA = struct.Struct("=HH")
# tcp_info: bytes_acked u64 @120, bytes_received u64 @128, segs_out u32 @136, segs_in u32 @140.
_TCPI = struct.Struct("=QQII")
_TCPI_OFF = 120
_TCPI_END = _TCPI_OFF + _TCPI.size
_BC_OP = struct.Struct("=BBH")
_COOKIE = struct.Struct("=II")
_COOKIE_OFF = 44  # in inet_diag_msg: 4 bytes of family/state/timer/retrans, 40 of sockid before it
_NLMSG_ERROR_CODE = struct.Struct("=i")

DUMP_TIMEOUT_S = 2.0
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


@dataclass(slots=True)
class InetSocket:
    """One socket as inet_diag (or /proc/net/*) reports it. Addresses are text, IPv4-mapped IPv6
    written as IPv4. ``cookie`` is 0 and ``has_info`` False where the reader cannot know them."""

    family: int
    protocol: str  # tcp | udp
    state: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    inode: int
    uid: int
    cookie: int = 0
    bytes_acked: int = 0
    bytes_received: int = 0
    segs_out: int = 0
    segs_in: int = 0
    has_info: bool = False


@dataclass(slots=True)
class DumpResult:
    sockets: list[InetSocket] = field(default_factory=list)
    malformed: int = 0  # messages cut or shorter than their structs: skipped
    skipped: int = 0  # TIME_WAIT sockets the caller already knew (``known_time_wait``)


_addr_cache: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}


def addr_text(family: int, raw: bytes) -> str:
    """inet_diag's 16-byte address field as text; v4-mapped v6 as v4. Cached: few distinct values."""
    cache = _addr_cache[family]
    text = cache.get(raw)
    if text is None:
        if family == socket.AF_INET:
            text = socket.inet_ntop(socket.AF_INET, raw[:4])
        elif raw[:12] == _V4_MAPPED:
            text = socket.inet_ntop(socket.AF_INET, raw[12:16])
        else:
            text = socket.inet_ntop(socket.AF_INET6, raw[:16])
        if len(cache) > 65_536:
            cache.clear()
        cache[raw] = text
    return text


def parse_diag_message(payload: memoryview | bytes, protocol: str) -> InetSocket | None:
    """One SOCK_DIAG_BY_FAMILY reply payload -> InetSocket; None if it is too short."""
    if len(payload) < _MSG_LEN:
        return None
    (family, state, _timer, _retrans, sport, dport, src, dst, _ifindex, c0, c1,
     _expires, _rq, _wq, uid, inode) = _MSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    s = InetSocket(family, protocol, state, addr_text(family, src), socket.ntohs(sport),
                   addr_text(family, dst), socket.ntohs(dport), inode, uid, c0 | (c1 << 32))
    off, end = _MSG_LEN, len(payload)
    while off + _RTA.size <= end:
        rta_len, rta_type = _RTA.unpack_from(payload, off)
        if rta_len < _RTA.size or off + rta_len > end:
            break  # a cut attribute: keep what the fixed part said
        if rta_type & 0x3FFF == INET_DIAG_INFO:
            info_off, info_len = off + _RTA.size, rta_len - _RTA.size
            if info_len >= _TCPI_END:
                s.bytes_acked, s.bytes_received, s.segs_out, s.segs_in = _TCPI.unpack_from(
                    payload, info_off + _TCPI_OFF)
            s.has_info = True
        off += align(rta_len)
    return s


def local_port_filter(port: int) -> bytes:
    """inet_diag bytecode: accept sockets whose local port is ``port``, reject the rest."""
    # op S_EQ: yes -> next op (8 bytes on: the end, accept); no -> 4 past the end (reject).
    return _BC_OP.pack(INET_DIAG_BC_S_EQ, 8, 12) + _BC_OP.pack(0, 0, port & 0xFFFF)


def request(family: int, protocol: int, states: int = ALL_STATES, info: bool = False,
            bytecode: bytes = b"") -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1) if info else 0
    body = _REQ.pack(family, protocol, ext, states, 0, 0, b"", b"", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    if bytecode:
        body += _RTA.pack(_RTA.size + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    return body


_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class SockDiag:
    """A NETLINK_SOCK_DIAG socket: dumps the sockets of the namespace it was opened in.

    ``nl`` may be a socket opened elsewhere (e.g. in another netns, see ``heron.agent.linux.netns``).
    Not thread-safe: one dump at a time.
    """

    def __init__(self, nl: NetlinkSocket | None = None) -> None:
        self.nl = nl if nl is not None else NetlinkSocket(NETLINK_SOCK_DIAG, rcvbuf=4 * 1024 * 1024)

    def fileno(self) -> int:
        return self.nl.fileno()

    def close(self) -> None:
        self.nl.close()

    def dump(self, protocol: str, family: int, states: int = ALL_STATES, info: bool = True,
             bytecode: bytes = b"", out: DumpResult | None = None,
             timeout_s: float = DUMP_TIMEOUT_S, known_time_wait: Container[int] | None = None) -> DumpResult:
        """Every socket of one protocol and family (appended to ``out`` when given).

        ``known_time_wait``: cookies of TIME_WAIT sockets not to parse again (a busy server has
        tens of thousands, each lingering a minute; only the cookie is read to skip one).
        Raises NetlinkError when the kernel refuses the request (e.g. EINVAL for bytecode it
        does not know; ENOENT when the protocol's diag module is absent)."""
        result = out if out is not None else DumpResult()
        req = request(family, _PROTOS[protocol], states, info and protocol == "tcp", bytecode)
        seq = self.nl.send(SOCK_DIAG_BY_FAMILY, req, NLM_F_REQUEST | NLM_F_DUMP)
        self._collect(seq, protocol, result, time.monotonic() + timeout_s, known_time_wait)
        return result

    def dump_all(self, info: bool = True, known_time_wait: Container[int] | None = None) -> DumpResult:
        """TCP and UDP, IPv4 and IPv6: four dumps. A family the kernel lacks (IPv6 off) is skipped."""
        result = DumpResult()
        for protocol in ("tcp", "udp"):
            for family in _FAMILIES:
                try:
                    self.dump(protocol, family, info=info, out=result, known_time_wait=known_time_wait)
                except NetlinkError as e:
                    if family == socket.AF_INET6 or protocol == "udp":
                        continue  # no IPv6 / no udp_diag module: the rest still counts
                    raise e
        return result

    def find_by_local_port(self, protocol: str, port: int, family: int | None = None) -> list[InetSocket]:
        """Sockets bound to local ``port`` (both families unless one is given): one filtered dump
        per family, the kernel walks its tables and returns only the matches."""
        result = DumpResult()
        for fam in (family,) if family is not None else _FAMILIES:
            try:
                self.dump(protocol, fam, info=False, bytecode=local_port_filter(port), out=result)
            except NetlinkError:
                continue
        return result.sockets

    def _collect(self, seq: int, protocol: str, result: DumpResult, deadline: float,
                 known_tw: Container[int] | None) -> None:
        nl = self.nl
        view = memoryview(nl.buf)
        hdr = NLMSG_HDR
        while True:
            n = nl.recv_raw()
            if n == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("sock_diag dump did not finish")
                select.select([nl.sock], [], [], left)
                continue
            off = 0
            while off + NLMSG_HDRLEN <= n:
                length, mtype, _flags, mseq, _pid = hdr.unpack_from(view, off)
                if length < NLMSG_HDRLEN or off + length > n:
                    result.malformed += 1
                    break
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        code = (-_NLMSG_ERROR_CODE.unpack_from(view, off + NLMSG_HDRLEN)[0]
                                if length >= NLMSG_HDRLEN + 4 else errno.EPROTO)
                        if code:
                            raise NetlinkError(code, f"sock_diag: {protocol} dump refused")
                    elif mtype == SOCK_DIAG_BY_FAMILY:
                        if known_tw is not None and length >= NLMSG_HDRLEN + _MSG_LEN \
                                and view[off + NLMSG_HDRLEN + 1] == TCP_TIME_WAIT:
                            c0, c1 = _COOKIE.unpack_from(view, off + NLMSG_HDRLEN + _COOKIE_OFF)
                            if (c0 | (c1 << 32)) in known_tw:
                                result.skipped += 1
                                off += (length + 3) & ~3
                                continue
                        s = parse_diag_message(view[off + NLMSG_HDRLEN : off + length], protocol)
                        if s is None:
                            result.malformed += 1
                        else:
                            result.sockets.append(s)
                off += (length + 3) & ~3
            else:
                if off < n:
                    result.malformed += 1


def payload_bytes(s: InetSocket, active_open: bool) -> tuple[int, int]:
    """(bytes sent and acknowledged, bytes received) without the sequence numbers SYN and FIN
    use: tcp_info counts the opener's SYN once it is acked and each FIN once it is acked
    (ours, seen in FIN_WAIT2) or received (theirs: CLOSE_WAIT, LAST_ACK, CLOSING)."""
    out_adj = (1 if active_open and s.state != TCP_SYN_SENT else 0) + (1 if s.state == TCP_FIN_WAIT2 else 0)
    in_adj = 1 if s.state in (TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING) else 0
    return max(0, s.bytes_acked - out_adj), max(0, s.bytes_received - in_adj)
