"""inet_diag against the real kernel: states, families, tcp_info bytes, targeted lookups, other
namespaces; and hostile replies (cut, short, wrong sequence, errors, silence) from a fake socket."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from heron.agent.linux import sock_diag as sd
from heron.agent.linux.netlink import NLMSG_DONE, NLMSG_ERROR, NetlinkError, pack
from heron.agent.linux.netns import call_in_netns, netlink_in_netns, netns_inode
from heron.agent.linux.sock_diag import InetSocket, SockDiag, payload_bytes


@pytest.fixture
def diag() -> Iterator[SockDiag]:
    d = SockDiag()
    yield d
    d.close()


def _ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def _by_inode(socks: list[InetSocket], inode: int) -> InetSocket:
    found = [s for s in socks if s.inode == inode]
    assert len(found) == 1, f"inode {inode} in dump: {found}"
    return found[0]


def _until(diag: SockDiag, pred: Callable[[list[InetSocket]], bool], timeout: float = 3.0) -> list[InetSocket]:
    """Dumps until ``pred`` holds (ACKs and state changes land a moment after the syscall)."""
    deadline = time.monotonic() + timeout
    while True:
        socks = diag.dump_all().sockets
        if pred(socks) or time.monotonic() > deadline:
            return socks
        time.sleep(0.01)


def _recv_exactly(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(65536)
        assert chunk
        got += len(chunk)


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    srv = socket.socket(family)
    srv.bind((host, 0))
    srv.listen()
    cli = socket.create_connection(srv.getsockname()[:2])
    acc, _ = srv.accept()
    return srv, cli, acc


def test_tcp_listener_and_connection_with_exact_bytes(diag: SockDiag) -> None:
    srv, cli, acc = _pair()
    with srv, cli, acc:
        cli.sendall(b"a" * 12_345)
        _recv_exactly(acc, 12_345)
        acc.sendall(b"b" * 777)
        _recv_exactly(cli, 777)
        _until(diag, lambda socks: payload_bytes(_by_inode(socks, _ino(cli)), True)[0] == 12_345)
        result = diag.dump_all()
        assert result.malformed == 0
        listener = _by_inode(result.sockets, _ino(srv))
        assert listener.state == sd.TCP_LISTEN and listener.local_port == srv.getsockname()[1]
        c = _by_inode(result.sockets, _ino(cli))
        a = _by_inode(result.sockets, _ino(acc))
        assert (c.local_addr, c.local_port) == cli.getsockname()
        assert (c.remote_addr, c.remote_port) == srv.getsockname()
        assert c.state == a.state == sd.TCP_ESTABLISHED
        assert c.uid == os.geteuid() and c.cookie and c.cookie != a.cookie
        assert c.has_info and a.has_info
        assert payload_bytes(c, active_open=True) == (12_345, 777)
        assert payload_bytes(a, active_open=False) == (777, 12_345)
        assert c.segs_out >= 3 and a.segs_in >= 3


def test_ipv6_and_v4_mapped_and_udp(diag: SockDiag) -> None:
    srv, cli, acc = _pair(socket.AF_INET6)
    dual = socket.socket(socket.AF_INET6)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", 0))
    dual.listen()
    mapped = socket.create_connection(("127.0.0.1", dual.getsockname()[1]))
    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u4.connect(("127.0.0.1", 9))
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind(("::1", 0))
    with srv, cli, acc, dual, mapped, u4, u6:
        socks = diag.dump_all().sockets
        c = _by_inode(socks, _ino(cli))
        assert c.family == socket.AF_INET6 and c.local_addr == "::1" and c.remote_addr == "::1"
        accepted = [s for s in socks if s.local_port == dual.getsockname()[1] and s.state == sd.TCP_ESTABLISHED]
        assert accepted and accepted[0].local_addr == "127.0.0.1"  # ::ffff:127.0.0.1 written as IPv4
        a = _by_inode(socks, _ino(u4))
        assert a.protocol == "udp" and a.remote_port == 9 and a.state == sd.TCP_ESTABLISHED and not a.has_info
        b = _by_inode(socks, _ino(u6))
        assert b.protocol == "udp" and b.local_addr == "::1" and b.remote_port == 0 and b.state == sd.TCP_CLOSE


def test_closed_connection_keeps_its_cookie_through_time_wait(diag: SockDiag) -> None:
    srv, cli, acc = _pair()
    with srv, cli, acc:
        cli.sendall(b"x" * 100)
        _recv_exactly(acc, 100)
        _until(diag, lambda socks: payload_bytes(_by_inode(socks, _ino(cli)), True)[0] == 100)
        cookie = _by_inode(diag.dump_all().sockets, _ino(cli)).cookie
        port = cli.getsockname()[1]
        cli.shutdown(socket.SHUT_WR)  # our FIN: FIN_WAIT2 once acked, the socket still ours
        socks = _until(diag, lambda socks: _by_inode(socks, _ino(cli)).state == sd.TCP_FIN_WAIT2)
        half = _by_inode(socks, _ino(cli))
        assert half.state == sd.TCP_FIN_WAIT2 and half.has_info and half.cookie == cookie
        assert payload_bytes(half, active_open=True)[0] == 100  # our FIN is not payload
        server_side = _by_inode(socks, _ino(acc))
        assert server_side.state == sd.TCP_CLOSE_WAIT
        assert payload_bytes(server_side, active_open=False)[1] == 100  # their FIN is not payload
        cli.close()
        acc.close()
        socks = _until(diag, lambda socks: any(s.cookie == cookie and s.state == sd.TCP_TIME_WAIT for s in socks))
        tw = [s for s in socks if s.cookie == cookie]
        # The kernel keeps a small TIME_WAIT socket: same cookie, no owner, no tcp_info.
        assert tw and tw[0].state == sd.TCP_TIME_WAIT and tw[0].local_port == port
        assert tw[0].inode == 0 and not tw[0].has_info
        again = diag.dump("tcp", socket.AF_INET, known_time_wait={cookie})  # known: skipped unparsed
        assert not [s for s in again.sockets if s.cookie == cookie] and again.skipped >= 1


def test_find_by_local_port(diag: SockDiag) -> None:
    srv, cli, acc = _pair()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.connect(("::1", 53))
    with srv, cli, acc, u:
        # TIME_WAIT leftovers of earlier connections may share the port: they have no inode.
        found = diag.find_by_local_port("tcp", cli.getsockname()[1])
        assert [s.inode for s in found if s.inode] == [_ino(cli)]
        assert all(s.local_port == cli.getsockname()[1] for s in found)
        found = diag.find_by_local_port("udp", u.getsockname()[1])
        assert [s.inode for s in found if s.inode] == [_ino(u)]
        nothing = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nothing.bind(("127.0.0.1", 0))
        free = nothing.getsockname()[1]
        nothing.close()
        assert diag.find_by_local_port("udp", free) == []


# -- hostile replies -------------------------------------------------------------------------

_MSG_FIELDS = struct.Struct("=BBBBHH16s16sIIIIIIII")


def _diag_payload(port: int = 80, inode: int = 7, info: bytes | None = None) -> bytes:
    body = _MSG_FIELDS.pack(socket.AF_INET, 1, 0, 0, socket.htons(port), socket.htons(443),
                            socket.inet_aton("10.0.0.1") + bytes(12), socket.inet_aton("10.0.0.2") + bytes(12),
                            0, 5, 0, 0, 0, 0, 1000, inode)
    if info is not None:
        body += struct.pack("=HH", 4 + len(info), sd.INET_DIAG_INFO) + info + bytes(-len(info) % 4)
    return body


def test_parse_short_cut_and_partial_tcp_info() -> None:
    assert sd.parse_diag_message(_diag_payload()[:71], "tcp") is None
    s = sd.parse_diag_message(_diag_payload(), "tcp")
    assert s is not None
    assert (s.local_addr, s.local_port, s.remote_addr, s.remote_port) == ("10.0.0.1", 80, "10.0.0.2", 443)
    assert (s.inode, s.uid, s.cookie, s.has_info) == (7, 1000, 5, False)
    info = bytearray(232)
    struct.pack_into("=QQII", info, 120, 11, 22, 33, 44)
    s = sd.parse_diag_message(_diag_payload(info=bytes(info)), "tcp")
    assert s is not None and (s.bytes_acked, s.bytes_received, s.segs_out, s.segs_in) == (11, 22, 33, 44)
    s = sd.parse_diag_message(_diag_payload(info=bytes(100)), "tcp")  # an old kernel's short tcp_info
    assert s is not None and s.has_info and s.bytes_acked == 0
    cut = _diag_payload(info=bytes(info))[:-50]  # attribute longer than the message
    s = sd.parse_diag_message(cut, "tcp")
    assert s is not None and s.inode == 7 and not s.has_info


class _FakeNetlink:
    """Plays back datagrams as if the kernel sent them; select() sees a socketpair."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.datagrams = datagrams
        self.buf = bytearray(256 * 1024)
        self.sock, self._peer = socket.socketpair()
        self.sent: list[bytes] = []

    def send(self, msg_type: int, payload: bytes, flags: int = 0, seq: int | None = None) -> int:
        return 42

    def recv_raw(self) -> int:
        if not self.datagrams:
            return 0
        d = self.datagrams.pop(0)
        self.buf[: len(d)] = d
        return len(d)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        self._peer.close()


