#!/usr/bin/env python3
"""Console load benchmark: each console page opened in a real browser with a million events stored.

    .venv/bin/python bench/console_load.py [--events 1000000] [--hosts 8] [--dir /var/tmp/heron-bench-1m]
                                           [--rebuild] [--repeat 5] [--json PATH]

Builds (once; reused from ``--dir`` while its events are inside the retention window, ``--rebuild``
forces it) a platform SQLite database holding ``--events`` events of the realistic mix
(bench/simagents.py: process.exec with argv and ancestors, exits, flows, DNS, file changes) from
``--hosts`` hosts over the last 24 hours:
- the hosts enrol over HTTP and post ``--pipeline-events`` events through ingest (rules, behaviour graph,
  alerts run on them), among them a few attack sequences per host, so alerts, trees and the graph exist;
- the rest goes in through the storage layer's batch insert (``SqlStorage.ingest_batch``, 20,000 events per
  transaction, no analysis): the fast path, the same rows ingest writes.

Then a ``heron server`` serves it and Debian's chromium (Playwright, tests/browser.py's launch flags) opens
each page with the admin token; time = from the start of the navigation (a full load: modules, session,
the page's API calls) to the page's data rendered (a selector the page fills, e.g. the first row of its
table). Each page is loaded once to warm up, then ``--repeat`` times; reported: median and worst, and
whether the worst is under 1 s. The API calls behind the pages are timed alone too.
Prints a markdown table and one JSON line (also written to ``--json``, default
/tmp/heron-bench/console_load.json). Smoke test: ``--events 20000 --dir /tmp/heron-bench/console-20k``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from heron.platform.api.ingest import event_row
from heron.platform.storage.sql import SqlStorage
from simagents import Client, HttpError, ServerProc, SimAgent, fleet

WORK = Path("/tmp/heron-bench")
S = 10**9
DAY = 86_400 * S
MARKER = "bench.json"
RETENTION_DAYS = 7.0  # PlatformConfig.retention_days: older events are deleted when the server starts
BULK = 20_000  # events per storage transaction

# (name, route, selector of the data the page draws, selector of its "nothing found" note or ""). {alert}
# is an alert id, {host} a host name, {node} a process-cluster node of the graph.
PAGES: list[tuple[str, str, str, str]] = [
    ("overview", "#/overview", "#ov-events tbody tr", "#ov-events-empty"),
    ("hosts", "#/hosts", "#agents tbody tr", "#agents-empty"),
    ("alerts", "#/alerts", "#alerts tbody tr", "#alerts-empty:not([hidden])"),
    ("alert detail", "#/alerts/{alert}", "#alert-tree li", ""),
    ("events", "#/events", "#events tbody tr", "#events-empty:not([hidden])"),
    ("events, type + host", "#/events?type=net.dns&host={host}", "#events tbody tr", "#events-empty:not([hidden])"),
    ("events, text search", "#/events?q=gunicorn", "#events tbody tr", "#events-empty:not([hidden])"),
    ("network flows", "#/flows", "#flows tbody tr", "#flows-empty:not([hidden])"),
    ("file changes", "#/files", "#files tbody tr", "#files-empty:not([hidden])"),
    ("vulnerabilities", "#/vulns", "#vulns tbody tr", "#vulns-empty:not([hidden])"),
    ("graph search", "#/graph", "#graph-nodes tbody tr", ""),
    ("graph neighbourhood", "#/graph?node={node}", "#graph-edges tbody tr", ""),
]
# The API calls the pages make, timed alone (path, with the same placeholders).
API_CALLS = ["/api/v1/overview", "/api/v1/agents", "/api/v1/alerts?limit=200", "/api/v1/alerts/{alert}",
             "/api/v1/events?limit=100", "/api/v1/events?type=net.dns&host={host}&limit=100",
             "/api/v1/events?q=gunicorn&limit=100", "/api/v1/events?type=net.flow&limit=100",
             "/api/v1/events?type=file.change&limit=100", "/api/v1/graph/nodes?limit=100",
             "/api/v1/graph/neighbourhood?node={node}&limit=60"]


def db_file(data_dir: Path) -> Path:
    from heron.platform.server import DB_FILE

    return data_dir / DB_FILE


# -- building the database -----------------------------------------------------------------------------

def build(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = root / "platform"
    now = time.time_ns()
    hosts = fleet(args.hosts, args.clusters, seed=args.seed)
    t0 = time.perf_counter()
    server = ServerProc(data, log=root / "server.log")
    try:
        agents = [SimAgent.enroll(server.url, server.token("enrollment"), h) for h in hosts]
        per_host = args.pipeline_events // len(agents)
        for a in agents:  # through ingest: rules, graph and alerts run
            for start in range(0, per_host, 1000):
                n = min(1000, per_host - start)
                end = now - (per_host - start - n) * 10**6  # the last minutes, 1 ms apart
                events = a.host.events(n, end - n * 10**6, end)
                if start == 0:
                    events += a.host.attacks(end - 30 * S) + a.host.attacks(end - 20 * S)
                a.post(a.encode(events))
            a.client.close()
    finally:
        server.stop()
    pipeline_s = time.perf_counter() - t0
    # The bulk: the storage layer's batch insert, big transactions, no analysis.
    t1 = time.perf_counter()
    storage = SqlStorage.open(str(db_file(data)))
    bulk = max(0, args.events - args.pipeline_events)
    try:
        per_host = bulk // len(agents)
        for i, a in enumerate(agents):
            n_host = per_host + (bulk - per_host * len(agents) if i == 0 else 0)
            span_start = now - DAY + 5 * 60 * S
            for k, start in enumerate(range(0, n_host, BULK)):
                n = min(BULK, n_host - start)
                lo = span_start + (DAY - 10 * 60 * S) * start // max(n_host, 1)
                hi = span_start + (DAY - 10 * 60 * S) * (start + n) // max(n_host, 1)
                rows = [event_row(e) for e in a.host.events(n, lo, hi)]  # type: ignore[arg-type]
                storage.ingest_batch(a.agent_id, f"bulk-{k}:0", rows, None, now)
    finally:
        storage.close()
    info = {"events": args.events, "hosts": args.hosts, "pipeline_events": args.pipeline_events, "built": now,
            "pipeline_s": round(pipeline_s, 1), "bulk_s": round(time.perf_counter() - t1, 1),
            "db_bytes": db_file(data).stat().st_size}
    (root / MARKER).write_text(json.dumps(info))
    return info


def ensure_database(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The cached database's facts and whether it was built now."""
    root = Path(args.dir)
    try:
        info = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        info = None
    fresh = info is not None and time.time_ns() - info["built"] < (RETENTION_DAYS - 1.5) * DAY
    if (args.rebuild or info is None or not fresh or info["events"] != args.events or info["hosts"] != args.hosts
            or info.get("pipeline_events") != args.pipeline_events):
        why = "--rebuild" if args.rebuild else "none cached" if info is None else \
            "too old (retention)" if not fresh else "other sizes"
        print(f"building {args.events:,} events in {root} ({why})...", file=sys.stderr, flush=True)
        return build(root, args), True
    return info, False


