from __future__ import annotations

import contextlib
import ctypes
import os
import random
import select
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import dnsserver
from heron.agent.linux.dns import parse_message
from heron.agent.linux.packet import (
    MAX_PORTS,
    CapturedDns,
    DnsCapture,
    PacketDecoder,
    TcpReassembler,
    port_filter,
)

DNSSERVER = str(Path(dnsserver.__file__).resolve())
RECORDS = {"www.heron.test": [("CNAME", "cdn.heron.test")], "cdn.heron.test": [("A", "192.0.2.44"),
                                                                              ("AAAA", "2001:db8::44")]}
SYN, FIN, ACK = 0x02, 0x01, 0x10
T = TypeVar("T")


# Filter generation and TCP reassembly (no privileges)


def test_port_filter_bounds() -> None:
    for bad in ([], [0], [70000], list(range(1, MAX_PORTS + 2))):
        with pytest.raises(ValueError):
            port_filter(bad)
    prog = port_filter(list(range(1000, 1000 + MAX_PORTS)))
    assert prog[-2][0] == 0x06 and prog[-1] == (0x06, 0, 0, 0)  # ret #snaplen, ret #0
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _code, jt, jf, _k in prog)


def framed(*messages: bytes) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


MESSAGES = [dnsserver.build_query(f"m{i}.heron.test", "A", qid=i) for i in range(3)]
KEY = ("127.0.0.1", 40000, "127.0.0.1", 53)


@pytest.mark.parametrize("isn", [1000, 0xFFFFFFF0])  # the second wraps the sequence space
def test_tcp_split_at_every_byte(isn: int) -> None:
    stream = framed(*MESSAGES)
    for cut in range(len(stream) + 1):
        r = TcpReassembler()
        got = r.segment(KEY, isn, SYN, b"", 0)
        got += r.segment(KEY, (isn + 1) & 0xFFFFFFFF, ACK, stream[:cut], 1)
        got += r.segment(KEY, (isn + 1 + cut) & 0xFFFFFFFF, ACK, stream[cut:], 2)
        assert got == MESSAGES, cut


def test_tcp_out_of_order_and_retransmitted_segments() -> None:
    stream = framed(*MESSAGES)
    isn = 5000
    chunks = [(isn + 1 + i, stream[i : i + 7]) for i in range(0, len(stream), 7)]
    r = TcpReassembler()
    r.segment(KEY, isn, SYN, b"", 0)
    order = chunks[1:4][::-1] + chunks[:2] + chunks[4:]  # late first chunk, one duplicate
    got: list[bytes] = []
    for seq, data in order:
        got += r.segment(KEY, seq, ACK, data, 1)
    assert got == MESSAGES
    # A retransmission overlapping what was delivered adds only the new bytes.
    r2 = TcpReassembler()
    r2.segment(KEY, isn, SYN, b"", 0)
    assert r2.segment(KEY, isn + 1, ACK, stream[:10], 1) == []
    assert r2.segment(KEY, isn + 1, ACK, stream, 2) == MESSAGES


def test_tcp_gap_loses_the_stream_until_the_next_syn() -> None:
    stream = framed(*MESSAGES)
    r = TcpReassembler()
    r.segment(KEY, 0, SYN, b"", 0)
    for i in range(TcpReassembler.MAX_HELD + 1):  # never fills: byte 1.. missing
        r.segment(KEY, 100 + i * 10, ACK, b"x" * 10, 1)
    assert r.lost == 1
    assert r.segment(KEY, 1, ACK, stream, 2) == []  # the stream is given up
    r.segment(KEY, 7, SYN, b"", 3)
    assert r.segment(KEY, 8, ACK, stream, 4) == MESSAGES


def test_tcp_streams_are_bounded_and_closed() -> None:
    r = TcpReassembler(max_streams=4, idle_s=10)
    for port in range(10):
        r.segment(("10.0.0.1", port, "10.0.0.2", 53), 0, SYN, b"", port)
    assert len(r.streams) == 4 and r.evicted == 6
    r.segment(("10.0.0.1", 9, "10.0.0.2", 53), 1, FIN | ACK, b"", 10)
    assert len(r.streams) == 3
    # Joined mid-stream (no SYN seen): assume the segment starts a message.
    assert r.segment(("10.0.0.9", 1, "10.0.0.2", 53), 777, ACK, framed(MESSAGES[0]), 11) == [MESSAGES[0]]
    r.expire(11 + 10 * 10**9)
    assert not r.streams


