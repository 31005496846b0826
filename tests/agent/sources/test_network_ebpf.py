"""network.ebpf against the real kernel: real processes open real sockets on loopback and in network
namespaces made here; the flows, listening sockets and DNS answers the source reports are checked
against what the test knows it sent (bytes are L4 payload bytes: exact)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collect import Collector
from heron.agent.config import NetworkConfig
from heron.agent.ebpf import net_objects as nb
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.sources.base import SourceContext
from heron.agent.sources.network.ebpf import EbpfNetworkSource
from heron.schema.events import DnsQuery, NetFlow, NetListen, process_key

pytestmark = pytest.mark.privileged
TESTS = Path(__file__).resolve().parents[2]

# A client that waits for "go" on stdin (so the test can read its start time), then makes
# `count` connections: sends `n_out` bytes, half-closes, reads the reply to the end.
CLIENT = """
import socket, sys
host, port, count, n_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.stdin.readline()
for _ in range(count):
    s = socket.create_connection((host, port))
    s.sendall(b"x" * n_out)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
print("done", flush=True)
"""


def heron_net_progs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith("heron_n_")}


def cgroup_tree_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "cgroup", "tree"], capture_output=True, text=True, check=True).stdout
    ids: set[int] = set()
    for entry in json.loads(out or "[]"):
        for prog in entry.get("programs", []):
            ids.add(prog.get("id", -1))
    return ids


class Running:
    def __init__(self, host: Host, config: NetworkConfig, **options: object) -> None:
        self.col = Collector()
        self.health = Health()
        self.src = EbpfNetworkSource(SourceContext(host, self.health, self.col, {"config": config, **options}))
        self.src.snapshot()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.src.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "run() must return promptly after stop"


@pytest.fixture(scope="module")
def running(host: Host) -> Iterator[Running]:
    r = Running(host, NetworkConfig(interval_s=1.0))
    yield r
    r.close()
    assert r.health.get("network.ebpf.lost") == 0
    assert r.health.get("network.ebpf.decode_errors") == 0


class TcpServer:
    """Accepts connections one after another: reads to EOF, answers `n_in` bytes, closes."""

    def __init__(self, host: str, n_in: int, family: socket.AddressFamily = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.n_in = n_in
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    self.received += len(data)
                conn.sendall(b"y" * self.n_in)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def run_client(host_: Host, args: list[str], netns: str | None = None) -> tuple[int, str]:
    """Runs CLIENT with args; returns (pid, process key)."""
    cmd = [sys.executable, "-c", CLIENT, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    pid = proc.pid
    if netns:  # ip execs python in the same process: wait for the exec
        deadline = time.monotonic() + 5
        while "python" not in Path(f"/proc/{pid}/comm").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
    key = process_key(host_.boot_id, pid, start_ticks(pid))
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "done" in out
    return pid, key


def flows(col: Collector, pred: Callable[[NetFlow], bool]) -> list[NetFlow]:
    return [e for e in col.find(lambda e: isinstance(e, NetFlow) and pred(e)) if isinstance(e, NetFlow)]


def wait_totals(col: Collector, pred: Callable[[NetFlow], bool], want: dict[str, int],
                timeout: float = 10.0) -> dict[str, int]:
    """Sums of NetFlow fields over the matching records (flows may span intervals) once they
    reach ``want``, or what they are at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = {k: sum(getattr(f, k) for f in flows(col, pred)) for k in want}
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_flows_both_sides_exact_bytes(running: Running, host: Host, family: str) -> None:
    addr = "127.0.0.1" if family == "ipv4" else "::1"
    count, n_out, n_in = 3, 300_000, 70_000
    server = TcpServer(addr, n_in, socket.AF_INET if family == "ipv4" else socket.AF_INET6)
    try:
        pid, key = run_client(host, [addr, str(server.port), str(count), str(n_out)])
    finally:
        time.sleep(0.1)
        server.close()
    want = {"connections": count, "bytes_out": count * n_out, "bytes_in": count * n_in}
    client_side = wait_totals(running.col, lambda f: f.process is not None and f.process.pid == pid
                              and f.remote_port == server.port, want)
    assert client_side == want
    out = flows(running.col, lambda f: f.process is not None and f.process.pid == pid)
    assert {(f.direction, f.protocol, f.remote_addr, f.local_port) for f in out} == {("out", "tcp", addr, 0)}
    assert all(f.process is not None and f.process.key == key and f.process.uid == os.getuid() for f in out)
    assert all(f.packets_out > 0 and f.packets_in > 0 and f.source == "network.ebpf" for f in out)
    # The accepting side: this test process, incoming, on the server's port.
    me = os.getpid()
    server_side = wait_totals(running.col, lambda f: f.process is not None and f.process.pid == me
                              and f.local_port == server.port and f.direction == "in",
                              {"connections": count, "bytes_in": count * n_out, "bytes_out": count * n_in})
    assert server_side == {"connections": count, "bytes_in": count * n_out, "bytes_out": count * n_in}


