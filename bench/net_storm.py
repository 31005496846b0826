#!/usr/bin/env python3
"""Connection-storm benchmark: heron's network collectors against no agent, interleaved.

    sudo .venv/bin/python bench/net_storm.py [--n 5000] [--bulk-mb 200] [--pairs 3]
                                             [--modes ebpf,sock_diag,procfs] [--interval 10] [--json PATH]
                                             [--long 200] [--hold 2.5] [--peer-workload]

For each network mode, P pairs of (no agent, agent) runs in alternating order of one workload:
  * storm: a known client process makes N TCP connections to a known server process on loopback
    (connect, send 100 bytes, receive 100 bytes, close);
  * bulk: one connection carrying ``--bulk-mb`` MB from the client to the server;
  * netns storm: the same storm (N/5 connections) inside a network namespace made for the run;
  * long-lived: ``--long`` connections held open for ``--hold`` s (longer than the user-mode rungs'
    poll interval), each sending 10,000 bytes, waiting, sending 10,000 more, waiting, then closing:
    what polling can promise (bytes sent between a user-mode rung's last poll and the close are lost).
The agent runs as ``heron agent --collector network=MODE --collector file=off --collector package=off``
(process collection as the ladder picks it, so exe attribution works), flows every ``--interval`` s.

Reports per mode: completeness (connections attributed to the client's pid and exe / connections
made; the server side's accepted connections likewise), byte accuracy of the bulk transfer
(reported bytes_out / bytes sent), workload slowdown (median of paired wall-time ratios), agent
CPU-s per 1,000 connections (storm phase, until its flows were flushed), and wire bytes per flow
record (msgpack + zstd batches of 1,000, as the platform sink ships them). Prints a markdown
table; everything also goes to ``--json`` (default /tmp/heron-bench/net_storm.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import zstandard

from benchutil import proc_cpu
from heron.schema.events import encode_events, from_json

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/heron-bench")
PAYLOAD = 100
LONG_BYTES = 10_000

SERVER = rf"""
import socket, sys
mode, host = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen(1024)
print(s.getsockname()[1], flush=True)
if mode == "hold":
    import threading
    def drain(c):
        while c.recv(65536):
            pass
        c.sendall(b"r" * {PAYLOAD})
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
while True:
    c, _ = s.accept()
    if mode == "echo":
        got = b""
        while len(got) < {PAYLOAD}:
            d = c.recv(4096)
            if not d:
                break
            got += d
        c.sendall(b"r" * {PAYLOAD})
        c.close()
        continue
    n = 0
    while d := c.recv(1 << 20):
        n += len(d)
    c.sendall(n.to_bytes(8, "little"))
    c.close()
    break
"""

CLIENT = rf"""
import socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sys.stdin.readline()
t0 = time.perf_counter()
if mode == "hold":
    hold = float(sys.argv[5])
    conns = [socket.create_connection((host, port)) for _ in range(n)]
    for c in conns:
        c.sendall(b"h" * {LONG_BYTES})
    time.sleep(hold)
    for c in conns:
        c.sendall(b"h" * {LONG_BYTES})
    time.sleep(hold)
    for c in conns:
        c.shutdown(socket.SHUT_WR)
    for c in conns:
        while c.recv(4096):
            pass
        c.close()
elif mode == "echo":
    for _ in range(n):
        c = socket.create_connection((host, port))
        c.sendall(b"q" * {PAYLOAD})
        got = 0
        while got < {PAYLOAD}:
            d = c.recv(4096)
            if not d:
                break
            got += len(d)
        c.close()
else:
    c = socket.create_connection((host, port))
    chunk = b"b" * (1 << 20)
    for _ in range(n):
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    assert int.from_bytes(c.recv(8), "little") == n << 20
    c.close()
