#!/usr/bin/env python3
"""Platform ingest benchmark: throughput per core and end-to-end alert latency, SQLite and PostgreSQL.

    .venv/bin/python bench/ingest.py [--backends sqlite,postgresql] [--agents 8] [--batches 40]
                                     [--batch-events 1000] [--clusters 300] [--triggers 100]
                                     [--trigger-every 0.3] [--flush 1.0] [--rate 2000] [--json PATH]

For each backend a fresh ``heron server`` runs as a subprocess (SQLite in its data dir; PostgreSQL in a
throwaway database ``heron_bench_<random>`` created on ``--pg-url`` and dropped afterwards). ``--agents``
simulated agents enrol with the enrolment token, then:

1. throughput: every agent posts ``--batches`` batches of ``--batch-events`` events (process.exec with argv
   and ancestors, process.exit, net.flow, net.dns, file.change from ``--clusters`` process clusters),
   zstd + msgpack through heron's own encoder, one request at a time per agent like the real shipper, all
   agents at once. The batches are encoded before the clock starts, so the figure is the server's.
   Reported: events accepted per wall second, and per CPU second of the server process (utime+stime from
   /proc: events/s per core); on PostgreSQL also per CPU second of server + all postgres processes.
2. alert latency: the agents keep shipping ordinary events (``--rate`` events/s in all) through the agent's
   batching path: a buffer flushed every ``--flush`` s (the agent's ``batch_max_delay_s``, default 1 s). Every
   ``--trigger-every`` s one agent "sees" an interactive shell started by nginx (rule "Shell spawned by a
   server process"), stamped ts = that moment, and buffers it with the rest. A poller reads
   GET /api/v1/alerts every ``--poll`` s; latency = when the alert was stored - the event's ts: the alert's
   ``created`` when the trigger opened it, its ``updated`` when the trigger is its latest detection (alerts
   group one host's detections of one rule), else when a poll first listed it. Reported: p50, p99, max.

Prints a markdown table and one JSON line; everything also goes to ``--json`` (default
/tmp/heron-bench/ingest.json). Smoke test: ``--agents 2 --batches 2 --triggers 3 --backends sqlite``.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchutil import proc_cpu, proc_status
from heron.schema.events import Event, to_json
from simagents import (
    PG_ADMIN_URL,
    TRIGGER_RULE,
    Client,
    Host,
    HttpError,
    ServerProc,
    SimAgent,
    create_pg_database,
    drop_pg_database,
    fleet,
    percentile,
    postgres_cpu,
)

WORK = Path("/tmp/heron-bench")
S = 10**9


def check_rules(hosts: list[Host], n: int = 3000) -> tuple[dict[str, int], list[str]]:
    """Rules the ordinary mix matches (must be none) and the rules the trigger matches (must name
    TRIGGER_RULE), evaluated locally with the default pack. Uses copies of the hosts' generators."""
    import copy

    from heron.detect import RuleSet

    rules = RuleSet()
    host = copy.deepcopy(hosts[0])
    now = time.time_ns()
    noise: dict[str, int] = {}
    for ev in host.events(n, now - 60 * S, now):
        for m in rules.evaluate(json.loads(to_json(ev))):
            noise[m.rule] = noise.get(m.rule, 0) + 1
    trigger, _ = host.trigger(now)
    return noise, [m.rule for m in rules.evaluate(json.loads(to_json(trigger)))]


# -- throughput --------------------------------------------------------------------------------------