def _play(datagrams: list[bytes], timeout_s: float = 1.0) -> sd.DumpResult:
    nl = _FakeNetlink(datagrams)
    try:
        return SockDiag(nl).dump("tcp", socket.AF_INET, timeout_s=timeout_s)  # type: ignore[arg-type]
    finally:
        nl.close()


def test_dump_counts_cut_and_short_messages_and_skips_other_sequences() -> None:
    good = pack(sd.SOCK_DIAG_BY_FAMILY, _diag_payload(inode=1), seq=42)
    short = pack(sd.SOCK_DIAG_BY_FAMILY, b"\0" * 20, seq=42)
    stale = pack(sd.SOCK_DIAG_BY_FAMILY, _diag_payload(inode=99), seq=41)
    cut = pack(sd.SOCK_DIAG_BY_FAMILY, _diag_payload(inode=2), seq=42)[:50]
    done = pack(NLMSG_DONE, b"\0\0\0\0", seq=42)
    result = _play([good + short + stale, good + cut, b"\x01\x02", done])
    assert [s.inode for s in result.sockets] == [1, 1]
    assert result.malformed == 3  # the short one, the cut one, the 2-byte datagram


def test_dump_error_and_silence() -> None:
    err = pack(NLMSG_ERROR, struct.pack("=i", -errno.EINVAL) + bytes(16), seq=42)
    with pytest.raises(NetlinkError) as e:
        _play([err])
    assert e.value.errno == errno.EINVAL
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        _play([pack(sd.SOCK_DIAG_BY_FAMILY, _diag_payload(), seq=42)], timeout_s=0.2)
    assert time.monotonic() - start < 2


