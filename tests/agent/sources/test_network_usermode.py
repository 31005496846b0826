"""The user-mode network rungs beyond the conformance suite: listeners, attribution limits,
short-lived connections, sockets that existed before the start, other network namespaces,
DNS, and the cost of one poll."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collect import Collector
from dnsserver import DnsServer
from heron.agent.config import NetworkConfig
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.linux import sock_diag as sd
from heron.agent.linux.sock_diag import DumpResult, InetSocket
from heron.agent.sources.base import SourceContext
from heron.agent.sources.network.procfs import ProcfsNetworkSource, parse_table
from heron.agent.sources.network.sock_diag import SockDiagNetworkSource
from heron.agent.sources.network.usermode import UserModeNetworkSource
from heron.schema.events import DnsQuery, Event, NetFlow, NetListen

RUNGS = [SockDiagNetworkSource, ProcfsNetworkSource]
TESTS = Path(__file__).resolve().parents[2]


def _source(host: Host, cls: type[UserModeNetworkSource] = SockDiagNetworkSource,
            **cfg: object) -> tuple[UserModeNetworkSource, Collector, Health]:
    col, health = Collector(), Health()
    options = {"interval_s": 60.0, "poll_interval_s": 0.2, "dns": False, **cfg}
    src = cls(SourceContext(host, health, col, {"config": NetworkConfig(**options)}))  # type: ignore[arg-type]
    return src, col, health


def _flows(src: UserModeNetworkSource) -> list[NetFlow]:
    return src.aggregator.flush(time.time_ns())


def _poll(src: UserModeNetworkSource, n: int = 1) -> list[Event]:
    out: list[Event] = []
    for _ in range(n):
        out.extend(src.poll_once(time.time_ns()))
    return out


def _listening(addr: str = "127.0.0.1", kind: int = socket.SOCK_STREAM, port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, kind)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen()
    return s


@pytest.mark.parametrize("cls", RUNGS, ids=lambda c: c.mechanism)
def test_listeners_snapshot_open_closed(host: Host, cls: type[UserModeNetworkSource]) -> None:
    before = _listening()
    src, col, _h = _source(host, cls)
    try:
        src.snapshot()
        snap = [e for e in col.events if isinstance(e, NetListen) and e.port == before.getsockname()[1]]
        assert len(snap) == 1 and snap[0].source == "network.snapshot"
        assert snap[0].process is not None and snap[0].process.pid == os.getpid()
        tcp6 = _listening("::1")
        udp = _listening("127.0.0.1", socket.SOCK_DGRAM, port=_free_udp_below_ephemeral())
        ephemeral = _listening("127.0.0.1", socket.SOCK_DGRAM)  # a client-like unconnected socket
        opened = [e for e in _poll(src) if isinstance(e, NetListen)]
        got = {(e.protocol, e.addr, e.port, e.state, e.source) for e in opened}
        assert ("tcp", "::1", tcp6.getsockname()[1], "open", f"network.{cls.mechanism}") in got
        assert ("udp", "127.0.0.1", udp.getsockname()[1], "open", f"network.{cls.mechanism}") in got
        assert not [e for e in opened if e.port == ephemeral.getsockname()[1]]
        later = [e for e in _poll(src, 3) if isinstance(e, NetListen) and e.port == ephemeral.getsockname()[1]]
        assert [e.state for e in later] == ["open"]  # long-lived: it is a listener after all
        tcp6_port = tcp6.getsockname()[1]
        tcp6.close()
        closed = [e for e in _poll(src) if isinstance(e, NetListen)]
        assert [(e.protocol, e.addr, e.port, e.state) for e in closed] == [("tcp", "::1", tcp6_port, "closed")]
        assert closed[0].since_ts > 0
        udp.close()
        ephemeral.close()
    finally:
        src.close()
        before.close()


def _free_udp_below_ephemeral() -> int:
    for port in range(20_000 + os.getpid() % 5_000, 30_000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def test_socket_without_visible_owner_is_reported_unattributed(host: Host) -> None:
    srv = _listening()
    a, b = socket.socketpair()
    src, _col, health = _source(host)
    try:
        src.snapshot()
        carrier = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        cport = carrier.getsockname()[1]
        # Its only reference is a message in flight: no /proc/PID/fd names it.
        socket.send_fds(a, [b"x"], [carrier.fileno()])
        carrier.close()
        for _ in range(50):
            _poll(src)
            if health.get("network.sock_diag.unattributed"):
                break
        flows = _flows(src)
        ghost = [f for f in flows if f.direction == "out" and f.remote_port == srv.getsockname()[1]]
        assert ghost and ghost[0].process is None and ghost[0].connections == 1
        mine = [f for f in flows if f.direction == "in" and f.local_port == srv.getsockname()[1]]
        assert mine and mine[0].process is not None and mine[0].process.pid == os.getpid()
        assert health.get("network.sock_diag.unattributed") >= 1
        assert cport not in [f.local_port for f in flows]  # outgoing flows collapse the local port
        conn.close()
    finally:
        src.close()
        a.close()
        b.close()
        srv.close()


def test_connection_shorter_than_a_poll_is_counted(host: Host) -> None:
    srv = _listening()
    src, _col, health = _source(host)
    try:
        src.snapshot()
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        conn.close()  # the server closes first: its side lingers in TIME_WAIT on the listening port
        cli.close()
        time.sleep(0.05)
        _poll(src)
        assert health.get("network.sock_diag.short_lived") >= 1
        inbound = [f for f in _flows(src) if f.direction == "in" and f.local_port == srv.getsockname()[1]]
        # Seen only in TIME_WAIT: attributed to the one process listening there, no bytes known.
        assert inbound and inbound[0].connections == 1
        assert inbound[0].process is not None and inbound[0].process.pid == os.getpid()
    finally:
        src.close()
        srv.close()


def test_traffic_before_the_start_is_not_reported(host: Host) -> None:
    srv = _listening()
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    src, _col, _h = _source(host)
    try:
        cli.sendall(b"a" * 5000)
        conn.recv(65536)
        time.sleep(0.05)
        src.snapshot()
        cli.sendall(b"b" * 700)
        got = 0
        while got < 700:
            got += len(conn.recv(65536))
        time.sleep(0.05)
        _poll(src)
        out = [f for f in _flows(src) if f.direction == "out" and f.remote_port == srv.getsockname()[1]]
        assert out and out[0].bytes_out == 700
    finally:
        src.close()
        for s in (cli, conn, srv):
            s.close()


# -- other network namespaces --------------------------------------------------------------

NS_CHILD = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 7000)); srv.listen()
cli = socket.create_connection(("127.0.0.1", 7000))
conn, _ = srv.accept()
print("ready", flush=True)
sys.stdin.readline()
cli.sendall(b"z" * 4321)
got = 0
while got < 4321:
    got += len(conn.recv(65536))
print("sent", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"heron-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "delete", name], check=False, stderr=subprocess.DEVNULL)


@pytest.mark.privileged
@pytest.mark.parametrize("cls", RUNGS, ids=lambda c: c.mechanism)
def test_flows_in_another_namespace_then_it_vanishes(host: Host, netns: str,
                                                     cls: type[UserModeNetworkSource]) -> None:
    src, col, health = _source(host, cls)
    name = f"network.{cls.mechanism}"
    child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", NS_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        ns_inode = os.stat(f"/run/netns/{netns}").st_ino
        src.snapshot()
        assert ns_inode in src.namespaces
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == b"sent"
        events = col.events + _poll(src, 2)
        listen = [e for e in events if isinstance(e, NetListen) and e.port == 7000]
        assert listen and listen[0].process is not None and listen[0].process.pid == child.pid
        flows = [f for f in _flows(src) if f.remote_port == 7000 or f.local_port == 7000]
        out = [f for f in flows if f.direction == "out"]
        assert out and out[0].process is not None and out[0].process.pid == child.pid
        if cls.counts_bytes:
            assert out[0].bytes_out == 4321
        child.stdin.close()
        child.wait(5)
        subprocess.run(["ip", "netns", "delete", netns], check=True)
        src.netns_watch._next_full = 0  # re-read /run/netns now rather than in 10 s
        closed = [e for e in _poll(src, 2) if isinstance(e, NetListen) and e.port == 7000]
        assert [e.state for e in closed] == ["closed"]
        assert health.get(f"{name}.netns_gone") >= 1
        assert ns_inode not in src.namespaces  # our sockets there are closed: it can go
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        src.close()


# -- DNS -----------------------------------------------------------------------------------

class SlowDns(DnsServer):
    """Answers after 30 ms, as a resolver across a network would."""

    def _answer(self, protocol: str, query: bytes) -> bytes:
        time.sleep(0.03)
        return super()._answer(protocol, query)


DNS_CHILD = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from dnsserver import resolve
rcode, answers = resolve("svc.heron.test", "127.0.0.1", int(sys.argv[2]))
s = socket.create_connection((answers[-1], int(sys.argv[3])))
print(rcode, answers[-1], flush=True)
sys.stdin.read()
"""