def test_udp_flow_and_listening_socket(running: Running, host: Host) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    script = f"""
import socket, sys
sys.stdin.readline()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"q" * 1000, ("127.0.0.1", {port}))
    s.recv(2048)
s.close()
print("done", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    pid = proc.pid
    proc.stdin.write("go\n")
    proc.stdin.flush()
    for _ in range(3):
        _data, peer = srv.recvfrom(2048)
        srv.sendto(b"a" * 100, peer)
    out, _ = proc.communicate(timeout=10)
    assert "done" in out
    srv.close()
    want = {"connections": 1, "bytes_out": 3000, "bytes_in": 300, "packets_out": 3, "packets_in": 3}
    got = wait_totals(running.col, lambda f: f.process is not None and f.process.pid == pid and f.protocol == "udp",
                      want)
    assert got == want
    me = os.getpid()
    server_side = wait_totals(running.col, lambda f: f.process is not None and f.process.pid == me
                              and f.protocol == "udp" and f.local_port == port,
                              {"bytes_in": 3000, "bytes_out": 300})
    assert server_side == {"bytes_in": 3000, "bytes_out": 300}
    assert {f.direction for f in flows(running.col, lambda f: f.protocol == "udp" and f.local_port == port)} == {"in"}
    # The bound server socket was a listening socket, opened and closed.
    states = running.col.wait_for(lambda e: isinstance(e, NetListen) and e.port == port, count=2)
    assert [(e.state, e.protocol, e.addr) for e in states if isinstance(e, NetListen)] == [
        ("open", "udp", "127.0.0.1"), ("closed", "udp", "127.0.0.1")]


def test_tcp_listen_open_and_closed(running: Running) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::", 0))
    port = s.getsockname()[1]
    before = time.time_ns()
    s.listen()
    time.sleep(0.05)
    s.close()
    got = running.col.wait_for(lambda e: isinstance(e, NetListen) and e.port == port, count=2)
    events = [e for e in got if isinstance(e, NetListen)]
    assert [e.state for e in events] == ["open", "closed"]
    for e in events:
        assert e.process is not None and e.process.pid == os.getpid() and e.process.key
        assert e.protocol == "tcp" and e.addr == "::" and e.source == "network.ebpf"
        assert e.since_ts >= before
    assert events[1].since_ts == events[0].since_ts


def test_accepted_connection_belongs_to_the_worker_that_reads_it(running: Running, host: Host) -> None:
    """A pre-fork server: the parent listens, a forked worker accepts and reads."""
    script = """
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
pid = os.fork()
if pid == 0:
    c, _ = s.accept()
    n = 0
    while d := c.recv(65536):
        n += len(d)
    c.sendall(b"z" * 1234)
    c.close()
    os._exit(0)
