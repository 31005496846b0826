"""DNS wire format (RFC 1035) for untrusted input: messages in, plain values out.

``parse_message`` reads the header, the question section and the answer section; the authority
and additional sections are not read. Every malformed or short input raises ``DnsParseError``
(a ``ValueError``) and nothing else: a truncated answer section is an error too, the partial
message is not returned. Bounds keep hostile input cheap: at most ``MAX_QUESTIONS`` questions
(more is an error), at most ``MAX_ANSWERS`` answers (the rest are ignored), compression pointers
must point strictly backwards (before the label run that holds them, so loops are impossible) and
are also capped at ``MAX_JUMPS`` per name, labels are at most 63 bytes and names 255 bytes on the
wire, and answer data text is cut at ``MAX_DATA_CHARS`` (ending with "...").

Names are lower-cased ASCII without the trailing dot; the root name is ".". Label bytes outside
printable ASCII (and space) are written ``\\DDD`` (decimal), a dot or backslash inside a label
``\\.`` / ``\\\\``, as in zone files, so a name never smuggles a fake label boundary.

DNS over TCP prefixes each message with its length (2 bytes): ``tcp_messages`` cuts whole
messages out of a stream buffer, ``TcpDnsStream`` keeps one such buffer per connection.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

MAX_QUESTIONS = 16
MAX_ANSWERS = 256
MAX_JUMPS = 64
MAX_NAME_WIRE = 255
MAX_LABEL = 63
MAX_DATA_CHARS = 1024
MAX_TCP_MESSAGE = 65_535

_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_SRV = struct.Struct("!HHH")
_SOA = struct.Struct("!IIIII")

TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY",
    257: "CAA",
}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
    7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}
_NAME_TYPES = frozenset({2, 5, 12, 39})  # rdata is one domain name: NS, CNAME, PTR, DNAME

# Bytes that stand for themselves in a label: printable ASCII except "." and "\".
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))
_TEXT_PLAIN = bytes(b for b in range(0x20, 0x7F) if b != 0x5C)


class DnsParseError(ValueError):
    """The bytes are not a well-formed DNS message (or are cut short)."""


@dataclass(frozen=True, slots=True)
class Answer:
    name: str  # owner name
    rtype: str
    ttl: int
    data: str  # address, target name, "pref name" (MX), text (TXT), "prio weight port target" (SRV), hex


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    is_response: bool
    rcode: str
    questions: list[tuple[str, str]]  # (name, qtype)
    answers: list[Answer]
    truncated: bool  # the TC bit: the server cut the answer to fit a UDP datagram


def type_name(rtype: int) -> str:
    return TYPE_NAMES.get(rtype) or f"TYPE{rtype}"


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode) or f"RCODE{rcode}"


def _escape(raw: bytes) -> str:
    out: list[str] = []
    for b in raw:
        if b in (0x2E, 0x5C):
            out.append("\\" + chr(b))
        elif 0x21 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _label_text(raw: bytes) -> str:
    raw = raw.lower()  # ASCII letters only: DNS names compare case-insensitively in ASCII
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    return _escape(raw)


def read_name(data: bytes, off: int) -> tuple[str, int]:
    """The name at ``off`` and the offset just after it (after its first pointer, if any)."""
    labels: list[str] = []
    n = len(data)
    pos = off
    run_start = off  # a pointer must point before the label run it ends
    after: int | None = None
    wire = 1  # the final zero byte
    jumps = 0
    while True:
        if pos >= n:
            raise DnsParseError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            if after is None:
                after = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise DnsParseError("compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= run_start:
                raise DnsParseError("compression pointer does not point backwards")
            jumps += 1
            if jumps > MAX_JUMPS:
                raise DnsParseError("too many compression pointers")
            if after is None:
                after = pos + 2
            pos = run_start = target
            continue
        if kind:
            raise DnsParseError(f"unsupported label type 0x{kind:02x}")
        wire += length + 1
        if wire > MAX_NAME_WIRE:
            raise DnsParseError("name longer than 255 bytes")
        end = pos + 1 + length
        if end > n:
            raise DnsParseError("label runs past the end of the message")
        labels.append(_label_text(data[pos + 1 : end]))
        pos = end
    return (".".join(labels) if labels else "."), after


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DATA_CHARS else text[: MAX_DATA_CHARS - 3] + "..."


def _rdata_text(data: bytes, rtype: int, start: int, end: int) -> str:
    """Answer data as text; names inside rdata may use pointers into the whole message."""
    size = end - start
    if rtype == 1:
        if size != 4:
            raise DnsParseError("A record is not 4 bytes")
        return socket.inet_ntoa(data[start:end])
    if rtype == 28:
        if size != 16:
            raise DnsParseError("AAAA record is not 16 bytes")
        return str(ipaddress.IPv6Address(data[start:end]))
    if rtype in _NAME_TYPES:
        return _rdata_name(data, start, end)
    if rtype == 15:
        if size < 3:
            raise DnsParseError("MX record too short")
        return f"{_U16.unpack_from(data, start)[0]} {_rdata_name(data, start + 2, end)}"
    if rtype == 33:
        if size < 7:
            raise DnsParseError("SRV record too short")
        prio, weight, port = _SRV.unpack_from(data, start)
        return f"{prio} {weight} {port} {_rdata_name(data, start + 6, end)}"
    if rtype in (16, 99):
        return _cut(_escape_text(_character_strings(data, start, end)[: MAX_DATA_CHARS + 1]))
    if rtype == 6:
        mname, pos = read_name(data, start)
        rname, pos = read_name(data, pos)
        if pos + _SOA.size != end:
            raise DnsParseError("SOA record has the wrong size")
        return " ".join([mname, rname, *map(str, _SOA.unpack_from(data, pos))])
    return _cut(data[start : min(end, start + MAX_DATA_CHARS // 2 + 1)].hex())


def _rdata_name(data: bytes, start: int, end: int) -> str:
    name, after = read_name(data, start)
    if after != end:
        raise DnsParseError("name does not fill its record")
    return name


def _character_strings(data: bytes, start: int, end: int) -> bytes:
    parts: list[bytes] = []
    pos = start
    while pos < end:
        length = data[pos]
        if pos + 1 + length > end:
            raise DnsParseError("TXT string runs past its record")
        parts.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return b"".join(parts)


def _escape_text(raw: bytes) -> str:
    # Printable ASCII and space stay; everything else, backslash included, is \DDD.
    if not raw.translate(None, _TEXT_PLAIN):
        return raw.decode("ascii")
    return "".join(chr(b) if (0x20 <= b < 0x7F and b != 0x5C) else f"\\{b:03d}" for b in raw)


def parse_message(data: bytes) -> Message:
    """Header, questions and answers of one DNS message; raises DnsParseError on bad input."""
    data = bytes(data)
    n = len(data)
    if n < _HEADER.size:
        raise DnsParseError("shorter than a DNS header")
    msg_id, flags, qdcount, ancount, _nscount, _arcount = _HEADER.unpack_from(data, 0)
    if qdcount > MAX_QUESTIONS:
        raise DnsParseError(f"{qdcount} questions")
    pos = _HEADER.size
    questions: list[tuple[str, str]] = []
    for _ in range(qdcount):
        name, pos = read_name(data, pos)
        if pos + 4 > n:
            raise DnsParseError("question cut short")
        qtype = _U16.unpack_from(data, pos)[0]
        pos += 4  # type and class
        questions.append((name, type_name(qtype)))
    answers: list[Answer] = []
    for _ in range(min(ancount, MAX_ANSWERS)):
        name, pos = read_name(data, pos)
        if pos + _RR.size > n:
            raise DnsParseError("answer cut short")
        rtype, _rclass, ttl, rdlength = _RR.unpack_from(data, pos)
        pos += _RR.size
        end = pos + rdlength
        if end > n:
            raise DnsParseError("answer data runs past the end of the message")
        ttl = 0 if ttl > 0x7FFFFFFF else ttl  # RFC 2181: a TTL with the top bit set means zero
        answers.append(Answer(name, type_name(rtype), ttl, _rdata_text(data, rtype, pos, end)))
        pos = end
    return Message(
        id=msg_id,
        is_response=bool(flags & 0x8000),
        rcode=rcode_name(flags & 0x000F),
        questions=questions,
        answers=answers,
        truncated=bool(flags & 0x0200),
    )


def tcp_messages(buffer: bytearray) -> list[bytes]:
    """Cut every whole length-prefixed message from the front of ``buffer`` (in place); a partial
    message stays for the next segment. Zero-length messages are skipped."""
    out: list[bytes] = []
    pos = 0
    n = len(buffer)
    while pos + 2 <= n:
        length = (buffer[pos] << 8) | buffer[pos + 1]
        if pos + 2 + length > n:
            break
        if length:
            out.append(bytes(buffer[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    if pos:
        del buffer[:pos]
    return out


class TcpDnsStream:
    """One direction of one DNS-over-TCP connection: feed payload bytes in order, get whole
    messages. At most one partial message (<= 65,537 bytes) is ever held."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        return tcp_messages(self.buffer)

    @property
    def pending(self) -> int:
        return len(self.buffer)
