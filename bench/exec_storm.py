#!/usr/bin/env python3
"""Exec-storm benchmark: heron's process collectors against no agent, interleaved.

    .venv/bin/python bench/exec_storm.py [--n 20000] [--pairs 3] [--modes ebpf,audit,...]
                                          [--parallel 4] [--idle 60] [--churn 200000] [--build] [--peers]

For each collector mode, P pairs of (no agent, agent) runs in alternating order of an exec storm of N
``/bin/true marker-TAG-I``. Reports, per mode: completeness (markers seen with exact argv / run),
workload slowdown (median of paired wall-time ratios), agent CPU-s per 1,000 execs (from workload start
until the last marker reached the output), peak RSS, and wire bytes per exec event (zstd msgpack batches
of 1,000, as the platform sink ships them) against plain JSON lines. Optional phases: several parallel
storms (drops at the fastest rate), idle CPU over a quiet period, RSS after a long churn, a build-like
workload (compiling a small C project), and the peer tools from ../shared/peers on the same workload.
Results go to stdout as a table and to /tmp/heron-bench/exec_storm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import zstandard

from benchutil import proc_cpu, proc_status, wait_in_file
from heron.schema.events import encode_events, from_json

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/heron-bench")
PEERS = ROOT.parent / "shared" / "peers"


def build_workload() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    src, dst = ROOT / "bench" / "workloads" / "exec_storm.c", WORK / "exec_storm"
    if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(dst), str(src)], check=True)
    return dst


class AgentRun:
    def __init__(self, mode: str, out: Path, extra_config: str = "") -> None:
        cfg = WORK / f"agent-{mode}.toml"
        cfg.write_text("health_interval_s = 3600\n[dedupe]\nwindow_s = 1.0\n[process]\npoll_interval_s = 1.0\n"
                       + extra_config)
        out.unlink(missing_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heron.cli.main", "agent", "--output", f"jsonl:{out}",
             "--collector", f"process={mode}", "--config", str(cfg),
             # the process collectors alone, as in docs/benchmarks.md's exec-storm figures
             "--collector", "network=off", "--collector", "file=off", "--collector", "package=off"],
            stderr=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        if "collectors" not in line:
            rest = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"agent {mode} did not start: {line}{rest}")
        time.sleep(0.5)  # snapshot shipped, steady state

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def rss(self) -> int:
        return proc_status(self.proc.pid, "VmRSS")

    def hwm(self) -> int:
        return proc_status(self.proc.pid, "VmHWM")

    def stop(self) -> list[Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        events = []
        with open(self.out, "rb") as f:
            for line in f:
                events.append(from_json(line))
        return events


def count_markers(events: list[Any], tag: str, n: int) -> tuple[int, int]:
    """(markers seen with exact argv, exec events seen for the tag at all)."""
    exact: set[int] = set()
    seen: set[int] = set()
    prefix = f"marker-{tag}-"
    for ev in events:
        if ev.__class__.__name__ != "ProcessExec":
            continue
        argv = ev.process.argv
        if len(argv) == 2 and argv[1].startswith(prefix) and argv[0] == "/bin/true":
            i = int(argv[1][len(prefix):])
            exact.add(i)
            seen.add(i)
        elif ev.process.exe.endswith("/true") and not argv:
            seen.add(-len(seen) - 1)  # exec seen, argv lost
    return len([i for i in exact if 0 <= i < n]), len(seen)


def wire_bytes(events: list[Any]) -> tuple[float, float]:
    """(zstd msgpack bytes per event in batches of 1000, plain JSON bytes per event)."""
    if not events:
        return 0.0, 0.0
    cctx = zstandard.ZstdCompressor(level=3)
    packed = sum(len(cctx.compress(encode_events(events[i:i + 1000]))) for i in range(0, len(events), 1000))
    import msgspec

    plain = sum(len(msgspec.json.encode(e)) + 1 for e in events)
    return packed / len(events), plain / len(events)


def run_storm(binary: Path, n: int, tag: str, parallel: int = 1) -> float:
    procs = [subprocess.Popen([str(binary), str(n), f"{tag}p{k}" if parallel > 1 else tag],
                              stdout=subprocess.PIPE) for k in range(parallel)]
    walls = [float(p.communicate()[0]) for p in procs]
    return max(walls)


def bench_mode(binary: Path, mode: str, n: int, pairs: int) -> dict[str, Any]:
    ratios, cpu_per_k, complete, hwm, wire, json_b, seen_any = [], [], [], [], [], [], []
    for i in range(pairs):
        order = ["none", "agent"] if i % 2 == 0 else ["agent", "none"]
        walls: dict[str, float] = {}
        for what in order:
            tag = f"{mode}{i}{what}{uuid.uuid4().hex[:4]}"
            if what == "none":
                walls[what] = run_storm(binary, n, tag)
                continue
            agent = AgentRun(mode, WORK / f"{mode}.jsonl")
            c0 = agent.cpu()
            walls[what] = run_storm(binary, n, tag)
            wait_in_file(agent.out, f"marker-{tag}-{n - 1}\"", 60 if mode != "procfs" else 3)
            c1 = agent.cpu()
            hwm.append(agent.hwm())
            events = agent.stop()
            exact, seen = count_markers(events, tag, n)
            complete.append(exact / n)
            seen_any.append(seen / n)
            cpu_per_k.append((c1 - c0) / (n / 1000))
            storm_events = [e for e in events if e.__class__.__name__ in ("ProcessExec", "ProcessExit")
                            and e.source != "process.snapshot"]
            w, j = wire_bytes(storm_events)
            wire.append(w)
            json_b.append(j)
        ratios.append(walls["agent"] / walls["none"])
    return {
        "mode": mode, "n": n, "pairs": pairs,
        "completeness_exact_argv": min(complete), "execs_seen": min(seen_any),
        "slowdown_median": statistics.median(ratios), "slowdown_all": ratios,
        "cpu_s_per_1000": statistics.median(cpu_per_k), "peak_rss_mb": max(hwm) / 2**20,
        "wire_bytes_per_event": statistics.median(wire), "json_bytes_per_event": statistics.median(json_b),
    }


def bench_parallel(binary: Path, mode: str, n: int, parallel: int) -> dict[str, Any]:
    tag = f"par{uuid.uuid4().hex[:4]}"
    base = run_storm(binary, n, tag + "b", parallel)
    agent = AgentRun(mode, WORK / f"{mode}-par.jsonl")
    wall = run_storm(binary, n, tag, parallel)
    wait_in_file(agent.out, f"marker-{tag}p{parallel - 1}-{n - 1}\"", 60)
    time.sleep(1.5)
    events = agent.stop()
    got = sum(count_markers(events, f"{tag}p{k}", n)[0] for k in range(parallel))
    health = [e for e in events if e.__class__.__name__ == "AgentHealth"]
    drops = {k: v for k, v in (health[-1].counters if health else {}).items() if "drop" in k or "lost" in k}
    return {"mode": mode, "parallel": parallel, "n_each": n, "exec_rate_per_s": parallel * n / wall,
            "baseline_rate_per_s": parallel * n / base, "completeness": got / (parallel * n), "drop_counters": drops}


def bench_idle(mode: str, seconds: float) -> dict[str, Any]:
    agent = AgentRun(mode, WORK / f"{mode}-idle.jsonl")
    time.sleep(2)
    c0, t0 = agent.cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = agent.cpu(), time.monotonic()
    rss = agent.rss()
    agent.stop()
    return {"mode": mode, "seconds": seconds, "idle_cpu_pct_of_core": 100 * (c1 - c0) / (t1 - t0),
            "rss_mb": rss / 2**20}


def bench_churn(binary: Path, mode: str, total: int) -> dict[str, Any]:
    agent = AgentRun(mode, WORK / f"{mode}-churn.jsonl", extra_config="")
    run_storm(binary, 2000, "warm")
    time.sleep(2)
    rss0 = agent.rss()
    run_storm(binary, total, f"churn{uuid.uuid4().hex[:4]}")
    time.sleep(4)
    rss1 = agent.rss()
    agent.stop()
    (WORK / f"{mode}-churn.jsonl").unlink(missing_ok=True)
    return {"mode": mode, "processes": total, "rss_before_mb": rss0 / 2**20, "rss_after_mb": rss1 / 2**20,
            "growth_mb": (rss1 - rss0) / 2**20}


def bench_build(mode: str) -> dict[str, Any]:
    """A build-like workload: make -j2 over 60 small C files, twice (clean + rebuild)."""
    proj = Path(tempfile.mkdtemp(prefix="heron-build-", dir=WORK))
    for i in range(60):
        (proj / f"f{i}.c").write_text(f"int f{i}(int x) {{ return x * {i} + 1; }}\n")
    (proj / "main.c").write_text("int main(void) { return 0; }\n")
    objs = " ".join(f"f{i}.o" for i in range(60))
    (proj / "Makefile").write_text(f"all: prog\nprog: main.o {objs}\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O1 -c $<\n"
                                   "clean:\n\trm -f *.o prog\n")
    agent = AgentRun(mode, WORK / f"{mode}-build.jsonl")
    for _ in range(2):
        subprocess.run(["make", "-s", "-j2", "-C", str(proj)], check=True)
        subprocess.run(["make", "-s", "-C", str(proj), "clean"], check=True)
    time.sleep(2.5)
    events = agent.stop()
    shutil.rmtree(proj)
    build = [e for e in events if e.__class__.__name__ in ("ProcessExec", "ProcessExit")
             and e.source != "process.snapshot"]
    execs = [e for e in build if e.__class__.__name__ == "ProcessExec"]
    w, j = wire_bytes(build)
    return {"mode": mode, "exec_records": len(execs), "execs_represented": sum(e.count for e in execs),
            "wire_bytes_per_exec": w * len(build) / max(1, sum(e.count for e in execs)),
            "json_bytes_per_event": j}


def run_peers(n: int, pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not (PEERS / "bench.py").exists():
        return {"error": f"{PEERS} not found"}
    tracefs_was_mounted = os.path.exists("/sys/kernel/tracing/events")
    for tool in ("bpftrace", "auditd", "forkstat"):
        r = subprocess.run([sys.executable, str(PEERS / "bench.py"), "w1", tool, "--n", str(n),
                            "--pairs", str(pairs)], capture_output=True, text=True, timeout=3600)
        res = Path(f"/tmp/peers/results/w1_{tool}.json")
        out[tool] = json.loads(res.read_text()) if r.returncode == 0 and res.exists() else {
            "error": (r.stderr or r.stdout)[-300:]}
    if not tracefs_was_mounted and os.path.exists("/sys/kernel/tracing/events"):
        subprocess.run(["umount", "/sys/kernel/tracing"], check=False)  # leave the host as we found it
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--modes", default="")
    ap.add_argument("--parallel", type=int, default=0, help="also run K parallel storms per mode")
    ap.add_argument("--idle", type=float, default=0, help="also measure idle CPU over this many seconds")
    ap.add_argument("--churn", type=int, default=0, help="also measure RSS growth over this many processes")
    ap.add_argument("--build", action="store_true", help="also run the build-like workload")
    ap.add_argument("--peers", action="store_true", help="also run ../shared/peers on the same storm")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench needs root", file=sys.stderr)
        return 1
    binary = build_workload()
    if args.modes:
        modes = args.modes.split(",")
    else:
        doc = json.loads(subprocess.run([sys.executable, "-m", "heron.cli.main", "doctor", "--json"],
                                        check=True, capture_output=True, cwd=ROOT).stdout)
        modes = [m for m, v in doc["collectors"]["process"]["mechanisms"].items() if v["available"]]
    results: dict[str, Any] = {"modes": {}, "parallel": {}, "idle": {}, "churn": {}, "build": {}}
    print(f"{'mode':<15}{'complete':>10}{'seen':>8}{'slowdown':>10}{'cpu s/1k':>10}{'peak MB':>9}"
          f"{'wire B/ev':>10}{'json B/ev':>10}", flush=True)
    for mode in modes:
        r = bench_mode(binary, mode, args.n, args.pairs)
        results["modes"][mode] = r
        print(f"{mode:<15}{r['completeness_exact_argv']:>10.4f}{r['execs_seen']:>8.4f}{r['slowdown_median']:>10.3f}"
              f"{r['cpu_s_per_1000']:>10.4f}{r['peak_rss_mb']:>9.1f}{r['wire_bytes_per_event']:>10.1f}"
              f"{r['json_bytes_per_event']:>10.1f}", flush=True)
    for mode in modes if args.parallel else []:
        r = bench_parallel(binary, mode, args.n // args.parallel, args.parallel)
        results["parallel"][mode] = r
        print(f"parallel {mode}: {r}", flush=True)
    for mode in modes if args.idle else []:
        r = bench_idle(mode, args.idle)
        results["idle"][mode] = r
        print(f"idle {mode}: {r}", flush=True)
    if args.churn:
        r = bench_churn(binary, modes[0], args.churn)
        results["churn"][modes[0]] = r
        print(f"churn {modes[0]}: {r}", flush=True)
    if args.build:
        for mode in modes:
            r = bench_build(mode)
            results["build"][mode] = r
            print(f"build {mode}: {r}", flush=True)
    if args.peers:
        results["peers"] = run_peers(args.n, args.pairs)
        for tool, r in results["peers"].items():
            print(f"peer {tool}: {json.dumps(r)[:400]}", flush=True)
    (WORK / "exec_storm.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