print(pid, flush=True)
os.waitpid(pid, 0)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    worker = int(proc.stdout.readline())
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"w" * 4321)
        c.shutdown(socket.SHUT_WR)
        while c.recv(65536):
            pass
    proc.wait(10)
    want = {"connections": 1, "bytes_in": 4321, "bytes_out": 1234}
    got = wait_totals(running.col, lambda f: f.direction == "in" and f.local_port == port, want)
    assert got == want
    owners = {f.process.pid for f in flows(running.col, lambda f: f.direction == "in" and f.local_port == port)
              if f.process is not None}
    assert owners == {worker}


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"heron-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_connection_inside_a_network_namespace(running: Running, host: Host, netns: str) -> None:
    script = """
import socket, sys, threading
sys.stdin.readline()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept()
    while c.recv(65536):
        pass
    c.sendall(b"n" * 2222)
    c.close()
t = threading.Thread(target=serve)
t.start()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"m" * 55555)
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
t.join()
print("done", port, flush=True)
"""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    pid = proc.pid
    # `ip netns exec` joins the namespace, then execs python (which then waits for "go").
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (
            "python" in Path(f"/proc/{pid}/comm").read_text()
            and os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")):
        time.sleep(0.01)
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=10)
    port = int(out.split()[1])
    mine = {"connections": 1, "bytes_out": 55555, "bytes_in": 2222}
    assert wait_totals(running.col, lambda f: f.process is not None and f.process.pid == pid and f.direction == "out"
                       and f.remote_port == port, mine) == mine
    theirs = {"connections": 1, "bytes_in": 55555, "bytes_out": 2222}
    assert wait_totals(running.col, lambda f: f.process is not None and f.process.pid == pid and f.direction == "in"
                       and f.local_port == port, theirs) == theirs
    listens = running.col.wait_for(lambda e: isinstance(e, NetListen) and e.port == port, count=2)
    assert [e.state for e in listens if isinstance(e, NetListen)] == ["open", "closed"]


DNS_CLIENT = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from dnsserver import resolve
sys.stdin.readline()
rcode, answers = resolve("www.example.com", "127.0.0.1", 53, tcp=sys.argv[2] == "tcp")
assert rcode == "NOERROR" and answers[-1] == "127.0.0.7", (rcode, answers)
srv = socket.socket()
srv.bind((answers[-1], 0))
srv.listen()
c = socket.create_connection((answers[-1], srv.getsockname()[1]))
c.sendall(b"hello")
c.close()
print("done", srv.getsockname()[1], flush=True)
"""


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_dns_answer_attributed_and_labels_the_next_flow(running: Running, host: Host, netns: str,
                                                        protocol: str) -> None:
    records = {"www.example.com": [["CNAME", "cdn.example.net"]], "cdn.example.net": [["A", "127.0.0.7"]]}
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(TESTS / "dnsserver.py"), "serve",
                               "--addr", "127.0.0.1", "--port", "53", "--records", json.dumps(records)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("ready")
        client = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", DNS_CLIENT, str(TESTS),
                                   protocol], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin is not None
        pid = client.pid
        deadline = time.monotonic() + 5
        while "python" not in Path(f"/proc/{pid}/comm").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        key = process_key(host.boot_id, pid, start_ticks(pid))
        client.stdin.write("go\n")
        client.stdin.flush()
        out, _ = client.communicate(timeout=10)
        assert "done" in out, out
        port = int(out.split()[1])
    finally:
        server.communicate("", timeout=10)
    got = running.col.wait_for(lambda e: isinstance(e, DnsQuery) and e.process is not None and e.process.pid == pid)
    assert len(got) == 1
    q = got[0]
    assert isinstance(q, DnsQuery) and q.process is not None
    assert (q.query, q.qtype, q.rcode, q.protocol, q.server) == ("www.example.com", "A", "NOERROR", protocol,
                                                                 "127.0.0.1:53")
    assert q.answers == ["cdn.example.net", "127.0.0.7"] and q.ttl == 300
    assert q.process.key == key and q.source == "network.ebpf"
    labelled = running.col.wait_for(lambda e: isinstance(e, NetFlow) and e.process is not None
                                    and e.process.pid == pid and e.remote_port == port)
    assert labelled and all(isinstance(f, NetFlow) and f.domain == "www.example.com" and f.bytes_out == 5
                            for f in labelled)


def test_existing_sockets_are_reported_and_attributed(host: Host) -> None:
    """A process that listens and holds a connection before the source starts: its listener is in
    the snapshot, and the later traffic on its old connection is attributed to it."""
    script = """
