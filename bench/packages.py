#!/usr/bin/env python3
"""Package capability benchmark: what the inventory and the activity scans cost on this host.

    .venv/bin/python bench/packages.py [--repeat 5] [--spawn 50]

Measures, each as the median of ``--repeat`` runs (wall time and CPU time of this process):
- full inventory of the host scope (every database read, ownership indexes built);
- a database check with nothing changed (the stat signatures every check_interval_s);
- one full active scan: every process's stat, exe, cgroup and maps read and resolved to packages;
- one incremental activity cycle with no new process (the steady state), and with ``--spawn`` new
  processes (``sleep``) started since the previous cycle.
Also the size of the dpkg ownership index and the memory the host scope holds (tracemalloc).
Prints a markdown table and the command line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from heron.agent.config import PackageConfig
from heron.agent.host import detect_host
from heron.agent.packages.activity import ProcessReader, ProcessWatcher, owned_files
from heron.agent.packages.inventory import Scope
from heron.agent.sources.package.scan import PackageMonitor


def measure(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> tuple[float, float]:
    """(median wall ms, median CPU ms) of fn over ``repeat`` runs."""
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append((time.perf_counter() - w0) * 1e3)
        cpus.append((time.process_time() - c0) * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--spawn", type=int, default=50)
    args = ap.parse_args()
    host = detect_host()
    rows: list[tuple[str, str, float, float]] = []

    # -- inventory ---------------------------------------------------------------------------
    scopes: list[Scope] = []

    def load() -> None:
        s = Scope("host", "/")
        s.load()
        scopes.append(s)

    wall, cpu = measure(load, args.repeat)
    scope = scopes[-1]
    for s in scopes[:-1]:
        s.close()
    n_pkgs = len(scope.packages())
    by_manager: dict[str, int] = {}
    for p in scope.packages():
        by_manager[p.manager] = by_manager.get(p.manager, 0) + 1
    what = ", ".join(f"{n} {m}" for m, n in sorted(by_manager.items()))
    rows.append(("full inventory (host)", f"{n_pkgs} packages ({what})", wall, cpu))
    wall, cpu = measure(scope.check, args.repeat)
    rows.append(("database check, nothing changed", f"{len(scope.dbs)} databases stat'ed", wall, cpu))
    tracemalloc.start()
    held = Scope("host", "/")
    held.load()
    scope_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    dpkg = held.dbs.get("dpkg:/var/lib/dpkg/status")
    index_len = len(dpkg.good.owners) if dpkg and dpkg.good and dpkg.good.owners is not None else 0  # type: ignore[arg-type]
    held.close()

    # -- one full active scan ------------------------------------------------------------------
    counts: dict[str, int] = {}

    def full_scan() -> None:
        watcher = ProcessWatcher(ProcessReader(host.proc_root, host.boot_id), rescan_per_cycle=0)
        changed, _ = watcher.poll()
        active: set[str] = set()
        for info in changed:
            active.update(owned_files(info, scope.owner))
        counts["processes"] = len(changed)
        counts["active"] = len(active)

    scope._owner_cache.clear()
    wall, cpu = measure(full_scan, args.repeat, setup=scope._owner_cache.clear)
    rows.append(("full active scan (cold ownership cache)",
                 f"{counts['processes']} processes, {counts['active']} active packages", wall, cpu))

    # -- incremental cycles ----------------------------------------------------------------------
    mon = PackageMonitor(host, PackageConfig(containers=True), rescan_per_cycle=0)
    mon.start()
    mon.cycle()
    wall, cpu = measure(mon.cycle, args.repeat)
    rows.append(("activity cycle, no new process", f"{len(mon.watcher.known)} known processes", wall, cpu))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> None:
        procs.extend(subprocess.Popen(["sleep", "60"]) for _ in range(args.spawn))
        time.sleep(0.2)

    wall, cpu = measure(mon.cycle, args.repeat, setup=spawn)
    rows.append((f"activity cycle, {args.spawn} new processes", "maps read for the new ones only", wall, cpu))
    for p in procs:
        p.kill()
        p.wait()
    mon.close()
    scope.close()

    print(f"Command: `{' '.join(['.venv/bin/python', 'bench/packages.py', *sys.argv[1:]])}` "
          f"(median of {args.repeat} runs)\n")
    print("| operation | size | wall ms | CPU ms |")
    print("|---|---|---|---|")
    for name, size, w, c in rows:
        print(f"| {name} | {size} | {w:.1f} | {c:.1f} |")
    print(f"\ndpkg ownership index: {index_len} paths; host scope memory (tracemalloc): "
          f"{scope_bytes / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