def test_tcp_held_bytes_are_bounded_per_stream_and_in_total() -> None:
    # Out-of-order 60 KiB segments (never filled): the third passes 128 KiB and loses the stream.
    r = TcpReassembler()
    r.segment(KEY, 0, SYN, b"", 0)
    big = b"x" * 60_000
    for i in range(3):
        r.segment(KEY, 1000 + i * 70_000, ACK, big, 1)
    assert r.lost == 1 and r.total_bytes == 0
    # Many streams each holding 100 KiB: the total stays under max_total_bytes, the oldest go.
    r = TcpReassembler(max_total_bytes=1_000_000)
    for port in range(40):
        key = ("10.0.0.1", port, "10.0.0.2", 53)
        r.segment(key, 0, SYN, b"", port)
        r.segment(key, 1000, ACK, b"y" * 50_000, port)
        r.segment(key, 60_000, ACK, b"y" * 50_000, port)
        assert r.total_bytes <= 1_000_000
    assert r.evicted_for_memory > 0 and len(r.streams) < 40
    assert r.total_bytes == sum(len(st.buffer) + st.held_bytes for st in r.streams.values())
    # A closed stream gives its bytes back; what is held still reassembles once the gap fills.
    last = ("10.0.0.1", 39, "10.0.0.2", 53)
    assert ("10.0.0.1", 39, "10.0.0.2", 53) in r.streams
    r.segment(last, 1, FIN | ACK, b"", 50)
    assert r.total_bytes == sum(len(st.buffer) + st.held_bytes for st in r.streams.values())
    stream = framed(*MESSAGES)
    r2 = TcpReassembler()
    r2.segment(KEY, 0, SYN, b"", 0)
    assert r2.segment(KEY, 11, ACK, stream[10:], 1) == [] and r2.total_bytes == len(stream) - 10
    assert r2.segment(KEY, 1, ACK, stream[:10], 2) == MESSAGES and r2.total_bytes == 0


def ipv4(proto: int, l4: bytes, src: bytes = b"\x0a\x00\x00\x01", dst: bytes = b"\x0a\x00\x00\x02") -> bytes:
    return struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0) + src + dst + l4


def ipv6(proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02" + l4


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0) + payload


def test_decoder_reads_udp_and_tcp_over_ipv4_and_ipv6() -> None:
    d = PacketDecoder()
    out: list[CapturedDns] = []
    q = MESSAGES[0]
    d.decode(ipv4(17, udp(40000, 53, q)) + b"\0" * 6, True, 1, out)  # Ethernet padding is ignored
    d.decode(ipv6(17, udp(53, 40000, q)), False, 2, out)
    d.decode(ipv4(6, tcp(40001, 53, 99, SYN, b"")), True, 3, out)
    d.decode(ipv4(6, tcp(40001, 53, 100, ACK, framed(q)[:5])), True, 4, out)
    d.decode(ipv4(6, tcp(40001, 53, 105, ACK | FIN, framed(q)[5:])), True, 5, out)
    assert out == [
        CapturedDns("10.0.0.1", 40000, "10.0.0.2", 53, "udp", q, 1, True),
        CapturedDns("::1", 53, "::2", 40000, "udp", q, 2, False),
        CapturedDns("10.0.0.1", 40001, "10.0.0.2", 53, "tcp", q, 5, True),
    ]
    assert d.packets == 5 and d.malformed == 0 and not d.tcp.streams
    frag = bytearray(ipv4(17, udp(40000, 53, q)))
    frag[6] = 0x20  # more fragments
    d.decode(bytes(frag), True, 6, out)
    assert d.fragments == 1 and len(out) == 3


def test_decoder_survives_hostile_packets() -> None:
    rng = random.Random(99)
    d = PacketDecoder()
    good = [ipv4(17, udp(1, 53, MESSAGES[0])), ipv6(17, udp(53, 1, MESSAGES[1])),
            ipv4(6, tcp(2, 53, 7, ACK, framed(*MESSAGES))), ipv6(6, tcp(53, 2, 9, ACK, framed(MESSAGES[2])))]
    out: list[CapturedDns] = []
    start = time.monotonic()
    for pkt in good:
        for cut in range(len(pkt)):
            d.decode(pkt[:cut], False, 0, out)
    for i in range(20_000):
        if i % 2:
            pkt = bytearray(rng.choice(good))
            for _ in range(rng.randrange(1, 4)):
                pkt[rng.randrange(len(pkt))] = rng.getrandbits(8)
            d.decode(bytes(pkt), False, i, out)
        else:
            d.decode(rng.randbytes(rng.randrange(0, 80)), False, i, out)
    assert d.malformed > 10_000 and time.monotonic() - start < 10
    assert all(c.protocol in ("udp", "tcp") and isinstance(c.payload, bytes) for c in out)


# Real capture (root)


def run_query(name: str, port: int, server: str = "127.0.0.1", tcp: bool = False, netns: str | None = None,
              qtype: str = "A") -> list[str]:
    cmd = [sys.executable, DNSSERVER, "query", name, "--server", server, "--port", str(port), "--type", qtype]
    if tcp:
        cmd += ["--tcp", "--split"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20).stdout
    return out.split()