# -- other network namespaces ----------------------------------------------------------------

@pytest.fixture
def netns() -> Iterator[str]:
    name = f"heron-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.privileged
def test_dump_inside_another_namespace(netns: str, diag: SockDiag) -> None:
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',4999)); s.listen(); print(1, flush=True); "
            "sys.stdin.read()")
    child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        path = f"/run/netns/{netns}"
        inner = SockDiag(netlink_in_netns(path, sd.NETLINK_SOCK_DIAG))
        with inner.nl.sock:
            listeners = [s for s in inner.dump("tcp", socket.AF_INET).sockets if s.state == sd.TCP_LISTEN]
            assert [(s.local_addr, s.local_port) for s in listeners] == [("127.0.0.1", 4999)]
            # The socket stays in that namespace; the agent's own dump does not see it.
            assert not [s for s in diag.dump_all().sockets if s.inode == listeners[0].inode]
            assert inner.find_by_local_port("tcp", 4999)[0].inode == listeners[0].inode
        assert netns_inode(path) != netns_inode("/proc/self/ns/net")
        assert call_in_netns(path, lambda: netns_inode("/proc/thread-self/ns/net")) == netns_inode(path)
        assert netns_inode("/proc/thread-self/ns/net") == netns_inode("/proc/self/ns/net")  # we never moved
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(5)


def test_entering_a_missing_namespace_raises() -> None:
    with pytest.raises(FileNotFoundError):
        call_in_netns("/proc/999999999/ns/net", lambda: 1)
