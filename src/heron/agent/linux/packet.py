"""User-mode DNS capture: an AF_PACKET socket with a classic BPF port filter (no eBPF needed).

- The socket is ``SOCK_DGRAM`` (cooked) on ETH_P_ALL: the kernel strips the link-layer header,
  so one program reads Ethernet, loopback (ARPHRD_LOOPBACK's 14-byte header of zero MACs), tun
  and wireguard (no header) and offloaded-VLAN frames alike: data starts at the IP header and the
  ethertype comes from skb->protocol (the SKF_AD_PROTOCOL ancillary load).
- The filter is generated here from the port list: IPv4 (not a later fragment) or IPv6 (no
  extension headers), UDP or TCP, source or destination port in ``ports``. Loopback (ifindex 1 in
  every network namespace) carries each packet twice, leaving and arriving: the filter keeps the
  outgoing copy only, so every message is reported once (and ``outgoing`` is True on lo).
- The socket starts with a drop-all filter and is drained before the real filter goes on, so no
  unfiltered packet is ever read.
- Packets arrive through a PACKET_RX_RING (TPACKET_V3: blocks of packets in shared memory, one
  wake-up per block, a block handed over when full or after ``block_timeout_ms``). When the ring
  cannot be set up (or ``use_ring=False``) it reads with recvfrom into a large receive buffer.
  ``drops()`` totals the kernel's PACKET_STATISTICS drops (the kernel resets them on each read).
- TCP: each direction of a connection is reassembled by sequence number (retransmissions
  trimmed, a few out-of-order segments held) and cut into DNS messages by their 2-byte length
  prefix. A gap that does not fill marks the stream lost until its next SYN (``tcp_lost``), and
  so does holding more than ``max_stream_bytes`` (128 KiB: one partial message plus held
  segments). Streams are bounded in number (least recently used evicted) and in the bytes they
  hold together (``max_total_bytes``, 16 MiB: least recently used evicted, ``evicted_for_memory``),
  and forgotten after ``idle_s``.

Not seen: IPv4 fragments after the first (a fragmented UDP answer is counted in ``fragments`` and
skipped), IPv6 extension headers, VLAN/QinQ tags the driver did not offload. Addresses are text
(IPv6 as Python's ``ipaddress`` writes it, the form ``aggregate.normalize_addr`` gives).

Network namespaces: the socket sees the namespace of the thread that creates it (a thread that
entered one with setns may create it; reading it from any thread afterwards is fine). Capturing
every interface of the root namespace sees a container's traffic on its veth, the bridge and the
uplink: copies with the same addresses are folded later by ``DnsTracker``, NATed copies are not.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import mmap
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from heron.agent.linux.dns import tcp_messages

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
LOOPBACK_IFINDEX = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
MAX_PORTS = 32  # keeps every jump of the generated program within cBPF's 8-bit offsets
SNAPLEN = 262_144

# Classic BPF opcodes (linux/filter.h)
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET = 0x00, 0x01, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MSH = 0x00, 0x20, 0x40, 0xA0
BPF_JEQ, BPF_JSET = 0x10, 0x40
BPF_K = 0x00
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("=I")
_TP3_HDR = struct.Struct("=IIIIIIHH")  # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL_PKTTYPE_OFF = 48 + 10  # TPACKET_ALIGN(sizeof(tpacket3_hdr)) + offset of sll_pkttype
_BLOCK_STATUS, _BLOCK_NUM, _BLOCK_FIRST = 8, 12, 16  # offsets in tpacket_block_desc
_TCP_FIN, _TCP_SYN, _TCP_RST = 0x01, 0x02, 0x04
_SEQ_MASK = 0xFFFFFFFF
_HALF = 1 << 31

Insn = tuple[int, int, int, int]  # code, jt, jf, k


@dataclass(frozen=True, slots=True)
class CapturedDns:
    src: str
    sport: int
    dst: str
    dport: int
    protocol: str  # udp | tcp
    payload: bytes  # one whole DNS message (TCP: without its length prefix)
    ts_ns: int  # wall clock, ns
    outgoing: bool  # sent by this host (always True on loopback)


def _ancillary(off: int) -> int:
    return (SKF_AD_OFF + off) & 0xFFFFFFFF


def port_filter(ports: Sequence[int], snaplen: int = SNAPLEN) -> list[Insn]:
    """A cBPF program for cooked packets: UDP/TCP over IPv4/IPv6 to or from one of ``ports``."""
    ports = sorted(set(ports))
    if not ports or len(ports) > MAX_PORTS or not all(0 < p < 65536 for p in ports):
        raise ValueError(f"ports must be 1-{MAX_PORTS} numbers in 1..65535")
    prog: list[tuple[int, str | int, str | int, int] | str] = []

    def op(code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        prog.append((code, jt, jf, k))

    def port_checks(offset: int, indirect: bool, last_miss: str | int) -> None:
        op(BPF_LD | BPF_H | (BPF_IND if indirect else BPF_ABS), offset)
        for i, p in enumerate(ports):
            op(BPF_JMP | BPF_JEQ | BPF_K, p, "accept", last_miss if i == len(ports) - 1 else 0)

    op(BPF_LD | BPF_W | BPF_ABS, _ancillary(SKF_AD_IFINDEX))
    op(BPF_JMP | BPF_JEQ | BPF_K, LOOPBACK_IFINDEX, 0, "proto")
    op(BPF_LD | BPF_W | BPF_ABS, _ancillary(SKF_AD_PKTTYPE))
    op(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, 0, "drop")  # lo: the arriving copy repeats it
    prog.append("proto")
    op(BPF_LD | BPF_H | BPF_ABS, _ancillary(SKF_AD_PROTOCOL))
    op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, "v6")
    op(BPF_LD | BPF_B | BPF_ABS, 9)  # IPv4 protocol
    op(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_UDP, "v4l4", 0)
    op(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_TCP, 0, "drop")
    prog.append("v4l4")
    op(BPF_LD | BPF_H | BPF_ABS, 6)  # flags and fragment offset
    op(BPF_JMP | BPF_JSET | BPF_K, 0x1FFF, "drop", 0)  # a later fragment has no ports
    op(BPF_LDX | BPF_B | BPF_MSH, 0)  # X = IPv4 header length
    port_checks(0, True, 0)
    port_checks(2, True, "drop")
    prog.append("v6")
    op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, "drop")
    op(BPF_LD | BPF_B | BPF_ABS, 6)  # IPv6 next header
    op(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_UDP, "v6l4", 0)
    op(BPF_JMP | BPF_JEQ | BPF_K, socket.IPPROTO_TCP, 0, "drop")
    prog.append("v6l4")
    port_checks(40, False, 0)
    port_checks(42, False, "drop")
    prog.append("accept")
    op(BPF_RET | BPF_K, snaplen)
    prog.append("drop")
    op(BPF_RET | BPF_K, 0)
    return _assemble(prog)


def _assemble(prog: Sequence[tuple[int, str | int, str | int, int] | str]) -> list[Insn]:
    labels: dict[str, int] = {}
    insns: list[tuple[int, str | int, str | int, int]] = []
    for item in prog:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out: list[Insn] = []
    for i, (code, jt, jf, k) in enumerate(insns):
        offs = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= o <= 255 for o in offs):
            raise ValueError("cBPF jump out of range")
        out.append((code, offs[0], offs[1], k))
    return out


def attach_filter(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, the buffer may go afterwards."""
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("@HP", len(insns), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


@dataclass(slots=True)
class _Stream:
    next_seq: int
    buffer: bytearray
    held: dict[int, bytes]
    lost: bool
    last_ns: int
    held_bytes: int = 0  # bytes in held
    size: int = 0  # buffer + held bytes, as counted in TcpReassembler.total_bytes


class TcpReassembler:
    """One direction of many TCP connections -> whole DNS messages (see the module docstring)."""

    MAX_HELD = 16  # out-of-order segments held per stream

    def __init__(self, max_streams: int = 4096, idle_s: float = 60.0, max_stream_bytes: int = 128 * 1024,
                 max_total_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_streams = max_streams
        self.idle_ns = int(idle_s * 1e9)
        self.max_stream_bytes = max_stream_bytes
        self.max_total_bytes = max_total_bytes
        self.streams: OrderedDict[tuple[str, int, str, int], _Stream] = OrderedDict()
        self.total_bytes = 0  # held by every stream (partial messages and out-of-order segments)
        self.lost = 0  # streams given up after a gap, or holding more than max_stream_bytes
        self.evicted = 0
        self.evicted_for_memory = 0  # streams evicted because together they held max_total_bytes

    def segment(self, key: tuple[str, int, str, int], seq: int, flags: int, payload: bytes,
                now_ns: int) -> list[bytes]:
        st = self.streams.get(key)
        if flags & _TCP_SYN:
            seq = (seq + 1) & _SEQ_MASK  # data on a SYN (fast open) starts after it
            if st is not None:
                self.total_bytes -= st.size
            st = _Stream(seq, bytearray(), {}, False, now_ns)
            self._put(key, st)
        elif st is None:
            if not payload or flags & (_TCP_FIN | _TCP_RST):
                return []
            st = _Stream(seq, bytearray(), {}, False, now_ns)  # joined mid-stream: assume a boundary
            self._put(key, st)
        out = self._add(st, seq, payload) if payload and not st.lost else []
        if flags & (_TCP_FIN | _TCP_RST):
            gone = self.streams.pop(key, None)
            if gone is not None:
                self.total_bytes -= gone.size
        else:
            st.last_ns = now_ns
            self.streams.move_to_end(key)
            size = len(st.buffer) + st.held_bytes
            self.total_bytes += size - st.size
            st.size = size
            while self.total_bytes > self.max_total_bytes and len(self.streams) > 1:
                self.total_bytes -= self.streams.popitem(last=False)[1].size
                self.evicted_for_memory += 1
        return out

    def _put(self, key: tuple[str, int, str, int], st: _Stream) -> None:
        self.streams[key] = st
        self.streams.move_to_end(key)
        while len(self.streams) > self.max_streams:
            self.total_bytes -= self.streams.popitem(last=False)[1].size
            self.evicted += 1

    def _add(self, st: _Stream, seq: int, payload: bytes) -> list[bytes]:
        diff = (seq - st.next_seq) & _SEQ_MASK
        if diff >= _HALF:  # starts before what we have: a retransmission, maybe with new bytes
            behind = (1 << 32) - diff
            if behind >= len(payload):
                return []
            payload, diff = payload[behind:], 0
        if diff:
            if len(st.held) >= self.MAX_HELD or (
                    st.held_bytes + len(payload) + len(st.buffer) > self.max_stream_bytes):
                st.lost, st.buffer, st.held, st.held_bytes = True, bytearray(), {}, 0
                self.lost += 1
                return []
            old = st.held.get(seq)
            st.held[seq] = payload
            st.held_bytes += len(payload) - (len(old) if old is not None else 0)
            return []
        st.buffer += payload
        st.next_seq = (st.next_seq + len(payload)) & _SEQ_MASK
        while st.held:
            ready = [s for s in st.held if (s - st.next_seq) & _SEQ_MASK == 0 or (s - st.next_seq) & _SEQ_MASK >= _HALF]
            if not ready:
                break
            for s in ready:
                data = st.held.pop(s)
                st.held_bytes -= len(data)
                d = (s - st.next_seq) & _SEQ_MASK
                behind = 0 if d == 0 else (1 << 32) - d
                if behind < len(data):
                    st.buffer += data[behind:]
                    st.next_seq = (st.next_seq + len(data) - behind) & _SEQ_MASK
        return tcp_messages(st.buffer)

    def expire(self, now_ns: int) -> None:
        cutoff = now_ns - self.idle_ns
        while self.streams:
            key, st = next(iter(self.streams.items()))
            if st.last_ns > cutoff:
                break
            del self.streams[key]
            self.total_bytes -= st.size


def _addr6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


class PacketDecoder:
    """IP packets (from the network header on) -> DNS messages; never raises on bad input."""

    def __init__(self, tcp: TcpReassembler | None = None) -> None:
        self.tcp = tcp if tcp is not None else TcpReassembler()
        self.packets = 0
        self.malformed = 0  # packets the filter passed that do not decode
        self.fragments = 0  # fragmented IPv4 datagrams (skipped)

    def decode(self, pkt: bytes, outgoing: bool, ts_ns: int, out: list[CapturedDns]) -> None:
        self.packets += 1
        n = len(pkt)
        if n < 20:
            self.malformed += 1
            return
        version = pkt[0] >> 4
        if version == 4:
            ihl = (pkt[0] & 0x0F) * 4
            total = _U16.unpack_from(pkt, 2)[0]
            if ihl < 20 or total < ihl or total > n:
                self.malformed += 1
                return
            if _U16.unpack_from(pkt, 6)[0] & 0x3FFF:  # more fragments, or a later one
                self.fragments += 1
                return
            proto, l4, end = pkt[9], ihl, total
            src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        elif version == 6 and n >= 40:
            end = 40 + _U16.unpack_from(pkt, 4)[0]
            if end > n or end == 40:
                self.malformed += 1
                return
            proto, l4 = pkt[6], 40
            src, dst = _addr6(pkt[8:24]), _addr6(pkt[24:40])
        else:
            self.malformed += 1
            return
        if proto == socket.IPPROTO_UDP:
            if l4 + 8 > end:
                self.malformed += 1
                return
            sport, dport, ulen = struct.unpack_from("!HHH", pkt, l4)
            if ulen < 8 or l4 + ulen > end:
                self.malformed += 1
                return
            if ulen > 8:
                out.append(CapturedDns(src, sport, dst, dport, "udp", pkt[l4 + 8 : l4 + ulen], ts_ns, outgoing))
            return
        if proto != socket.IPPROTO_TCP or l4 + 20 > end:
            self.malformed += 1
            return
        sport, dport, seq = struct.unpack_from("!HHI", pkt, l4)
        doff = (pkt[l4 + 12] >> 4) * 4
        flags = pkt[l4 + 13]
        if doff < 20 or l4 + doff > end:
            self.malformed += 1
            return
        for msg in self.tcp.segment((src, sport, dst, dport), seq, flags, pkt[l4 + doff : end], ts_ns):
            out.append(CapturedDns(src, sport, dst, dport, "tcp", msg, ts_ns, outgoing))


class DnsCapture:
    def __init__(self, ports: list[int], ifindex: int = 0, *, use_ring: bool = True, block_size: int = 1 << 18,
                 block_count: int = 16, block_timeout_ms: int = 50, rcvbuf: int = 8 << 20) -> None:
        program = port_filter(ports)
        self.ports = sorted(set(ports))
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self._ring: mmap.mmap | None = None
        try:
            attach_filter(self.sock, [(BPF_RET | BPF_K, 0, 0, 0)])  # nothing until the real filter
            if ifindex:
                self.sock.bind((socket.if_indextoname(ifindex), ETH_P_ALL))
            self.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # what slipped in before the drop-all filter
                    self.sock.recv(1)
            attach_filter(self.sock, program)
            if use_ring:
                self._setup_ring(block_size, block_count, block_timeout_ms)
            if self._ring is None:
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except OSError:
                    self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except BaseException:
            self.close()
            raise
        self._block = 0
        self._block_off = 0  # next packet in the current block, 0: block not started
        self._block_left = 0
        self._recv_buf = bytearray(SNAPLEN)
        self.decoder = PacketDecoder()  # its counters: packets, malformed, fragments, tcp.lost
        self._drops = 0
        self._next_expire_ns = 0
        self.cut = 0  # packets the ring truncated (larger than a block)

    def _setup_ring(self, block_size: int, block_count: int, timeout_ms: int) -> None:
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048
            req = struct.pack("=7I", block_size, block_count, frame, block_size * block_count // frame,
                              timeout_ms, 0, 0)  # tpacket_req3
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        except OSError:
            return
        try:
            self._ring = mmap.mmap(self.sock.fileno(), block_size * block_count, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:  # a ring nobody maps would swallow every packet: take it down again
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(28))
            return
        self.block_size, self.block_count = block_size, block_count

    @property
    def ring(self) -> bool:
        return self._ring is not None

    def fileno(self) -> int:
        return self.sock.fileno()

    def __enter__(self) -> DnsCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, max_packets: int = 1024) -> list[CapturedDns]:
        """Reads what is ready (never blocks), at most ``max_packets`` packets; returns the DNS
        messages they hold or complete."""
        out: list[CapturedDns] = []
        now = time.time_ns()
        if self._ring is not None:
            self._read_ring(max_packets, out)
        else:
            self._read_socket(max_packets, out, now)
        if now >= self._next_expire_ns:
            self.decoder.tcp.expire(now)
            self._next_expire_ns = now + 1_000_000_000
        return out

    def _read_ring(self, max_packets: int, out: list[CapturedDns]) -> None:
        ring = self._ring
        assert ring is not None
        seen = 0
        while seen < max_packets:
            base = self._block * self.block_size
            if not self._block_off:
                if not _U32.unpack_from(ring, base + _BLOCK_STATUS)[0] & TP_STATUS_USER:
                    return
                self._block_left = _U32.unpack_from(ring, base + _BLOCK_NUM)[0]
                self._block_off = base + _U32.unpack_from(ring, base + _BLOCK_FIRST)[0]
            while self._block_left and seen < max_packets:
                off = self._block_off
                next_off, sec, nsec, snaplen, length, _status, _mac, net = _TP3_HDR.unpack_from(ring, off)
                if snaplen < length:
                    self.cut += 1
                start = off + net
                end = min(start + snaplen, base + self.block_size)
                self.decoder.decode(ring[start:end], ring[off + _SLL_PKTTYPE_OFF] == PACKET_OUTGOING,
                             sec * 1_000_000_000 + nsec, out)
                seen += 1
                self._block_left -= 1
                self._block_off = off + next_off
            if self._block_left:
                return  # max_packets reached inside this block: resume here next time
            _U32.pack_into(ring, base + _BLOCK_STATUS, TP_STATUS_KERNEL)  # hand the block back
            self._block_off = 0
            self._block = (self._block + 1) % self.block_count

    def _read_socket(self, max_packets: int, out: list[CapturedDns], now: int) -> None:
        buf = self._recv_buf
        view = memoryview(buf)
        for _ in range(max_packets):
            try:
                n, addr = self.sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            self.decoder.decode(bytes(view[:n]), addr[2] == PACKET_OUTGOING, now, out)

    def drops(self) -> int:
        """Packets the kernel dropped for this socket since it was opened (ring or queue full)."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return self._drops
        self._drops += struct.unpack_from("=II", raw)[1]
        return self._drops

    def close(self) -> None:
        if self._ring is not None:
            with contextlib.suppress(BufferError):
                self._ring.close()
            self._ring = None
        self.sock.close()