@pytest.mark.privileged
def test_dns_attributed_and_labels_flows(host: Host) -> None:
    target = _listening("127.0.0.42")
    with SlowDns({"svc.heron.test": [("CNAME", "edge.heron.test")], "edge.heron.test": [("A", "127.0.0.42")]}) as dns:
        src, col, health = _source(host, interval_s=0.5, dns=True, dns_ports=[dns.port])
        src.snapshot()
        assert not health.get("network.sock_diag.dns_unavailable")
        stop = threading.Event()
        th = threading.Thread(target=src.run, args=(stop,), daemon=True)
        th.start()
        child = subprocess.Popen([sys.executable, "-c", DNS_CHILD, str(TESTS), str(dns.port),
                                  str(target.getsockname()[1])], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None and child.stdout.readline().split() == [b"NOERROR", b"127.0.0.42"]
            conn, _ = target.accept()
            time.sleep(0.5)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(5)
            stop.set()
            th.join(10)
        conn.close()
        assert not th.is_alive()
    target.close()
    queries = [e for e in col.events if isinstance(e, DnsQuery) and e.query == "svc.heron.test"]
    assert queries, f"no DNS record; counters: {health.counters}"
    q = queries[0]
    assert q.process is not None and q.process.pid == child.pid
    assert q.answers == ["edge.heron.test", "127.0.0.42"] and q.rcode == "NOERROR"
    assert q.server == f"127.0.0.1:{dns.port}" and q.source == "network.sock_diag"
    flows = [e for e in col.events if isinstance(e, NetFlow) and e.remote_addr == "127.0.0.42"]
    assert flows and flows[0].domain == "svc.heron.test"
    assert flows[0].process is not None and flows[0].process.pid == child.pid


def test_dns_capture_unavailable_leaves_flows_working(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    import heron.agent.linux.packet as packet

    def refuse(*_a: object, **_k: object) -> None:
        raise PermissionError(1, "Operation not permitted (CAP_NET_RAW)")

    monkeypatch.setattr(packet, "DnsCapture", refuse)
    srv = _listening()
    src, _col, health = _source(host, dns=True)
    try:
        src.snapshot()
        assert health.get("network.sock_diag.dns_unavailable") == 1
        assert any("CAP_NET_RAW" in m for m in health.messages)
        cli = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        _poll(src)
        assert [f for f in _flows(src) if f.remote_port == srv.getsockname()[1]]
        cli.close()
        conn.close()
    finally:
        src.close()
        srv.close()


# -- cost ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", RUNGS, ids=lambda c: c.mechanism)
def test_poll_cost_with_a_thousand_sockets(host: Host, cls: type[UserModeNetworkSource]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2_500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4_096, hard), hard))
    srv = _listening()
    srv.listen(1024)
    socks: list[socket.socket] = []
    src, _col, _h = _source(host, cls)
    try:
        for _ in range(500):
            c = socket.create_connection(srv.getsockname())
            socks += [c, srv.accept()[0]]
        src.snapshot()  # every socket attributed once
        _poll(src)
        start = time.perf_counter()
        for _ in range(5):
            _poll(src)
        per_poll = (time.perf_counter() - start) / 5
        assert len(src.tracked) >= 1000
        print(f"{cls.mechanism}: one poll with {len(src.tracked)} sockets: {per_poll * 1000:.1f} ms")
        assert per_poll < 0.25
    finally:
        src.close()
        for s in socks:
            s.close()
        srv.close()


