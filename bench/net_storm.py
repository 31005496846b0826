#!/usr/bin/env python3
"""Connection-storm benchmark: heron's network collectors against no agent, interleaved.

    sudo .venv/bin/python bench/net_storm.py [--n 5000] [--bulk-mb 200] [--pairs 3]
                                             [--modes ebpf,sock_diag,procfs] [--interval 10] [--json PATH]

For each network mode, P pairs of (no agent, agent) runs in alternating order of one workload:
  * storm: a known client process makes N TCP connections to a known server process on loopback
    (connect, send 100 bytes, receive 100 bytes, close);
  * bulk: one connection carrying ``--bulk-mb`` MB from the client to the server;
  * netns storm: the same storm (N/5 connections) inside a network namespace made for the run.
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

from heron.schema.events import encode_events, from_json

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/heron-bench")
CLK = os.sysconf("SC_CLK_TCK")
PAYLOAD = 100

SERVER = rf"""
import socket, sys
mode, host = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.bind((host, 0))
s.listen(1024)
print(s.getsockname()[1], flush=True)
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
if mode == "echo":
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


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


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


def run_pair(mode: str, host: str, n: int, netns: str | None = None) -> tuple[float, int, int, int]:
    """Runs one server and one client (mode echo: N connections; bulk: N MB on one connection);
    returns (client wall seconds, client pid, server pid, server port)."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen([*prefix, sys.executable, "-c", SERVER, mode, host], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    client = subprocess.Popen([*prefix, sys.executable, "-c", CLIENT, mode, host, str(port), str(n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate("go\n", timeout=600)
    if client.returncode != 0:
        raise RuntimeError(f"client failed: {out}")
    if mode == "echo":
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


def bench_mode(mode: str, n: int, bulk_mb: int, pairs: int, interval: float) -> dict[str, Any]:
    exe = os.path.realpath(sys.executable)
    res: dict[str, list[float]] = {k: [] for k in (
        "slowdown", "bulk_slowdown", "cpu_per_1000", "complete_out", "complete_in", "complete_out_pid",
        "bulk_accuracy", "netns_complete_out", "netns_complete_in", "wire", "lost", "rate_none", "rate_agent")}
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
                time.sleep(interval + 1.5)
                events = agent.stop()
            finally:
                ns.close()
            right, pid_only, _ = attributed(events, cpid, port, "out", exe)
            server_right, _, _ = attributed(events, spid, port, "in", exe)
            _r, _p, bulk_bytes = attributed(events, bpid, bport, "out", exe)
            n_out, _, _ = attributed(events, npid, nport, "out", exe)
            n_in, _, _ = attributed(events, nspid, nport, "in", exe)
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
        "slowdown_median": med(res["slowdown"]),
        "slowdown_all": res["slowdown"],
        "connections_per_s_without": med(res["rate_none"]),
        "connections_per_s_with": med(res["rate_agent"]),
        "bulk_slowdown_median": med(res["bulk_slowdown"]),
        "cpu_s_per_1000_connections": med(res["cpu_per_1000"]),
        "wire_bytes_per_flow": med(res["wire"]),
        "kernel_or_pipeline_drops": max(res["lost"]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | complete out (pid+exe) | complete in | netns out/in | bulk bytes | conn/s without/with | "
            "slowdown storm | "
            "slowdown bulk | agent CPU-s / 1k conn | wire B / flow | drops |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['completeness_out']:.4f} | {r['completeness_in']:.4f} | "
            f"{r['netns_completeness_out']:.3f}/{r['netns_completeness_in']:.3f} | {r['bulk_byte_accuracy']:.4f} | "
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
    ap.add_argument("--json", default=str(WORK / "net_storm.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench needs root", file=sys.stderr)
        return 1
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        r = bench_mode(mode, args.n, args.bulk_mb, args.pairs, args.interval)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(table(rows))
    Path(args.json).write_text(json.dumps({"runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