# -- measuring -------------------------------------------------------------------------------------------

def fill(template: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        template = template.replace("{" + name + "}", urllib.parse.quote(value))
    return template


def missing(template: str, ids: dict[str, str]) -> list[str]:
    return [name for name in ("alert", "node", "host") if "{" + name + "}" in template and name not in ids]


def time_api(server: ServerProc, token: str, ids: dict[str, str], repeat: int) -> list[dict[str, Any]]:
    client = Client(server.url)
    out = []
    for template in API_CALLS:
        if missing(template, ids):
            continue
        path = fill(template, ids)
        times, status = [], 0
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            status, _ = client.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            times.append((time.perf_counter() - t0) * 1e3)
        out.append({"path": path, "status": status, "median_ms": round(statistics.median(times[1:]), 1),
                    "max_ms": round(max(times[1:]), 1)})
    client.close()
    return out


def time_pages(server: ServerProc, token: str, ids: dict[str, str], repeat: int,
               timeout_s: float) -> list[dict[str, Any]]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    # Debian's chromium, as tests/browser.py finds it (HERON_CHROMIUM overrides).
    executable = os.environ.get("HERON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        raise SystemExit("chromium is not installed (scripts/bootstrap.sh --test installs Debian's chromium)")
    out = []
    with sync_playwright() as pw:
        # --no-sandbox: run as root, where chromium refuses its sandbox (as tests/browser.py).
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(timeout_s * 1000)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server.url}/#token={token}")  # the token goes to sessionStorage, as `heron up` prints it
        page.wait_for_selector("#nav:not([hidden])")
        for name, route, rows, empty in PAGES:
            if missing(route, ids):
                out.append({"page": name, "route": route, "error": f"no {', '.join(missing(route, ids))} in the data"})
                continue
            url = f"{server.url}/{fill(route, ids)}"
            times: list[float] = []
            error = None
            drawn = 0
            for _ in range(repeat + 1):  # the first load warms caches and is not counted
                page.goto("about:blank")
                t0 = time.perf_counter()
                try:
                    page.goto(url)
                    page.wait_for_selector(f"{rows}, {empty}" if empty else rows, state="attached")
                except PlaywrightError as e:
                    error = str(e).splitlines()[0]
                    break
                times.append((time.perf_counter() - t0) * 1e3)
                drawn = page.locator(rows).count()
            row: dict[str, Any] = {"page": name, "route": fill(route, ids), "selector": rows, "rows": drawn}
            if error or len(times) < 2:
                row["error"] = error
            else:
                row |= {"median_ms": round(statistics.median(times[1:]), 1), "max_ms": round(max(times[1:]), 1),
                        "under_1s": max(times[1:]) < 1000}
            out.append(row)
        context.close()
        browser.close()
    if errors:
        out.append({"page": "(page errors)", "error": "; ".join(errors[:5])})
    return out


def page_ids(server: ServerProc, token: str, host: str) -> dict[str, str]:
    """Ids the detail pages open: the newest alert and a process-cluster node (absent ones are skipped)."""
    ids = {"host": host}
    client = Client(server.url)
    for name, path, key in (("alert", "/api/v1/alerts?limit=1", "alerts"),
                            ("node", "/api/v1/graph/nodes?kind=cluster&limit=1", "nodes")):
        try:
            items = client.json("GET", path, token)[key]
        except (OSError, HttpError, KeyError, ValueError) as e:
            print(f"warning: {path}: {e}", file=sys.stderr)
            continue
        if items:
            ids[name] = str(items[0]["id"])
    client.close()
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--clusters", type=int, default=300)
    ap.add_argument("--pipeline-events", type=int, default=16_000,
                    help="events posted through ingest (rules, graph, alerts); the rest is bulk-inserted")
    ap.add_argument("--dir", default="/var/tmp/heron-bench-1m", help="where the database is built and cached")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=30, help="seconds a page may take before it counts as failed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=str(WORK / "console_load.json"))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    info, built = ensure_database(args)
    data = Path(args.dir) / "platform"
    server = ServerProc(data, log=Path(args.dir) / "server.log")
    try:
        token = server.token("admin")
        ids = page_ids(server, token, fleet(1, args.clusters, seed=args.seed)[0].hostname)
        api = time_api(server, token, ids, args.repeat)
        pages = time_pages(server, token, ids, args.repeat, args.timeout)
    finally:
        server.stop()

    print(f"Command: `{' '.join(['.venv/bin/python', 'bench/console_load.py', *sys.argv[1:]])}`\n")
    print(f"Database: {info['events']:,} events from {info['hosts']} hosts ({info['pipeline_events']:,} through "
          f"ingest), {info['db_bytes'] / 1e6:,.0f} MB SQLite; {'built now' if built else 'reused'} "
          f"(ingest part {info['pipeline_s']} s, bulk part {info['bulk_s']} s)\n")
    print("| page | rows drawn | median ms | worst ms | under 1 s |")
    print("|---|---|---|---|---|")
    for p in pages:
        if "error" in p:
            print(f"| {p['page']} | | failed: {p['error']} | | no |")
        else:
            print(f"| {p['page']} | {p['rows'] or 'none (empty)'} | {p['median_ms']} | {p['max_ms']} | "
                  f"{'yes' if p['under_1s'] else '**no**'} |")
    print("\n| API call | status | median ms | worst ms |")
    print("|---|---|---|---|")
    for c in api:
        print(f"| `{c['path']}` | {c['status']} | {c['median_ms']} | {c['max_ms']} |")
    summary = {"bench": "console_load", "args": vars(args), "database": info, "built_now": built,
               "pages": pages, "api": api}
    Path(args.json).write_text(json.dumps(summary, indent=1))
    print("\n" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