def throughput(server: ServerProc, agents: list[SimAgent], args: argparse.Namespace, pg: bool) -> dict[str, Any]:
    now = time.time_ns()
    span = 600 * S  # events spread over the last 10 minutes (inside any retention and partition)
    per_agent = args.batches + 1
    bodies: list[list[bytes]] = []
    for a in agents:
        mine = []
        for b in range(per_agent):
            start = now - span + b * span // per_agent
            mine.append(a.encode(a.host.events(args.batch_events, start, start + span // per_agent)))
        bodies.append(mine)
    wire = sum(len(b) for mine in bodies for b in mine[1:])
    for a, mine in zip(agents, bodies, strict=True):  # warm-up batch: first-request costs not measured
        a.post(mine[0])
    errors: list[str] = []
    accepted = [0] * len(agents)

    def ship(i: int) -> None:
        try:
            for body in bodies[i][1:]:
                accepted[i] += agents[i].post(body)
        except (OSError, HttpError) as e:
            errors.append(f"agent {i}: {e}")

    threads = [threading.Thread(target=ship, args=(i,)) for i in range(len(agents))]
    cpu0, pg0, w0 = proc_cpu(server.pid), postgres_cpu() if pg else 0.0, time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - w0
    cpu = proc_cpu(server.pid) - cpu0
    pg_cpu = postgres_cpu() - pg0 if pg else 0.0
    total = sum(accepted)
    n_events = len(agents) * args.batches * args.batch_events
    out: dict[str, Any] = {
        "events_sent": n_events, "events_accepted": total, "batches": len(agents) * args.batches,
        "wall_s": round(wall, 3), "events_per_s_wall": round(total / wall), "server_cpu_s": round(cpu, 3),
        "events_per_core_s": round(total / cpu) if cpu else None, "wire_bytes_per_event": round(wire / n_events, 1),
        "retries": sum(a.retries for a in agents), "errors": errors[:5],
        "server_peak_rss_mb": round(proc_status(server.pid, "VmHWM") / 1e6, 1),
    }
    if pg:
        out["postgres_cpu_s"] = round(pg_cpu, 3)
        out["events_per_core_s_with_db"] = round(total / (cpu + pg_cpu)) if cpu + pg_cpu else None
    return out


# -- alert latency -----------------------------------------------------------------------------------

class LiveAgent(threading.Thread):
    """An agent shipping in real time: ordinary events at ``rate``/s, flushed every ``flush`` s as the
    agent's shipper does; triggers queued by the injector join the buffer when they are "seen"."""

    def __init__(self, agent: SimAgent, rate: float, flush: float, offset: float,
                 injected: list[dict[str, Any]], lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        self.agent, self.rate, self.flush, self.offset = agent, rate, flush, offset
        self.triggers: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.injected, self.lock = injected, lock
        self.stop_flag = threading.Event()
        self.error: str | None = None
        self.buffer: list[Event] = []
        self.owed = 0.0

    def see_trigger(self) -> None:
        """The moment the agent saw the event: its ts. Built on this thread (the host is not shared)."""
        self.triggers.put(time.time_ns())

    def _fill(self, since: int, now: int) -> None:
        self.owed += self.rate * (now - since) / S
        n = int(self.owed)
        self.owed -= n
        self.buffer += self.agent.host.events(n, since, now)
        while not self.triggers.empty():
            ts = self.triggers.get()
            event, pid = self.agent.host.trigger(ts)
            self.buffer.append(event)
            with self.lock:
                self.injected.append({"ts": ts, "pid": pid, "host": self.agent.host.hostname})

    def run(self) -> None:
        last = time.time_ns()
        wake = time.monotonic() + self.offset
        try:
            while True:
                stopping = self.stop_flag.wait(max(0.0, wake - time.monotonic()))
                wake += self.flush
                now = time.time_ns()
                self._fill(last, now)
                last = now
                if self.buffer:
                    self.agent.post(self.agent.encode(self.buffer))
                    self.buffer = []
                if stopping:
                    return
        except (OSError, HttpError) as e:
            self.error = str(e)


def alert_latency(server: ServerProc, agents: list[SimAgent], args: argparse.Namespace) -> dict[str, Any]:
    injected: list[dict[str, Any]] = []
    lock = threading.Lock()
    live = [LiveAgent(a, args.rate / len(agents), args.flush, args.flush * i / len(agents), injected, lock)
            for i, a in enumerate(agents)]
    admin = server.token("admin")
    start = time.time_ns()
    seen: dict[int, dict[str, Any]] = {}  # trigger pid -> {"at": poll time, "created": alert created}
    polling = threading.Event()
    poll_errors: list[str] = []

    def poll() -> None:
        client = Client(server.url, timeout=10)
        path = f"/api/v1/alerts?since={start}&limit=500"
        while not polling.is_set():
            try:
                alerts = client.json("GET", path, admin)["alerts"]
            except (OSError, HttpError, KeyError, ValueError) as e:
                poll_errors.append(str(e))
                if len(poll_errors) > 20:
                    return
                time.sleep(1)
                continue
            at = time.time_ns()
            with lock:
                pending = [t for t in injected if t["pid"] not in seen]
            mine = [a for a in alerts if TRIGGER_RULE in (a.get("rule"), a.get("title"))]
            for t in pending:
                # Its own alert (the shell's pid), else a grouped one of this host whose last detection is at
                # or after the trigger (one agent posts its batches in order, so that one holds it).
                holders = [a for a in mine if a.get("pid") == t["pid"]] or [
                    a for a in mine if a.get("host") == t["host"] and int(a.get("last_ts") or 0) >= t["ts"]]
                if not holders:
                    continue
                # When it was stored: `created` if the trigger opened the alert, `updated` if it is the
                # alert's latest detection; otherwise only the poll time is known.
                stored = next((a.get("created") if a.get("first_ts") == t["ts"] else a.get("updated")
                               for a in holders if t["ts"] in (a.get("first_ts"), a.get("last_ts"))), None)
                seen[t["pid"]] = {"at": at, "stored": stored}
            time.sleep(args.poll)

    poller = threading.Thread(target=poll, daemon=True)
    for t in live:
        t.start()
    poller.start()
    for k in range(args.triggers):
        time.sleep(args.trigger_every)
        live[k % len(live)].see_trigger()
    deadline = time.monotonic() + args.latency_timeout
    while time.monotonic() < deadline and poller.is_alive():
        with lock:
            if len(injected) >= args.triggers and all(t["pid"] in seen for t in injected):
                break
        time.sleep(0.1)
    polling.set()
    for t in live:
        t.stop_flag.set()
    for t in live:
        t.join(30)
    with lock:
        done = list(injected)
    lat = [(seen[t["pid"]]["stored"] or seen[t["pid"]]["at"]) - t["ts"] for t in done if t["pid"] in seen]
    ms = [x / 1e6 for x in lat]
    stored = sum(1 for v in seen.values() if v["stored"])
    return {
        "triggers": args.triggers, "injected": len(done), "alerted": len(ms), "flush_s": args.flush,
        "background_events_per_s": args.rate, "poll_s": args.poll,
        "clock": f"alert created/updated for {stored}, first poll listing it for {len(seen) - stored}",
        "p50_ms": round(percentile(ms, 50), 1) if ms else None, "p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "max_ms": round(max(ms), 1) if ms else None,
        "errors": [e for e in [*(t.error for t in live), *poll_errors[:3]] if e],
    }


# -- one backend ---------------------------------------------------------------------------------------

def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    work = WORK / f"ingest-{backend}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    db_url = create_pg_database(args.pg_url) if backend == "postgresql" else None
    server: ServerProc | None = None
    try:
        server = ServerProc(work / "platform", db_url, log=work / "server.log")
        hosts = fleet(args.agents, args.clusters, seed=args.seed)
        agents = [SimAgent.enroll(server.url, server.token("enrollment"), h) for h in hosts]
        result: dict[str, Any] = {"backend": backend, "agents": args.agents, "clusters": args.clusters}
        result["throughput"] = throughput(server, agents, args, backend == "postgresql")
        if args.triggers:
            result["latency"] = alert_latency(server, agents, args)
        for a in agents:
            a.client.close()
        return result
    finally:
        if server is not None:
            server.stop()
        if db_url:
            drop_pg_database(db_url, args.pg_url)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=PG_ADMIN_URL, help="PostgreSQL to create the throwaway database on")
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--batches", type=int, default=40, help="batches per agent in the throughput phase")
    ap.add_argument("--batch-events", type=int, default=1000, help="events per batch (the agent's batch_max_events)")
    ap.add_argument("--clusters", type=int, default=300, help="process clusters across the fleet")
    ap.add_argument("--triggers", type=int, default=100, help="rule-triggering events in the latency phase (0: skip)")
    ap.add_argument("--trigger-every", type=float, default=0.3, help="seconds between two triggers")
    ap.add_argument("--flush", type=float, default=1.0, help="agent flush interval, s (batch_max_delay_s)")
    ap.add_argument("--rate", type=float, default=2000, help="ordinary events/s shipped during the latency phase")
    ap.add_argument("--poll", type=float, default=0.05, help="seconds between two reads of the alerts API")
    ap.add_argument("--latency-timeout", type=float, default=60, help="wait for the last alerts at most this long")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=str(WORK / "ingest.json"))
    ap.add_argument("--keep", action="store_true", help="keep the data dirs and server logs under /tmp/heron-bench")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    noise, trigger_rules = check_rules(fleet(1, args.clusters, seed=args.seed))
    if noise:
        print(f"warning: the ordinary mix matches default rules: {noise}", file=sys.stderr)
    if TRIGGER_RULE not in trigger_rules:
        print(f"warning: the trigger does not match {TRIGGER_RULE!r} locally (it matches {trigger_rules})",
              file=sys.stderr)
    results = [run_backend(b.strip(), args) for b in args.backends.split(",") if b.strip()]

    print(f"Command: `{' '.join(['.venv/bin/python', 'bench/ingest.py', *sys.argv[1:]])}`\n")
    print("| backend | events | wall s | events/s (wall) | server CPU-s | events/s per core | "
          "with DB CPU | alerts p50 ms | p99 ms | max ms | alerted |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t, lat = r["throughput"], r.get("latency") or {}
        with_db = t.get("events_per_core_s_with_db", "(in process)")
        print(f"| {r['backend']} | {t['events_accepted']:,} | {t['wall_s']} | {t['events_per_s_wall']:,} | "
              f"{t['server_cpu_s']} | {t['events_per_core_s']} | {with_db} | {lat.get('p50_ms')} | "
              f"{lat.get('p99_ms')} | {lat.get('max_ms')} | {lat.get('alerted')}/{lat.get('triggers')} |")
        for e in [*t["errors"], *lat.get("errors", [])]:
            print(f"  {r['backend']} error: {e}")
    summary = {"bench": "ingest", "args": vars(args), "rule_noise": noise, "results": results}
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