def collect(cap: DnsCapture, until: Callable[[list[CapturedDns]], bool], timeout: float = 5.0,
            linger: float = 0.3) -> list[CapturedDns]:
    """Read until ``until`` holds, then ``linger`` more (a duplicate would show up)."""
    got: list[CapturedDns] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([cap], [], [], 0.05)
        got += cap.read(256)
        if until(got):
            end = time.monotonic() + linger
            while time.monotonic() < end:
                select.select([cap], [], [], 0.05)
                got += cap.read(256)
            break
    return got


def summary(got: list[CapturedDns]) -> Counter[tuple[str, str, bool, tuple[str, ...]]]:
    out: Counter[tuple[str, str, bool, tuple[str, ...]]] = Counter()
    for c in got:
        msg = parse_message(c.payload)
        out[(c.protocol, msg.questions[0][0], msg.is_response, tuple(a.data for a in msg.answers))] += 1
    return out


@pytest.fixture
def server() -> Iterator[dnsserver.DnsServer]:
    with dnsserver.DnsServer(RECORDS) as s:
        yield s


@pytest.mark.privileged
@pytest.mark.parametrize("use_ring", [True, False], ids=["ring", "recv"])
def test_loopback_capture_udp_and_tcp_once_each(server: dnsserver.DnsServer, use_ring: bool) -> None:
    other = dnsserver.DnsServer(RECORDS).start()  # a DNS server on a port we do not capture
    try:
        with DnsCapture([server.port], use_ring=use_ring) as cap:
            assert cap.ring is use_ring
            assert run_query("www.heron.test", server.port) == ["NOERROR", "cdn.heron.test", "192.0.2.44"]
            assert run_query("www.heron.test", server.port, tcp=True) == ["NOERROR", "cdn.heron.test", "192.0.2.44"]
            assert run_query("nx.heron.test", server.port, tcp=True) == ["NXDOMAIN"]
            assert run_query("www.heron.test", other.port) == ["NOERROR", "cdn.heron.test", "192.0.2.44"]
            got = collect(cap, lambda g: len(g) >= 6)
            drops = cap.drops()
    finally:
        other.stop()
    answer = ("cdn.heron.test", "192.0.2.44")
    assert summary(got) == {
        ("udp", "www.heron.test", False, ()): 1, ("udp", "www.heron.test", True, answer): 1,
        ("tcp", "www.heron.test", False, ()): 1, ("tcp", "www.heron.test", True, answer): 1,
        ("tcp", "nx.heron.test", False, ()): 1, ("tcp", "nx.heron.test", True, ()): 1,
    }
    for c in got:
        assert c.src == c.dst == "127.0.0.1" and c.outgoing
        assert server.port in (c.sport, c.dport)
        assert abs(c.ts_ns - time.time_ns()) < 30 * 10**9
    queries = [c for c in got if not parse_message(c.payload).is_response]
    responses = [c for c in got if parse_message(c.payload).is_response]
    assert {(q.sport, q.dport) for q in queries} == {(r.dport, r.sport) for r in responses}
    assert drops == 0


@pytest.mark.privileged
def test_loopback_capture_ipv6() -> None:
    with dnsserver.DnsServer(RECORDS, addr="::1") as srv, DnsCapture([srv.port]) as cap:
        assert run_query("cdn.heron.test", srv.port, server="::1", qtype="AAAA") == ["NOERROR", "2001:db8::44"]
        got = collect(cap, lambda g: len(g) >= 2)
    assert summary(got) == {("udp", "cdn.heron.test", False, ()): 1,
                            ("udp", "cdn.heron.test", True, ("2001:db8::44",)): 1}
    assert {c.src for c in got} == {"::1"}


# Network namespaces

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that entered network namespace ``name`` (and leaves it after)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                result.append(fn())
            finally:
                _libc.setns(own, CLONE_NEWNET)
        except BaseException as e:
            errors.append(e)
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"heron-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.privileged
def test_capture_inside_a_network_namespace_on_port_53() -> None:
    with netns() as ns:
        srv = in_netns(ns, lambda: dnsserver.DnsServer(RECORDS, port=53)).start()
        cap = in_netns(ns, lambda: DnsCapture([53]))
        outside = DnsCapture([53])  # the root namespace must not see the namespace's traffic
        try:
            assert run_query("www.heron.test", 53, netns=ns) == ["NOERROR", "cdn.heron.test", "192.0.2.44"]
            assert run_query("www.heron.test", 53, tcp=True, netns=ns)[0] == "NOERROR"
            got = collect(cap, lambda g: len(g) >= 4)
            seen_outside = collect(outside, lambda g: False, timeout=0.2)
        finally:
            cap.close()
            outside.close()
            srv.stop()
    answer = ("cdn.heron.test", "192.0.2.44")
    assert summary(got) == {
        ("udp", "www.heron.test", False, ()): 1, ("udp", "www.heron.test", True, answer): 1,
        ("tcp", "www.heron.test", False, ()): 1, ("tcp", "www.heron.test", True, answer): 1,
    }
    assert all(53 in (c.sport, c.dport) for c in got)
    assert not any(b"\x05heron\x04test" in c.payload for c in seen_outside)
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
