from __future__ import annotations

import random
import struct
import time

import pytest

import dnsserver
from heron.agent.linux.dns import (
    MAX_ANSWERS,
    Answer,
    DnsParseError,
    TcpDnsStream,
    parse_message,
    tcp_messages,
)

QNAME_PTR = b"\xc0\x0c"  # pointer to the question name at offset 12


def header(qid: int = 0x1234, flags: int = 0x8180, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def name(text: str) -> bytes:
    return dnsserver.encode_name(text)


def question(qname: bytes, qtype: int = 1) -> bytes:
    return qname + struct.pack("!HH", qtype, 1)


def rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def a_response() -> bytes:
    q = dnsserver.build_query("WWW.Example.COM", "A", qid=7)
    records = {"www.example.com": [("CNAME", "cdn.example.net")],
               "cdn.example.net": [("A", "10.1.2.3"), ("A", "10.1.2.4")]}
    return dnsserver.build_response(q, records, ttl=120)


def samples() -> list[bytes]:
    """Well-formed messages with no authority/additional section (so every cut is an error)."""
    q_a = dnsserver.build_query("host.example.org", "AAAA", qid=1)
    aaaa = dnsserver.build_response(q_a, {"host.example.org": [("AAAA", "fd00::1:2")]})
    # CNAME chain with pointers into earlier names: www.a.com -> b.a.com -> c.b.a.com -> A
    chain = (header(an=3) + question(name("www.a.com"))
             + rr(QNAME_PTR, 5, b"\x01b\xc0\x10")  # b + pointer to "a.com" (offset 16)
             + rr(b"\xc0\x27", 5, b"\x01c\xc0\x27")  # owner: pointer to b.a.com (offset 39)
             + rr(b"\xc0\x37", 1, bytes([192, 0, 2, 9])))  # owner: c.b.a.com (offset 55)
    mx = header(an=1) + question(name("example.com"), 15) + rr(QNAME_PTR, 15, b"\x00\x0a\x04mail\xc0\x0c")
    txt = (header(an=1) + question(name("t.example.com"), 16)
           + rr(QNAME_PTR, 16, b"\x06v=spf1\x08 -all\\\x01\xff"))
    srv = (header(an=1) + question(name("_sip._tcp.example.com"), 33)
           + rr(QNAME_PTR, 33, struct.pack("!HHH", 10, 5, 5060) + name("sip.example.com")))
    nx = header(flags=0x8183) + question(name("nope.example.com"))
    return [a_response(), aaaa, chain, mx, txt, srv, nx, dnsserver.build_query("q.example.com", "MX")]


def test_a_and_cname_from_the_test_server() -> None:
    msg = parse_message(a_response())
    assert msg.id == 7 and msg.is_response and msg.rcode == "NOERROR" and not msg.truncated
    assert msg.questions == [("www.example.com", "A")]
    assert msg.answers == [
        Answer("www.example.com", "CNAME", 120, "cdn.example.net"),
        Answer("cdn.example.net", "A", 120, "10.1.2.3"),
        Answer("cdn.example.net", "A", 120, "10.1.2.4"),
    ]


def test_every_record_kind() -> None:
    _a, aaaa, chain, mx, txt, srv, nx, query = map(parse_message, samples())
    assert aaaa.answers == [Answer("host.example.org", "AAAA", 300, "fd00::1:2")]
    assert aaaa.questions == [("host.example.org", "AAAA")]
    assert [(a.name, a.rtype, a.data) for a in chain.answers] == [
        ("www.a.com", "CNAME", "b.a.com"), ("b.a.com", "CNAME", "c.b.a.com"), ("c.b.a.com", "A", "192.0.2.9")]
    assert mx.answers[0].rtype == "MX" and mx.answers[0].data == "10 mail.example.com"
    assert txt.answers[0].data == "v=spf1 -all\\092\\001\\255"
    assert srv.answers[0].data == "10 5 5060 sip.example.com" and srv.questions == [("_sip._tcp.example.com", "SRV")]
    assert nx.rcode == "NXDOMAIN" and nx.answers == [] and nx.questions == [("nope.example.com", "A")]
    assert not query.is_response and query.questions == [("q.example.com", "MX")] and query.answers == []


def test_unknown_types_rcodes_ttl_and_flags() -> None:
    data = (header(flags=0x8380 | 13, an=2) + question(name("x.example"), 999)
            + rr(QNAME_PTR, 999, b"\xde\xad", ttl=0x80000001) + rr(QNAME_PTR, 2, b"\x00"))
    msg = parse_message(data)
    assert msg.rcode == "RCODE13" and msg.truncated
    assert msg.questions == [("x.example", "TYPE999")]
    assert msg.answers == [Answer("x.example", "TYPE999", 0, "dead"), Answer("x.example", "NS", 300, ".")]


def test_label_bytes_are_escaped_never_trusted() -> None:
    raw = b"\x05A.b\xff \x03Com\x00"
    msg = parse_message(header(qd=1) + raw + b"\x00\x01\x00\x01")
    assert msg.questions == [("a\\.b\\255\\032.com", "A")]
    assert parse_message(header(qd=1) + b"\x00\x00\x01\x00\x01").questions == [(".", "A")]


def test_answers_are_capped() -> None:
    many = header(an=300) + question(name("big.example")) + rr(QNAME_PTR, 1, b"\x0a\x00\x00\x01") * 300
    assert len(parse_message(many).answers) == MAX_ANSWERS


def test_long_txt_is_cut() -> None:
    rdata = b"".join(b"\xff" + b"x" * 255 for _ in range(40))
    msg = parse_message(header(an=1) + question(name("t.example"), 16) + rr(QNAME_PTR, 16, rdata))
    assert len(msg.answers[0].data) == 1024 and msg.answers[0].data.endswith("...")


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (header()[:11], "short header"),
    (header() + b"\xc0\x0c\x00\x01\x00\x01", "pointer to itself"),
    (header() + b"\xc0\x0e\x00\x01\x00\x01", "pointer forward"),
    (header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", "loop through a label"),
    (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "64-byte label"),
    (header() + b"\x80\x00\x00\x01\x00\x01", "reserved label type"),
    (header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "name over 255 bytes"),
    (header(qd=17) + question(name("a")) * 17, "too many questions"),
    (header(an=65535) + question(name("a")) + rr(QNAME_PTR, 1, b"\x01\x02\x03\x04"), "65535 answers claimed"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 1, b"\x01\x02\x03"), "A of 3 bytes"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 28, b"\x01" * 4), "AAAA of 4 bytes"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 5, b"\x01b\x00\x00"), "CNAME with trailing bytes"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 16, b"\x05ab"), "TXT string past its record"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 33, b"\x00\x01"), "short SRV"),
    (header(an=1) + question(name("a")) + rr(QNAME_PTR, 15, b"\x00"), "short MX"),
])
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(DnsParseError):
        parse_message(data)


