"""A tiny authoritative DNS server and client for tests, stdlib only.

It shares no code with heron's parser on purpose: the tests check one against the other.

Server: ``DnsServer(records, addr, port).start()`` answers UDP and TCP questions from a dict
``{"www.example.com": [("CNAME", "cdn.example.net")], "cdn.example.net": [("A", "10.1.2.3")]}``
(CNAME chains are followed, NXDOMAIN for unknown names), then ``stop()``.

Client: ``resolve(name, server, port, qtype, tcp=False) -> (rcode, answers)``; also runnable as
``python tests/dnsserver.py query NAME --server 127.0.0.1 --port P [--tcp] [--split] [--type A]``
(prints the rcode and answers, one per line) and
``python tests/dnsserver.py serve --addr 127.0.0.1 --port P --records JSON`` (prints "ready").
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP"}
Records = Mapping[str, Sequence[tuple[str, str]]]


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode()
            out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, qtype: str = "A", qid: int | None = None) -> bytes:
    qid = random.randrange(65536) if qid is None else qid
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD
    return header + encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    after = -1
    for _ in range(64):
        length = data[pos]
        if length == 0:
            return ".".join(labels), (pos + 1 if after < 0 else after)
        if length >= 0xC0:
            if after < 0:
                after = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        labels.append(data[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    raise ValueError("name too long")


def _rdata(rtype: str, value: str) -> bytes:
    if rtype == "A":
        return ipaddress.IPv4Address(value).packed
    if rtype == "AAAA":
        return ipaddress.IPv6Address(value).packed
    if rtype in ("CNAME", "NS", "PTR"):
        return encode_name(value)
    if rtype == "MX":
        pref, host = value.split(" ", 1)
        return struct.pack("!H", int(pref)) + encode_name(host)
    if rtype == "TXT":
        raw = value.encode()
        return b"".join(bytes([len(raw[i : i + 255])]) + raw[i : i + 255] for i in range(0, len(raw), 255))
    raise ValueError(rtype)


def build_response(query: bytes, records: Records, ttl: int = 300) -> bytes:
    qid, flags = struct.unpack_from("!HH", query, 0)
    qname, pos = _read_name(query, 12)
    qtype_num = struct.unpack_from("!H", query, pos)[0]
    question = query[12 : pos + 4]
    qtype = TYPE_NAMES.get(qtype_num, "")
    name = qname.lower()
    answers: list[bytes] = []
    rcode = 0
    for hop in range(8):
        rrs = records.get(name)
        if rrs is None:
            rcode = 3 if hop == 0 else 0
            break
        owner = b"\xc0\x0c" if hop == 0 else encode_name(name)  # compress the question name
        cnames = [v for t, v in rrs if t == "CNAME"]
        if cnames and qtype != "CNAME":
            rd = _rdata("CNAME", cnames[0])
            answers.append(owner + struct.pack("!HHIH", 5, 1, ttl, len(rd)) + rd)
            name = cnames[0].lower()
            continue
        for t, v in rrs:
            if t == qtype:
                rd = _rdata(t, v)
                answers.append(owner + struct.pack("!HHIH", TYPES[t], 1, ttl, len(rd)) + rd)
        break
    out_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR AA RD RA
    return struct.pack("!HHHHHH", qid, out_flags, 1, len(answers), 0, 0) + question + b"".join(answers)


def parse_response(data: bytes) -> tuple[int, str, list[str]]:
    """(id, rcode, answer data as text) of one of our own responses."""
    qid, flags, qd, an = struct.unpack_from("!HHHH", data, 0)
    pos = 12
    for _ in range(qd):
        _name, pos = _read_name(data, pos)
        pos += 4
    out: list[str] = []
    for _ in range(an):
        _name, pos = _read_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
        pos += 10
        rd = data[pos : pos + rdlen]
        if rtype == 1:
            out.append(str(ipaddress.IPv4Address(rd)))
        elif rtype == 28:
            out.append(str(ipaddress.IPv6Address(rd)))
        elif rtype in (2, 5, 12):
            out.append(_read_name(data, pos)[0])
        else:
            out.append(rd.hex())
        pos += rdlen
    return qid, RCODES.get(flags & 0xF, f"RCODE{flags & 0xF}"), out


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def resolve(name: str, server: str = "127.0.0.1", port: int = 53, qtype: str = "A", tcp: bool = False,
            timeout: float = 2.0, split: bool = False) -> tuple[str, list[str]]:
    """Ask ``server`` one question; ``split`` sends a TCP query as two segments (length, body)."""
    query = build_query(name, qtype)
    qid = struct.unpack_from("!H", query, 0)[0]
    with socket.socket(_family(server), socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((server, port))
        if tcp:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            prefix = struct.pack("!H", len(query))
            if split:
                s.sendall(prefix)
                time.sleep(0.05)
                s.sendall(query)
            else:
                s.sendall(prefix + query)
            length = struct.unpack("!H", _recv_exact(s, 2))[0]
            data = _recv_exact(s, length)
        else:
            s.send(query)
            data = s.recv(65535)
    rid, rcode, answers = parse_response(data)
    if rid != qid:
        raise ValueError("response id does not match")
    return rcode, answers


class DnsServer:
    """Answers from ``records`` on UDP and TCP ``addr:port`` (port 0: a free one) until stop()."""

    def __init__(self, records: Records, addr: str = "127.0.0.1", port: int = 0, ttl: int = 300) -> None:
        self.records = {k.lower(): list(v) for k, v in records.items()}
        self.ttl = ttl
        self.addr = addr
        self.served: list[tuple[str, str, str]] = []  # (protocol, name, qtype)
        fam = _family(addr)
        for _ in range(20):  # the UDP port picked by the kernel may be taken for TCP: try another
            self.udp = socket.socket(fam, socket.SOCK_DGRAM)
            self.udp.bind((addr, port))
            self.port: int = self.udp.getsockname()[1]
            self.tcp = socket.socket(fam, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((addr, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port:
                    raise
        self.tcp.listen(16)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True, name="dnsserver")]

    def start(self) -> DnsServer:
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, protocol: str, query: bytes) -> bytes:
        name, pos = _read_name(query, 12)
        qtype = TYPE_NAMES.get(struct.unpack_from("!H", query, pos)[0], "?")
        self.served.append((protocol, name, qtype))
        return build_response(query, self.records, self.ttl)

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
            for s in ready:
                try:
                    if s is self.udp:
                        query, peer = self.udp.recvfrom(65535)
                        self.udp.sendto(self._answer("udp", query), peer)
                    else:
                        conn, _peer = self.tcp.accept()
                        with conn:
                            conn.settimeout(2.0)
                            length = struct.unpack("!H", _recv_exact(conn, 2))[0]
                            reply = self._answer("tcp", _recv_exact(conn, length))
                            conn.sendall(struct.pack("!H", len(reply)) + reply)
                except (OSError, ValueError, IndexError, struct.error):
                    continue

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5)
        self.udp.close()
        self.tcp.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query")
    q.add_argument("name")
    q.add_argument("--server", default="127.0.0.1")
    q.add_argument("--port", type=int, default=53)
    q.add_argument("--type", default="A")
    q.add_argument("--tcp", action="store_true")
    q.add_argument("--split", action="store_true")
    s = sub.add_parser("serve")
    s.add_argument("--addr", default="127.0.0.1")
    s.add_argument("--port", type=int, default=53)
    s.add_argument("--records", default="{}", help='JSON: {"name": [["A", "10.0.0.1"]]}')
    args = ap.parse_args(argv)
    if args.cmd == "query":
        rcode, answers = resolve(args.name, args.server, args.port, args.type, args.tcp, split=args.split)
        print(rcode)
        for a in answers:
            print(a)
        return 0
    records = {k: [tuple(r) for r in v] for k, v in json.loads(args.records).items()}
    server = DnsServer(records, args.addr, args.port).start()  # type: ignore[arg-type]
    print("ready", server.port, flush=True)
    try:
        sys.stdin.read()  # serve until stdin closes
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
