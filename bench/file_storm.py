#!/usr/bin/env python3
"""File-storm benchmark: heron's file collectors (fanotify, inotify) against no agent, interleaved.

    .venv/bin/python bench/file_storm.py [--n 20000] [--pairs 3] [--modes fanotify,inotify] [--subdirs 10]
                                         [--marks] [--peers]

A known child process (a small C program, compiled once into /tmp/heron-bench) makes N operations
in a watched tree of ``--subdirs`` directories: per file, create+write, chmod, rename, chown,
delete (5 operations). For each mode, P pairs of (no agent, agent) runs in alternating order. The
agent is the real CLI (``heron agent --output jsonl``, file collector pinned, network off, process
on its ladder) with ``coalesce_s = 0``: every kernel event is its own record, so each operation can
be checked. Reported per mode:
- completeness: operations reported with the right path(s) and action (and, for fanotify, the
  child's pid; for inotify attribution "unknown") / operations made. An operation counts when a
  record at its path lists its action (the kernel merges events still queued, e.g. a create with
  the chmod that followed: that one record stands for both);
- slowdown: median of paired wall-time ratios of the workload;
- agent CPU-s per 1,000 operations (from workload start until the end marker was written out);
- records per 1,000 operations with coalesce_s = 0, and with the default coalescing (1 s; one
  extra agent run per mode).
``--marks`` measures the two fanotify mark strategies in this process: placing inode marks for the
default policy (time, count, kernel slab growth), and the CPU a filesystem mark costs for writes
elsewhere on the same filesystem. ``--peers`` runs ../shared/peers (w2 file storm) for inotifywait,
fatrace and auditd. Results go to stdout as markdown tables and to /tmp/heron-bench/file_storm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchutil import proc_cpu, proc_status, wait_in_file
from heron.schema.events import FileChange, from_json

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/heron-bench")
TREE = WORK / "file-tree"
PEERS = ROOT.parent / "shared" / "peers"
OWNER = 65534
OPS_PER_FILE = 5

WORKLOAD_C = r"""
// file_storm N DIR TAG SUBDIRS: per file i: create+write DIR/sI/f-TAG-i, chmod 0600, rename to r-TAG-i,
// chown 65534:65534, unlink (5 operations each, N/5 files). Prints the wall seconds.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]) / 5, subdirs = atoi(argv[4]);
    char f[1024], r[1024];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        snprintf(f, sizeof f, "%s/s%d/f-%s-%d", argv[2], i % subdirs, argv[3], i);
        snprintf(r, sizeof r, "%s/s%d/r-%s-%d", argv[2], i % subdirs, argv[3], i);
        int fd = open(f, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "hello world\n", 12) != 12) { perror("create"); return 1; }
        close(fd);
        if (chmod(f, 0600)) { perror("chmod"); return 1; }
        if (rename(f, r)) { perror("rename"); return 1; }
        if (chown(r, 65534, 65534)) { perror("chown"); return 1; }
        if (unlink(r)) { perror("unlink"); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"""


def build_workload() -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    src, dst = WORK / "file_storm.c", WORK / "file_storm"
    if not src.exists() or src.read_text() != WORKLOAD_C:
        src.write_text(WORKLOAD_C)
    if not dst.exists() or dst.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-o", str(dst), str(src)], check=True)
    return dst


def fresh_tree(subdirs: int) -> None:
    shutil.rmtree(TREE, ignore_errors=True)
    for i in range(subdirs):
        (TREE / f"s{i}").mkdir(parents=True)


class AgentRun:
    def __init__(self, mode: str, coalesce_s: float) -> None:
        state = WORK / f"state-{mode}"
        shutil.rmtree(state, ignore_errors=True)
        cfg = WORK / f"file-agent-{mode}.toml"
        cfg.write_text(
            f'state_dir = "{state}"\nhealth_interval_s = 3600\n'
            f"[file]\ndefault_policy = false\ncoalesce_s = {coalesce_s}\nscan_interval_s = -1\n"
            f"rate_per_path_per_min = 1000\n"
            f'[[file.watches]]\npath = "{TREE}"\n')
        self.out = WORK / f"file-{mode}.jsonl"
        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heron.cli.main", "agent", "--output", f"jsonl:{self.out}", "--config", str(cfg),
             "--collector", f"file={mode}", "--collector", "network=off", "--collector", "package=off"],
            stderr=subprocess.PIPE, cwd=ROOT)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        if "collectors" not in line:
            rest = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"agent {mode} did not start: {line}{rest}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # never block on a full pipe
        time.sleep(0.5)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> list[FileChange]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        out: list[FileChange] = []
        with open(self.out, "rb") as f:
            for line in f:
                ev = from_json(line)
                if isinstance(ev, FileChange):
                    out.append(ev)
        return out


def run_storm(binary: Path, n: int, tag: str, subdirs: int) -> tuple[float, int]:
    p = subprocess.Popen([str(binary), str(n), str(TREE), tag, str(subdirs)], stdout=subprocess.PIPE)
    out = p.communicate()[0]
    if p.returncode != 0:
        raise RuntimeError(f"workload failed ({p.returncode})")
    return float(out), p.pid


def completeness(events: list[FileChange], mode: str, tag: str, n: int, subdirs: int, pid: int) -> float:
    """Operations reported with the right path(s), action and writer / operations made."""
    by_path: dict[str, list[FileChange]] = {}
    for ev in events:
        by_path.setdefault(ev.path, []).append(ev)

    def writer(ev: FileChange) -> bool:
        if mode == "fanotify":
            return ev.attribution == "process" and ev.process is not None and ev.process.pid == pid
        return ev.attribution == "unknown" and ev.process is None

    def has(path: str, action: str, old: str | None = None) -> bool:
        return any(action in ev.actions and writer(ev) and (old is None or ev.old_path == old)
                   for ev in by_path.get(path, ()))

    ok = 0
    for i in range(n // OPS_PER_FILE):
        f, r = f"{TREE}/s{i % subdirs}/f-{tag}-{i}", f"{TREE}/s{i % subdirs}/r-{tag}-{i}"
        ok += has(f, "create") + has(f, "attrib") + has(r, "rename", f) + has(r, "attrib") + has(r, "delete")
    return ok / (n // OPS_PER_FILE * OPS_PER_FILE)


def end_marker(tag: str) -> str:
    """Written by this (bench) process after the storm: once it is in the output, the storm is."""
    path = TREE / f"end-{tag}"
    path.write_text("end")
    return str(path)


def bench_mode(binary: Path, mode: str, n: int, pairs: int, subdirs: int) -> dict[str, Any]:
    ratios, cpu_k, complete, records_k, hwm = [], [], [], [], []
    for i in range(pairs):
        walls: dict[str, float] = {}
        for what in (["none", "agent"] if i % 2 == 0 else ["agent", "none"]):
            fresh_tree(subdirs)
            tag = f"{mode}{i}{what}{uuid.uuid4().hex[:4]}"
            if what == "none":
                walls[what] = run_storm(binary, n, tag, subdirs)[0]
                continue
            agent = AgentRun(mode, coalesce_s=0)
            c0 = agent.cpu()
            walls[what], pid = run_storm(binary, n, tag, subdirs)
            seen = wait_in_file(agent.out, end_marker(tag), 120)
            c1 = agent.cpu()
            hwm.append(proc_status(agent.proc.pid, "VmHWM"))
            events = agent.stop()
            if not seen:
                print(f"warning: {mode}: end marker not seen within 120 s", file=sys.stderr)
            storm = [e for e in events if f"-{tag}-" in e.path]
            complete.append(completeness(storm, mode, tag, n, subdirs, pid))
            cpu_k.append((c1 - c0) / (n / 1000))
            records_k.append(len(storm) / (n / 1000))
        ratios.append(walls["agent"] / walls["none"])
    # Default coalescing: how many records the same storm becomes.
    fresh_tree(subdirs)
    agent = AgentRun(mode, coalesce_s=1.0)
    tag = f"{mode}co{uuid.uuid4().hex[:4]}"
    run_storm(binary, n, tag, subdirs)
    wait_in_file(agent.out, end_marker(tag), 120)
    coalesced = [e for e in agent.stop() if f"-{tag}-" in e.path]
    return {
        "mode": mode, "n": n, "pairs": pairs, "completeness": min(complete),
        "slowdown_median": statistics.median(ratios), "slowdown_all": ratios,
        "cpu_s_per_1000_ops": statistics.median(cpu_k), "records_per_1000_ops": statistics.median(records_k),
        "records_per_1000_ops_default_coalescing": len(coalesced) / (n / 1000),
        "peak_rss_mb": max(hwm) / 2**20,
    }


# -- mark strategies (in this process) --------------------------------------------------------------

def slab_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


class Collector:
    """An emit that keeps the events (sources call it from their threads)."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, events: Any) -> None:
        with self.lock:
            self.events.extend(events)


def bench_marks(binary: Path, n: int) -> dict[str, Any]:
    """Inode marks for the default policy vs a filesystem mark, and the cost of unrelated writes."""
    from heron.agent.config import FileConfig, FileWatch
    from heron.agent.fim.policy import Policy
    from heron.agent.health import Health
    from heron.agent.host import detect_host
    from heron.agent.sources.base import SourceContext
    from heron.agent.sources.file.common import iter_watch_dirs, watch_plan
    from heron.agent.sources.file.fanotify import FanotifyFileSource
    from heron.agent.sources.file.inotify import InotifyFileSource

    host = detect_host()
    out: dict[str, Any] = {}
    for cls, marks in ((FanotifyFileSource, "inode"), (InotifyFileSource, "inode")):
        state = tempfile.mkdtemp(prefix="heron-marks-", dir=WORK)
        health = Health()
        src = cls(SourceContext(host, health, Collector(), {"config": FileConfig(scan_interval_s=-1),
                                                             "state_dir": state, "fanotify_marks": marks}))
        # Walk first so the dentry/inode caches are warm: the slab growth is then the marks' own.
        policy = Policy.from_config(FileConfig())
        for root, recursive in watch_plan(policy)[0]:
            for _ in iter_watch_dirs(root, recursive, policy):
                pass
        s0, t0 = slab_kb(), time.monotonic()
        src.snapshot()
        elapsed, s1 = time.monotonic() - t0, slab_kb()
        mech = cls.mechanism
        out[f"default_policy_{mech}"] = {"marks": health.get(f"file.{mech}.marks"), "seconds": round(elapsed, 3),
                                         "slab_growth_kb": s1 - s0}
        src.close()
        shutil.rmtree(state, ignore_errors=True)
    # Unrelated writes on the watched filesystem: the storm runs in TREE, the policy watches another dir.
    watched = WORK / "marks-watched"
    watched.mkdir(exist_ok=True)
    for marks in ("inode", "filesystem"):
        fresh_tree(10)
        state = tempfile.mkdtemp(prefix="heron-marks-", dir=WORK)
        col, health = Collector(), Health()
        cfg = FileConfig(default_policy=False, watches=[FileWatch(path=str(watched))], scan_interval_s=-1)
        src = FanotifyFileSource(SourceContext(host, health, col, {"config": cfg, "state_dir": state,
                                                                     "fanotify_marks": marks}))
        src.snapshot()
        stop = threading.Event()
        th = threading.Thread(target=src.run, args=(stop,), daemon=True)
        th.start()
        time.sleep(0.3)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        wall, _ = run_storm(binary, n, f"m{marks}", 10)
        time.sleep(0.5)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        th.join(30)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out[f"unrelated_writes_{marks}"] = {"ops": n, "workload_s": round(wall, 3),
                                            "cpu_s_per_1000_unrelated_ops": round(cpu / (n / 1000), 4),
                                            "events_read": health.get("file.fanotify.received"),
                                            "records": len(col.events)}
        shutil.rmtree(state, ignore_errors=True)
    fresh_tree(10)
    out["unrelated_writes_none"] = {"ops": n, "workload_s": round(run_storm(binary, n, "mnone", 10)[0], 3)}
    return out


def run_peers(n: int, pairs: int) -> dict[str, Any]:
    if not (PEERS / "bench.py").exists():
        return {"error": f"{PEERS} not found"}
    out: dict[str, Any] = {}
    for tool in ("inotifywait", "fatrace", "auditd"):
        r = subprocess.run([sys.executable, str(PEERS / "bench.py"), "w2", tool, "--n", str(n), "--pairs", str(pairs)],
                           capture_output=True, text=True, timeout=3600)
        res = Path(f"/tmp/peers/results/w2_{tool}.json")
        out[tool] = json.loads(res.read_text()) if r.returncode == 0 and res.exists() else {
            "error": (r.stderr or r.stdout)[-300:]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="operations per run (5 per file)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--modes", default="fanotify,inotify")
    ap.add_argument("--subdirs", type=int, default=10)
    ap.add_argument("--marks", action="store_true", help="also measure inode vs filesystem marks")
    ap.add_argument("--peers", action="store_true", help="also run ../shared/peers w2 (inotifywait, fatrace, auditd)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench needs root", file=sys.stderr)
        return 1
    binary = build_workload()
    results: dict[str, Any] = {"modes": {}, "marks": {}, "peers": {}}
    print("| mode | completeness | slowdown | agent CPU-s / 1k ops | records / 1k ops (coalesce 0) "
          "| records / 1k ops (default 1 s) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for mode in [m for m in args.modes.split(",") if m]:
        r = bench_mode(binary, mode, args.n, args.pairs, args.subdirs)
        results["modes"][mode] = r
        print(f"| {mode} | {r['completeness']:.4f} | {r['slowdown_median']:.3f} | {r['cpu_s_per_1000_ops']:.4f} "
              f"| {r['records_per_1000_ops']:.0f} | {r['records_per_1000_ops_default_coalescing']:.0f} "
              f"| {r['peak_rss_mb']:.0f} |", flush=True)
    if args.marks:
        results["marks"] = bench_marks(binary, args.n)
        print("\n| mark measurement | figures |\n|---|---|")
        for k, v in results["marks"].items():
            print(f"| {k} | {json.dumps(v)} |", flush=True)
    if args.peers:
        results["peers"] = run_peers(args.n, args.pairs)
        for tool, r in results["peers"].items():
            print(f"peer {tool}: {json.dumps(r)[:400]}", flush=True)
    shutil.rmtree(TREE, ignore_errors=True)
    (WORK / "file_storm.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
