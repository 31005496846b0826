#!/usr/bin/env python3
"""File integrity baseline scan throughput: heron against sha256sum (and AIDE when installed).

    .venv/bin/python bench/fim_scan.py [--root /usr] [--drop-caches] [--budget MB_PER_S:CPU_PERCENT]

Runs, on every regular file below ROOT (one file system, like ``find -xdev``):
- heron cold: ``fim.scan`` into an empty baseline (every file hashed and stored);
- heron warm: the second, incremental scan (nothing changed: stat and compare only);
- sha256sum: ``find ROOT -xdev -type f -print0 | xargs -0 sha256sum``;
- aide --init and aide --check with sha256, when ``aide`` is on PATH (``apt-get install aide``).
heron hashes files of any size here (the default policy caps binaries at 32 MiB) and is not
throttled unless --budget is given. By default the page cache is warmed first, so the figures are
CPU-bound and comparable; --drop-caches (root) empties it before each cold run instead.
Prints a markdown table (files/s, MB/s hashed, wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from heron.agent.config import FileWatch
from heron.agent.fim.baseline import BaselineStore
from heron.agent.fim.hashing import IoBudget
from heron.agent.fim.policy import Policy, Rule
from heron.agent.fim.scan import ScanProgress, scan


def file_list(root: str) -> tuple[int, int]:
    """(files, bytes) of the regular files below root on its file system."""
    dev = os.lstat(root).st_dev
    files = size = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    files += 1
                    size += st.st_size
    return files, size


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm_cache(root: str) -> None:
    find = subprocess.Popen(["find", root, "-xdev", "-type", "f", "-print0"], stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-0", "cat"], stdin=find.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    find.wait()


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def heron_run(policy: Policy, state: str, budget: IoBudget | None) -> tuple[float, float, ScanProgress]:
    store = BaselineStore.open(state)
    last: list[ScanProgress] = []
    t0, c0 = time.monotonic(), time.process_time()
    changes = sum(1 for _ in scan(policy, store, budget=budget, progress=last.append))
    store.close()
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    p = last[-1]
    assert changes == 0, f"{changes} changes reported on an unchanged tree"
    return wall, cpu, p


def piped(root: str, tool: list[str]) -> tuple[float, float]:
    t0, c0 = time.monotonic(), children_cpu()
    find = subprocess.Popen(["find", root, "-xdev", "-type", "f", "-print0"], stdout=subprocess.PIPE)
    subprocess.run(["xargs", "-0", *tool], stdin=find.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    find.wait()
    return time.monotonic() - t0, children_cpu() - c0


def aide_runs(root: str, work: Path) -> list[tuple[str, float, float]]:
    if not shutil.which("aide"):
        return []
    conf = work / "aide.conf"
    db, new = work / "aide.db", work / "aide.db.new"
    conf.write_text(f"database_in=file:{db}\ndatabase_out=file:{new}\ngzip_dbout=no\n"
                    f"{root} p+i+n+u+g+s+m+c+sha256\n")
    out = []
    t0, c0 = time.monotonic(), children_cpu()
    subprocess.run(["aide", f"--config={conf}", "--init"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    out.append(("aide --init", time.monotonic() - t0, children_cpu() - c0))
    new.replace(db)
    t0, c0 = time.monotonic(), children_cpu()
    subprocess.run(["aide", f"--config={conf}", "--check"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    out.append(("aide --check", time.monotonic() - t0, children_cpu() - c0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/usr")
    ap.add_argument("--drop-caches", action="store_true", help="empty the page cache before each cold run (root)")
    ap.add_argument("--budget", help="MB_PER_S:CPU_PERCENT, as the agent's scan budget (default: none)")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    files, size = file_list(root)
    mb = size / 1e6
    budget = None
    if args.budget:
        rate, cpu = args.budget.split(":")
        budget = IoBudget(float(rate), float(cpu))

    def prepare() -> None:
        if args.drop_caches:
            drop_caches()
        else:
            warm_cache(root)

    policy = Policy([Rule.from_watch(FileWatch(path=root, name="bench", hash_max_bytes=1 << 50))])
    rows: list[tuple[str, int, float, float, float]] = []  # name, files, MB, wall, cpu
    with tempfile.TemporaryDirectory(prefix="heron-fim-bench-") as tmp:
        work = Path(tmp)
        prepare()
        wall, cpu, p = heron_run(policy, str(work / "state"), budget)
        rows.append(("heron scan, cold (empty baseline)", p.files_seen, p.bytes_hashed / 1e6, wall, cpu))
        wall, cpu, p = heron_run(policy, str(work / "state"), budget)
        rows.append(("heron scan, warm (incremental)", p.files_seen, p.bytes_hashed / 1e6, wall, cpu))
        prepare()
        wall, cpu = piped(root, ["sha256sum"])
        rows.append(("find -print0 \\| xargs -0 sha256sum", files, mb, wall, cpu))
        prepare()
        for name, wall, cpu in aide_runs(root, work):
            rows.append((name, files, mb if name.endswith("init") else 0.0, wall, cpu))
    print(f"\nRoot {root}: {files:,} regular files, {mb:,.1f} MB; page cache "
          f"{'dropped before cold runs' if args.drop_caches else 'warm'}; budget {args.budget or 'none'}; "
          f"{os.cpu_count()} CPUs. heron counts every entry it records (directories and links too).\n")
    print("| run | entries | MB hashed | wall s | CPU s | entries/s | MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, hashed, wall, cpu in rows:
        print(f"| {name} | {n:,} | {hashed:,.1f} | {wall:.2f} | {cpu:.2f} | {n / wall:,.0f} | {hashed / wall:,.1f} |")
    if not shutil.which("aide"):
        print("\n(aide not installed: `apt-get install aide` to add it)")


if __name__ == "__main__":
    main()
