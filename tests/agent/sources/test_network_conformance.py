"""One set of assertions, run against every network collector this machine supports.

A child process connects to a listener of this test over loopback, sends and receives known
byte counts and keeps the connection longer than the poll interval (the user-mode rungs poll).
Every rung must report: the listener (the one that existed before the start in the snapshot,
the new one as it opens), the child's outgoing flow with its pid, remote port and one
connection, this process's incoming flow, and byte counts as accurate as the mechanism can
count: sock_diag counts TCP payload exactly, procfs counts nothing (0), others (eBPF: IP
packet bytes) at least the payload. After enrichment from a process table the flow names the
child's executable.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from collect import Collector
from heron.agent.config import NetworkConfig
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.linux.procfs import ProcFS
from heron.agent.sources.base import SourceContext
from heron.agent.sources.registry import LADDERS
from heron.agent.transforms.enrich import Enricher
from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import NetFlow, NetListen

MECHANISMS = [s.mechanism for s in LADDERS["network"]]
EXACT_PAYLOAD = {"sock_diag"}  # bytes are TCP payload, exactly
NO_BYTES = {"procfs"}  # no counters at all: must say 0
SENT, RECEIVED = 20_000, 3_000


@dataclass
class Running:
    mech: str
    col: Collector
    health: Health
    early: socket.socket  # listening before the collector started
    stop: threading.Event
    thread: threading.Thread

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "source must return promptly after stop"


@pytest.fixture(params=MECHANISMS)
def running(request: pytest.FixtureRequest, host: Host) -> Iterator[Running]:
    cls = next(s for s in LADDERS["network"] if s.mechanism == request.param)
    probe = cls.probe(host)
    if not probe.ok:
        pytest.skip(f"network={request.param} cannot run here: {probe.reason}")
    early = socket.socket()
    early.bind(("127.0.0.1", 0))
    early.listen()
    col, health = Collector(), Health()
    cfg = NetworkConfig(interval_s=0.5, poll_interval_s=0.2, dns=False)
    src = cls(SourceContext(host, health, col, {"config": cfg}))
    try:
        assert src.snapshot() == []  # network sources add no processes
        stop = threading.Event()
        th = threading.Thread(target=src.run, args=(stop,), daemon=True)
        th.start()
    except BaseException:
        src.close()
        early.close()
        raise
    r = Running(request.param, col, health, early, stop, th)
    yield r
    if th.is_alive():
        r.finish()
    early.close()


CHILD = f"""
import socket, sys, time
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"o" * {SENT})
got = 0
while got < {RECEIVED}:
    got += len(s.recv(65536))
print("done", flush=True)
time.sleep(0.8)  # longer than the poll interval
s.close()
"""


@pytest.mark.privileged
def test_flow_listener_and_bytes(running: Running, host: Host) -> None:
    mech, col = running.mech, running.col
    time.sleep(0.3)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    with srv:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], stdout=subprocess.PIPE)
        conn, _ = srv.accept()
        with conn:
            got = 0
            while got < SENT:
                got += len(conn.recv(65536))
            conn.sendall(b"i" * RECEIVED)
            assert child.stdout is not None and child.stdout.readline().strip() == b"done"
            table = ProcessTable()
            table.add(ProcFS().process(child.pid, host.boot_id))  # what the agent's process collector knows
            assert child.wait(10) == 0
        time.sleep(0.6)
        running.finish()  # the last interval is flushed on stop

    snap = col.find(lambda e: isinstance(e, NetListen) and e.port == running.early.getsockname()[1])
    assert snap and snap[0].source == "network.snapshot" and snap[0].state == "open"  # type: ignore[attr-defined]
    opened = col.find(lambda e: isinstance(e, NetListen) and e.port == port and e.state == "open")
    assert opened, f"{mech}: the listener was not reported"
    lst = opened[0]
    assert isinstance(lst, NetListen)
    assert lst.protocol == "tcp" and lst.addr == "127.0.0.1" and lst.source == f"network.{mech}"
    assert lst.process is not None and lst.process.pid == os.getpid()

    out = [e for e in col.find(lambda e: isinstance(e, NetFlow) and e.process is not None
                               and e.process.pid == child.pid) if isinstance(e, NetFlow)]
    assert out, f"{mech}: no flow of the child"
    assert {(f.direction, f.protocol, f.remote_addr, f.remote_port, f.local_port) for f in out} == {
        ("out", "tcp", "127.0.0.1", port, 0)}
    assert sum(f.connections for f in out) == 1
    inbound = [e for e in col.find(lambda e: isinstance(e, NetFlow) and e.direction == "in"
                                   and e.local_port == port) if isinstance(e, NetFlow)]
    assert inbound and sum(f.connections for f in inbound) == 1
    assert all(f.process is not None and f.process.pid == os.getpid() for f in inbound)

    sent = sum(f.bytes_out for f in out)
    received = sum(f.bytes_in for f in out)
    if mech in NO_BYTES:
        assert sent == received == 0, f"{mech} cannot count bytes and must report 0"
    elif mech in EXACT_PAYLOAD:
        assert (sent, received) == (SENT, RECEIVED)
        assert sum(f.bytes_in for f in inbound) == SENT and sum(f.bytes_out for f in inbound) == RECEIVED
    else:
        assert SENT <= sent <= 2 * SENT and RECEIVED <= received <= 2 * RECEIVED

    enrich = Enricher(table, hold_s=0)
    flow = out[0]
    assert enrich([flow]) == [flow]
    assert flow.process is not None and flow.process.exe == os.path.realpath(sys.executable)
    assert flow.process.key.split("-")[1] == str(child.pid)