import socket, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
port = srv.getsockname()[1]
c = socket.create_connection(("127.0.0.1", port))
a, _ = srv.accept()
print(port, flush=True)
sys.stdin.readline()
c.sendall(b"e" * 7777)
a.recv(65536)
print("done", flush=True)
sys.stdin.readline()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    r = None
    try:
        port = int(proc.stdout.readline())
        r = Running(host, NetworkConfig(interval_s=0.5))
        snap = [e for e in r.col.find(lambda e: isinstance(e, NetListen) and e.port == port)]
        assert len(snap) == 1 and isinstance(snap[0], NetListen)
        assert snap[0].source == "network.snapshot" and snap[0].state == "open"
        assert snap[0].process is not None and snap[0].process.pid == proc.pid
        assert snap[0].process.key == process_key(host.boot_id, proc.pid, start_ticks(proc.pid))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        want = {"bytes_out": 7777}
        assert wait_totals(r.col, lambda f: f.process is not None and f.process.pid == proc.pid
                           and f.direction == "out" and f.remote_port == port, want) == want
        accepted = wait_totals(r.col, lambda f: f.process is not None and f.process.pid == proc.pid
                               and f.direction == "in" and f.local_port == port, {"bytes_in": 7777})
        assert accepted == {"bytes_in": 7777}
    finally:
        proc.stdin.close()
        proc.wait(5)
        if r is not None:
            r.close()


def test_stop_flushes_open_flows_and_detaches_everything(host: Host) -> None:
    before_progs = heron_net_progs()
    r = Running(host, NetworkConfig(interval_s=600.0))
    mine = heron_net_progs() - before_progs
    assert len(mine) >= 4
    assert mine & cgroup_tree_ids(), "cgroup programs should be attached to the cgroup v2 root"
    server = TcpServer("127.0.0.1", 10)
    c = socket.create_connection(("127.0.0.1", server.port))
    c.sendall(b"s" * 999)
    time.sleep(0.2)
    r.close()  # the interval is long: only the stop flush can report the open connection
    c.close()
    server.close()
    out = flows(r.col, lambda f: f.process is not None and f.process.pid == os.getpid()
                and f.remote_port == server.port)
    assert sum(f.bytes_out for f in out) == 999 and sum(f.connections for f in out) == 1
    deadline = time.monotonic() + 5
    while mine & heron_net_progs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mine & heron_net_progs(), "BPF programs left loaded after stop"
    assert not mine & cgroup_tree_ids(), "cgroup programs left attached after stop"


def test_raw_tp_fallback_attributes_outgoing_connections(host: Host) -> None:
    r = Running(host, NetworkConfig(interval_s=0.5), force_raw_tp=True)
    try:
        assert r.src.loaded is not None and r.src.loaded.state_flavor == "raw_tp"
        server = TcpServer("127.0.0.1", 321)
        try:
            pid, key = run_client(host, ["127.0.0.1", str(server.port), "2", "12345"])
        finally:
            server.close()
        want = {"connections": 2, "bytes_out": 24690, "bytes_in": 642}
        assert wait_totals(r.col, lambda f: f.process is not None and f.process.pid == pid, want) == want
        assert {f.process.key for f in flows(r.col, lambda f: f.process is not None and f.process.pid == pid)
                if f.process is not None} == {key}
    finally:
        r.close()