# -- hostile tables ------------------------------------------------------------------------

class _FakeReader:
    """A namespace table the test writes: sockets vanish, reads fail, replies are cut."""

    def __init__(self) -> None:
        self.sockets: list[InetSocket] = []
        self.malformed = 0
        self.fail = False

    def read(self) -> DumpResult:
        if self.fail:
            raise TimeoutError("sock_diag dump did not finish")
        return DumpResult(list(self.sockets), self.malformed)

    def find_by_local_port(self, protocol: str, port: int, family: int | None = None) -> list[InetSocket]:
        return [s for s in self.sockets if s.protocol == protocol and s.local_port == port]

    def retarget(self, ref: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_vanishing_sockets_cut_replies_and_failed_reads_are_counted(host: Host) -> None:
    reader = _FakeReader()
    src, _col, health = _source(host)
    src.open_reader = lambda ref: reader  # type: ignore[method-assign]
    src.netns_watch.update = lambda *_a: {}  # type: ignore[method-assign]  # only the agent's own namespace
    try:
        src.snapshot()
        # A socket in the dump whose descriptor is gone before the /proc scan (inode nobody holds).
        ghost = InetSocket(socket.AF_INET, "tcp", sd.TCP_ESTABLISHED, "10.9.9.1", 40000, "10.9.9.2", 443,
                           inode=987_654_321, uid=0, cookie=77, bytes_acked=101, bytes_received=50, has_info=True)
        reader.sockets = [ghost]
        reader.malformed = 2
        _poll(src)
        assert health.get("network.sock_diag.malformed") == 2
        reader.sockets, reader.malformed = [], 0  # closed before its owner was found
        _poll(src)
        flows = _flows(src)
        assert [(f.process, f.remote_port, f.connections, f.bytes_out) for f in flows] == [(None, 443, 1, 100)]
        assert health.get("network.sock_diag.unattributed") == 1
        steady = InetSocket(socket.AF_INET, "tcp", sd.TCP_ESTABLISHED, "10.9.9.1", 40001, "10.9.9.3", 22,
                            inode=987_654_322, uid=0, cookie=78, bytes_acked=11, bytes_received=5, has_info=True)
        reader.sockets = [steady]
        _poll(src, 3)
        reader.fail = True
        _poll(src)  # the agent's own namespace is kept, and its sockets are not taken for closed
        assert health.get("network.sock_diag.read_errors") == 1 and src.namespaces
        reader.fail = False
        steady.bytes_acked = 21
        _poll(src)
        flows = [f for f in _flows(src) if f.remote_port == 22]
        assert sum(f.connections for f in flows) == 1 and sum(f.bytes_out for f in flows) == 20
    finally:
        src.close()


def test_connections_longer_than_a_poll_are_all_seen(host: Host) -> None:
    srv = _listening()
    srv.listen(256)
    port = srv.getsockname()[1]
    src, col, _h = _source(host, poll_interval_s=0.1, interval_s=0.5)
    src.snapshot()
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while len(accepted) < 100:
            accepted.append(srv.accept()[0])

    def client(delay: float) -> None:
        time.sleep(delay)
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"p")
            time.sleep(0.25)  # a little over two polls

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    clients = [threading.Thread(target=client, args=(i * 0.01,)) for i in range(100)]
    try:
        for t in clients:
            t.start()
        for t in clients:
            t.join(10)
        acceptor.join(10)
    finally:
        time.sleep(0.2)
        stop.set()
        th.join(10)
        for s in accepted:
            s.close()
        srv.close()
    out = [e for e in col.events if isinstance(e, NetFlow) and e.direction == "out" and e.remote_port == port]
    assert sum(f.connections for f in out) == 100
    assert sum(f.bytes_out for f in out) == 100
    assert all(f.process is not None and f.process.pid == os.getpid() for f in out)