def pointer_chain(depth: int) -> bytes:
    """Answer 1 (an unknown type) carries ``depth`` pointers in its rdata, each pointing at the one
    before (the first at the root name at offset 12); answer 2's owner points at the last one, so
    reading it takes depth + 1 jumps, every one of them backwards."""
    prefix = header(an=2) + b"\x00\x00\x01\x00\x01"  # question: root name, A
    base = len(prefix) + 1 + 10  # answer 1: root owner, fixed fields, then rdata
    pointers = b"".join(struct.pack("!H", 0xC000 | (12 if i == 0 else base + 2 * (i - 1))) for i in range(depth))
    answer1 = rr(b"\x00", 999, pointers)
    answer2 = rr(struct.pack("!H", 0xC000 | (base + 2 * (depth - 1))), 1, b"\x01\x02\x03\x04")
    return prefix + answer1 + answer2


def test_pointer_chains_are_bounded() -> None:
    assert parse_message(pointer_chain(60)).answers[1] == Answer(".", "A", 300, "1.2.3.4")
    with pytest.raises(DnsParseError, match="too many compression pointers"):
        parse_message(pointer_chain(70))


def test_truncation_at_every_offset() -> None:
    for data in samples():
        parse_message(data)
        for cut in range(len(data)):
            with pytest.raises(DnsParseError):
                parse_message(data[:cut])


def test_random_and_mutated_input_only_raises_parse_errors() -> None:
    rng = random.Random(1234)
    good = samples()
    start = time.monotonic()
    parsed = 0
    for i in range(60_000):
        if i % 3 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
        elif i % 3 == 1:  # plausible header, random body
            data = header(qd=rng.randrange(0, 3), an=rng.randrange(0, 5)) + rng.randbytes(rng.randrange(0, 200))
        else:  # a valid message with a few bytes changed
            data = bytearray(rng.choice(good))
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        try:
            msg = parse_message(data)
        except DnsParseError:
            continue
        parsed += 1
        assert len(msg.answers) <= MAX_ANSWERS
        for qname, _qtype in msg.questions:
            assert qname.isascii() and qname.isprintable()
    assert parsed > 1000  # the mutations reached the deeper paths
    assert time.monotonic() - start < 10


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


def test_tcp_messages_split_at_every_byte() -> None:
    msgs = samples()[:3]
    stream = framed(*msgs)
    for cut in range(len(stream) + 1):
        buf = bytearray()
        buf += stream[:cut]
        got = tcp_messages(buf)
        buf += stream[cut:]
        got += tcp_messages(buf)
        assert got == msgs and not buf
    s = TcpDnsStream()
    got = []
    for b in stream:
        got += s.feed(bytes([b]))
    assert got == msgs and s.pending == 0


def test_tcp_partial_and_empty_messages() -> None:
    buf = bytearray(b"\x00\x00" + b"\x00\x05abc")
    assert tcp_messages(buf) == [] and bytes(buf) == b"\x00\x05abc"  # empty message skipped, partial kept
    buf += b"de\x00"
    assert tcp_messages(buf) == [b"abcde"] and bytes(buf) == b"\x00"