print(time.perf_counter() - t0, flush=True)
"""


class AgentRun:
    def __init__(self, mode: str, out: Path, interval: float) -> None:
        cfg = WORK / f"net-agent-{mode}.toml"
        cfg.write_text(f"health_interval_s = 3600\n[network]\ninterval_s = {interval}\n")
        out.unlink(missing_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heron.cli.main", "agent", "--output", f"jsonl:{out}", "--config", str(cfg),
             "--collector", f"network={mode}", "--collector", "file=off", "--collector", "package=off"],
            stderr=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        if "collectors" not in line:
            rest = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"agent {mode} did not start: {line}{rest}")
        time.sleep(1.0)  # snapshots shipped, steady state

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> list[Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        with open(self.out, "rb") as f:
            return [from_json(line) for line in f]


class Netns:
    def __init__(self) -> None:
        self.name = f"heron-bench-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def run_pair(mode: str, host: str, n: int, netns: str | None = None, hold: float = 0.0) -> tuple[float, int, int, int]:
    """Runs one server and one client (mode echo: N connections; bulk: N MB on one connection);
    returns (client wall seconds, client pid, server pid, server port)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen([*prefix, sys.executable, "-c", SERVER, mode, host], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    client = subprocess.Popen([*prefix, sys.executable, "-c", CLIENT, mode, host, str(port), str(n), str(hold)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate("go\n", timeout=600)
    if client.returncode != 0:
        raise RuntimeError(f"client failed: {out}")
    if mode in ("echo", "hold"):
        server.kill()
    server.wait(60)
    return float(out.strip()), client.pid, server.pid, port


def wire_bytes(events: list[Any]) -> float:
    if not events:
        return 0.0
    cctx = zstandard.ZstdCompressor(level=3)
    packed = sum(len(cctx.compress(encode_events(events[i:i + 1000]))) for i in range(0, len(events), 1000))
    return packed / len(events)


def attributed(events: list[Any], pid: int, port: int, direction: str, exe: str) -> tuple[int, int, int]:
    """(connections with the right pid and exe, with the right pid, bytes) for one side of a run."""
    right = pid_only = nbytes = 0
    for e in events:
        if e.__class__.__name__ != "NetFlow" or e.direction != direction or e.process is None:
            continue
        if (direction == "out" and e.remote_port != port) or (direction == "in" and e.local_port != port):
            continue
        if e.process.pid == pid:
            pid_only += e.connections
            nbytes += e.bytes_out if direction == "out" else e.bytes_in
            if os.path.realpath(e.process.exe or "/") == exe:
                right += e.connections
    return right, pid_only, nbytes


def bench_mode(mode: str, n: int, bulk_mb: int, pairs: int, interval: float, long_n: int,
               hold: float) -> dict[str, Any]:
    exe = os.path.realpath(sys.executable)
    res: dict[str, list[float]] = {k: [] for k in (
        "slowdown", "bulk_slowdown", "cpu_per_1000", "complete_out", "complete_in", "complete_out_pid",
        "bulk_accuracy", "netns_complete_out", "netns_complete_in", "wire", "lost", "rate_none", "rate_agent",
        "long_out", "long_in", "long_bytes")}
    for i in range(pairs):
        order = ["none", "agent"] if i % 2 == 0 else ["agent", "none"]
        walls: dict[str, float] = {}
        bulk: dict[str, float] = {}
        for what in order:
            agent = AgentRun(mode, WORK / f"net-{mode}.jsonl", interval) if what == "agent" else None
            c0 = agent.cpu() if agent else 0.0
            walls[what], cpid, spid, port = run_pair("echo", "127.0.0.1", n)
            if agent is None:
                bulk[what] = run_pair("bulk", "127.0.0.1", bulk_mb)[0]
                continue
            time.sleep(interval + 1.5)  # the storm's flows flushed
            cpu = agent.cpu() - c0
            bulk[what], bpid, _bs, bport = run_pair("bulk", "127.0.0.1", bulk_mb)
            ns = Netns()
            try:
                nn = max(1, n // 5)
                _w, npid, nspid, nport = run_pair("echo", "127.0.0.1", nn, ns.name)
                _w, lpid, lspid, lport = run_pair("hold", "127.0.0.1", long_n, hold=hold)
                time.sleep(interval + 1.5)
                events = agent.stop()
            finally:
                ns.close()
            right, pid_only, _ = attributed(events, cpid, port, "out", exe)
            server_right, _, _ = attributed(events, spid, port, "in", exe)
            _r, _p, bulk_bytes = attributed(events, bpid, bport, "out", exe)
            n_out, _, _ = attributed(events, npid, nport, "out", exe)
            n_in, _, _ = attributed(events, nspid, nport, "in", exe)
            l_out, _, l_bytes = attributed(events, lpid, lport, "out", exe)
            l_in, _, _ = attributed(events, lspid, lport, "in", exe)
            res["long_out"].append(l_out / long_n)
            res["long_in"].append(l_in / long_n)
            res["long_bytes"].append(l_bytes / (long_n * 2 * LONG_BYTES))
            res["complete_out"].append(right / n)
            res["complete_out_pid"].append(pid_only / n)
            res["complete_in"].append(server_right / n)
            res["bulk_accuracy"].append(bulk_bytes / (bulk_mb << 20))
            res["netns_complete_out"].append(n_out / nn)
            res["netns_complete_in"].append(n_in / nn)
            res["cpu_per_1000"].append(cpu / (n / 1000))
            res["wire"].append(wire_bytes([e for e in events if e.__class__.__name__ == "NetFlow"]))
            health = [e for e in events if e.__class__.__name__ == "AgentHealth"]
            counters = health[-1].counters if health else {}
            res["lost"].append(sum(v for k, v in counters.items() if k.startswith("network.")
                                   and (k.endswith(".lost") or k.endswith("dropped"))))
        res["slowdown"].append(walls["agent"] / walls["none"])
        res["rate_none"].append(n / walls["none"])
        res["rate_agent"].append(n / walls["agent"])
        res["bulk_slowdown"].append(bulk["agent"] / bulk["none"])
    med = statistics.median
    return {
        "mode": mode, "n": n, "bulk_mb": bulk_mb, "pairs": pairs, "interval_s": interval,
        "completeness_out": min(res["complete_out"]),
        "completeness_out_pid": min(res["complete_out_pid"]),
        "completeness_in": min(res["complete_in"]),
        "netns_completeness_out": min(res["netns_complete_out"]),
        "netns_completeness_in": min(res["netns_complete_in"]),
        "bulk_byte_accuracy": med(res["bulk_accuracy"]),
        "long_completeness_out": min(res["long_out"]),
        "long_completeness_in": min(res["long_in"]),
        "long_byte_accuracy": med(res["long_bytes"]),
        "slowdown_median": med(res["slowdown"]),
        "slowdown_all": res["slowdown"],
        "connections_per_s_without": med(res["rate_none"]),
        "connections_per_s_with": med(res["rate_agent"]),
        "bulk_slowdown_median": med(res["bulk_slowdown"]),
        "cpu_s_per_1000_connections": med(res["cpu_per_1000"]),
        "wire_bytes_per_flow": med(res["wire"]),
        "kernel_or_pipeline_drops": max(res["lost"]),
    }


PEERS = ROOT.parent / "shared" / "peers"


def peer_workload(n: int, pairs: int, interval: float) -> dict[str, Any]:
    """The peer harness's own connection storm (../shared/peers/w3_conn.c: N sequential connects
    in C, ~10x faster than the Python client above), with and without heron's eBPF rung, so the
    slowdown compares with the harness's figures for bpftrace and auditd on the same workload."""
    binary = WORK / "w3_conn"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(PEERS / "w3_conn.c")], check=True)
    port = 18080
    server = subprocess.Popen([sys.executable, str(PEERS / "w3_server.py"), str(port)], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout is not None
    server.stdout.readline()
    ratios, cpus, complete = [], [], []
    try:
        for i in range(pairs):
            order = ["none", "agent"] if i % 2 == 0 else ["agent", "none"]
            walls: dict[str, float] = {}
            for what in order:
                agent = AgentRun("ebpf", WORK / "net-peer.jsonl", interval) if what == "agent" else None
                c0 = agent.cpu() if agent else 0.0
                client = subprocess.run([str(binary), str(n), str(port)], capture_output=True, text=True,
                                        check=True)
                walls[what] = float(client.stdout.split()[-1])
                if agent is not None:
                    time.sleep(interval + 1.5)
                    cpus.append((agent.cpu() - c0) / (n / 1000))
                    events = agent.stop()
                    made = sum(e.connections for e in events if e.__class__.__name__ == "NetFlow"
                               and e.direction == "out" and e.remote_port == port and e.process is not None
                               and e.process.exe == str(binary))
                    complete.append(made / n)
            ratios.append(walls["agent"] / walls["none"])
    finally:
        server.kill()
        server.wait()
    return {"workload": "peers w3_conn", "n": n, "pairs": pairs, "slowdown_median": statistics.median(ratios),
            "slowdown_all": ratios, "cpu_s_per_1000_connections": statistics.median(cpus),
            "completeness": min(complete)}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | complete out (pid+exe) | complete in | netns out/in | long-lived out/in | long bytes | "
            "bulk bytes | conn/s without/with | "
            "slowdown storm | "
            "slowdown bulk | agent CPU-s / 1k conn | wire B / flow | drops |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['completeness_out']:.4f} | {r['completeness_in']:.4f} | "
            f"{r['netns_completeness_out']:.3f}/{r['netns_completeness_in']:.3f} | "
            f"{r['long_completeness_out']:.3f}/{r['long_completeness_in']:.3f} | {r['long_byte_accuracy']:.4f} | "
            f"{r['bulk_byte_accuracy']:.4f} | "
            f"{r['connections_per_s_without']:.0f}/{r['connections_per_s_with']:.0f} | "
            f"{r['slowdown_median']:.3f} | {r['bulk_slowdown_median']:.3f} | {r['cpu_s_per_1000_connections']:.3f} | "
            f"{r['wire_bytes_per_flow']:.1f} | {r['kernel_or_pipeline_drops']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="connections per storm")
    ap.add_argument("--bulk-mb", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--modes", default="ebpf,sock_diag,procfs")
    ap.add_argument("--interval", type=float, default=10.0, help="flow interval_s of the agent")
    ap.add_argument("--long", type=int, default=200, help="long-lived connections")
    ap.add_argument("--peer-workload", action="store_true",
                    help="also run ../shared/peers/w3_conn (C) with and without the eBPF rung")
    ap.add_argument("--hold", type=float, default=2.5, help="seconds each long-lived connection stays open")
    ap.add_argument("--json", default=str(WORK / "net_storm.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench needs root", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        r = bench_mode(mode, args.n, args.bulk_mb, args.pairs, args.interval, args.long, args.hold)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(table(rows))
    peer = None
    if args.peer_workload:
        peer = peer_workload(args.n, args.pairs, args.interval)
        print(json.dumps(peer))
        print(f"\npeer workload (w3_conn, {args.n} connections): heron ebpf slowdown {peer['slowdown_median']:.3f} "
              f"({', '.join(f'{r:.2f}' for r in peer['slowdown_all'])}), "
              f"{peer['cpu_s_per_1000_connections']:.3f} CPU-s / 1k, completeness {peer['completeness']:.4f}")
    Path(args.json).write_text(json.dumps({"runs": rows, "peer_workload": peer}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