def test_probe_says_what_loaded(host: Host) -> None:
    result = EbpfNetworkSource.probe(host)
    assert result.ok, result.reason
    assert "tp_btf" in result.reason and "cgroup" in result.reason


def test_quiet_udp_peer_is_finished_and_a_returning_one_is_a_new_flow(host: Host) -> None:
    """A long-lived UDP socket keeps no kernel entry for a peer gone quiet (a server's peers come
    and go): the flow is finished after gc_idle_s, and the peer's return counts as a new one."""
    r = Running(host, NetworkConfig(interval_s=0.5), gc_interval_s=0.2, gc_idle_s=0.4)
    try:
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        port = peer.getsockname()[1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"1" * 100, ("127.0.0.1", port))
        deadline = time.monotonic() + 5
        while r.health.get("network.ebpf.gc_flows") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.health.get("network.ebpf.gc_flows") >= 1
        s.sendto(b"2" * 200, ("127.0.0.1", port))
        want = {"connections": 2, "bytes_out": 300, "packets_out": 2}
        assert wait_totals(r.col, lambda f: f.process is not None and f.process.pid == os.getpid()
                           and f.remote_port == port and f.protocol == "udp", want) == want
        s.close()
        peer.close()
    finally:
        r.close()


def _corrupt_counters(r: Running, match: Callable[[bytes], bool]) -> int:
    """Zeroes bytes_in (and bytes_out) of the kernel flow entries ``match`` picks: what a forged
    out-of-window segment did to the old per-packet mark (the real download counted 0)."""
    loaded = r.src.loaded
    assert loaded is not None
    keys, values, n = loaded.read_flows()
    ks, vs = nb.KEY_SIZE, nb.COUNTERS_SIZE
    done = 0
    for i in range(n):
        key = keys[i * ks : (i + 1) * ks]
        if match(key):
            value = bytearray(values[i * vs : (i + 1) * vs])
            value[0:16] = bytes(16)
            assert loaded.obj.map_update_fd(loaded.fd(nb.FLOWS_MAP), key, bytes(value), nb.BPF_ANY)
            done += 1
    return done


@pytest.mark.parametrize(("abort", "raw_tp"), [(False, False), (True, False), (False, True)],
                         ids=["fin", "rst", "fin-raw_tp"])
def test_tcp_totals_at_close_replace_the_per_packet_counts(host: Host, abort: bool, raw_tp: bool) -> None:
    """The inbound side is checked at close: the kernel's bytes_acked/bytes_received (less SYN
    and FIN) become the connection's final totals, whatever the per-packet counters say."""
    # Long interval and map reads: nothing is read before the close record.
    r = Running(host, NetworkConfig(interval_s=60.0), map_read_interval_s=60.0, force_raw_tp=raw_tp)
    n_out, n_in = 123_457, 54_321
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        c.sendall(b"o" * n_out)
        got = 0
        while got < n_out:
            got += len(a.recv(65536))
        a.sendall(b"i" * n_in)
        got = 0
        while got < n_in:
            got += len(c.recv(65536))
        cport = c.getsockname()[1]
        time.sleep(0.1)
        # raw_tp cannot give a new accepted socket a cookie (another BPF user may have): only the
        # client side is checked there.
        ports = (port,) if raw_tp else (port, cport)
        assert _corrupt_counters(r, lambda k: int.from_bytes(k[24:26], "little") in ports) == len(ports)
        if abort:  # RST: the client's close sends no FIN
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            a.close()
        else:  # the client half-closes first, the server answers with its FIN
            c.shutdown(socket.SHUT_WR)
            assert a.recv(10) == b""
            a.close()
            assert c.recv(10) == b""
            c.close()
        time.sleep(0.3)
    finally:
        srv.close()
        r.close()
    me = os.getpid()
    client = flows(r.col, lambda f: f.process is not None and f.process.pid == me and f.remote_port == port
                   and f.direction == "out")
    server = flows(r.col, lambda f: f.process is not None and f.process.pid == me and f.local_port == port
                   and f.direction == "in")
    assert (sum(f.bytes_out for f in client), sum(f.bytes_in for f in client)) == (n_out, n_in)
    if not raw_tp:
        assert (sum(f.bytes_out for f in server), sum(f.bytes_in for f in server)) == (n_in, n_out)