NS_DNS_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
from dnsserver import DnsServer, resolve

class Slow(DnsServer):
    def _answer(self, protocol, query):
        time.sleep(0.03)
        return super()._answer(protocol, query)

with Slow({"inner.heron.test": [("A", "127.0.0.9")]}, port=int(sys.argv[2])):
    print("ready", flush=True)
    sys.stdin.readline()
    print(*resolve("inner.heron.test", "127.0.0.1", int(sys.argv[2])), flush=True)
    sys.stdin.read()
"""


@pytest.mark.privileged
def test_dns_inside_another_namespace(host: Host, netns: str) -> None:
    port = 5353 + os.getpid() % 1000
    src, col, health = _source(host, interval_s=0.5, dns=True, dns_ports=[port])
    child = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", NS_DNS_CHILD, str(TESTS),
                              str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        src.snapshot()
        assert sum(1 for ns in src.namespaces.values() if ns.capture is not None) >= 2
        th.start()
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline().split()[0] == b"NOERROR"
        time.sleep(0.3)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(5)
        stop.set()
        if th.is_alive():
            th.join(10)
        src.close()
    queries = [e for e in col.events if isinstance(e, DnsQuery) and e.query == "inner.heron.test"]
    assert queries, f"no DNS record from the namespace; counters: {health.counters}"
    assert queries[0].answers == ["127.0.0.9"]
    assert queries[0].process is not None and queries[0].process.pid == child.pid


def test_procfs_table_parser_counts_junk() -> None:
    table = (b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             b"   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n"
             b"   1: 0100007F:9C40 0200000A:01BB 06 00000000:00000000 00:00000000 00000000     0        0 0 3\n"
             b"   2: ZZZZ:0001 00000000:0000 0A 0 0 0 0 0 77\n"
             b"   3: truncated\n"
             b"\xff\xfe\n")
    out = DumpResult()
    parse_table(table, "tcp", socket.AF_INET, out)
    assert [(s.local_addr, s.local_port, s.state, s.uid, s.inode) for s in out.sockets] == [
        ("127.0.0.1", 631, sd.TCP_LISTEN, 1000, 4242)]
    assert out.malformed == 3  # the TIME_WAIT line (inode 0) is skipped, not malformed
    v6 = DumpResult()
    parse_table(b"hdr\n 0: 0000000000000000FFFF00000100007F:0050 00000000000000000000000001000000:1F90 01 "
                b"0:0 0:0 0 0 0 99\n", "tcp", socket.AF_INET6, v6)
    assert [(s.local_addr, s.remote_addr, s.remote_port) for s in v6.sockets] == [("127.0.0.1", "::1", 8080)]