def test_udp_peers_past_the_cap_share_one_wildcard_flow(host: Host) -> None:
    r = Running(host, NetworkConfig(interval_s=0.5))
    socks: list[socket.socket] = []
    try:
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target.bind(("127.0.0.1", 0))
        socks.append(target)
        port = target.getsockname()[1]
        extra = 20
        for _ in range(nb.UDP_MAX_PEERS + extra):  # each peer sends one datagram to `target`
            p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(p)
            p.sendto(b"u" * 10, ("127.0.0.1", port))
        total = (nb.UDP_MAX_PEERS + extra) * 10
        me = os.getpid()

        def inbound(f: NetFlow) -> bool:
            return f.process is not None and f.process.pid == me and f.protocol == "udp" and \
                f.direction == "in" and f.local_port == port

        assert wait_totals(r.col, inbound, {"bytes_in": total}) == {"bytes_in": total}
        folded = [f for f in flows(r.col, inbound) if f.remote_addr == "0.0.0.0"]
        assert sum(f.bytes_in for f in folded) == extra * 10
        assert r.health.get("network.ebpf.udp_peers_folded") >= extra
    finally:
        for s in socks:
            s.close()
        r.close()


def test_accepted_socket_of_an_unknown_listener_goes_to_its_first_user(host: Host) -> None:
    """The listener's owner is not known (its entry is gone): the accepted socket waits for the
    first process that reads it instead of staying unattributed."""
    r = Running(host, NetworkConfig(interval_s=0.5))
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        loaded = r.src.loaded
        assert loaded is not None
        netns = os.stat("/proc/self/ns/net").st_ino
        key = nb.LISTEN_KEY.fmt.pack(netns, port, 0)
        deadline = time.monotonic() + 5
        while not loaded.obj.map_delete(loaded.fd(nb.LISTENERS_MAP), key):
            assert time.monotonic() < deadline, "listener entry never appeared"
            time.sleep(0.01)
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        c.sendall(b"q" * 4321)
        got = 0
        while got < 4321:
            got += len(a.recv(65536))
        c.close()
        a.close()
        me = os.getpid()
        want = {"connections": 1, "bytes_in": 4321}
        assert wait_totals(r.col, lambda f: f.local_port == port and f.direction == "in"
                           and f.process is not None and f.process.pid == me, want) == want
        assert r.health.get("network.ebpf.no_listener") >= 1
    finally:
        srv.close()
        r.close()


def test_dns_response_sent_by_a_local_process_teaches_nothing(host: Host) -> None:
    """A local process sending a forged "answer" to a DNS port is not an answer this host received:
    no record, no name for the address."""
    sys.path.insert(0, str(TESTS))
    from dnsserver import build_query, build_response

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    r = Running(host, NetworkConfig(interval_s=0.5, dns_ports=[port]))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        forged = build_response(build_query("forged.example"), {"forged.example": [("A", "127.0.0.99")]})
        sender.sendto(forged, ("127.0.0.1", port))
        deadline = time.monotonic() + 5
        while r.health.get("network.ebpf.dns_egress_responses") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.health.get("network.ebpf.dns_egress_responses") == 1
        assert r.src.names.lookup("127.0.0.99", os.getpid()) is None
        assert r.src.names.lookup("127.0.0.99", 0) is None
    finally:
        sender.close()
        receiver.close()
        r.close()
    assert not r.col.find(lambda e: isinstance(e, DnsQuery) and e.query == "forged.example")
