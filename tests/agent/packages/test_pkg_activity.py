"""Active vs dormant packages on the real host: processes started here turn packages active
within one cycle and inactive after they exit; cycles read only new processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from heron.agent.config import PackageConfig
from heron.agent.host import Host
from heron.agent.linux.procfs import ProcFS
from heron.agent.sources.package.scan import PackageMonitor
from heron.schema.events import Package, PackageActivity, process_key

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="the host tests use the dpkg database"),
]


@pytest.fixture
def monitor(host: Host) -> Iterator[PackageMonitor]:
    mon = PackageMonitor(host, PackageConfig(containers=False, languages=False),
                         scope_filter=lambda n: n == "host", rescan_per_cycle=0)
    yield mon
    mon.close()


def host_packages(mon: PackageMonitor) -> dict[str, Package]:
    return {p.name: p for p in mon.scopes["host"].scope.packages()}


def owner_of(path: str) -> str:
    """The owning package by dpkg itself (it knows /bin/x, not /usr/bin/x, on merged /usr)."""
    for p in (path, path.removeprefix("/usr")):
        out = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True).stdout
        if out:
            return out.split(":", 1)[0].strip()
    return ""


def activity(events: list[object]) -> tuple[dict[str, object], set[str]]:
    active = {u.purl: u for e in events if isinstance(e, PackageActivity) for u in e.active}
    inactive = {p for e in events if isinstance(e, PackageActivity) for p in e.inactive}
    return active, inactive


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
    return proc


def test_libc_and_the_system_python_are_active(monitor: PackageMonitor) -> None:
    python = "/usr/bin/python3.11"
    if not os.path.exists(python):
        pytest.skip("no /usr/bin/python3.11")
    proc = spawn([python, "-c", "import time; print('ok', flush=True); time.sleep(60)"])
    try:
        events = monitor.start()
        pkgs = host_packages(monitor)
        libc = pkgs["libc6"]
        interp = pkgs[owner_of(python)]  # python3.11-minimal on Debian 12
        assert libc.purl in monitor.packages_of(os.getpid())  # this very test process maps libc
        assert {libc.purl, interp.purl} <= monitor.packages_of(proc.pid)
        full = [e for e in events if isinstance(e, PackageActivity)]
        assert len(full) == 1 and full[0].full and full[0].scope == "host"
        active, _ = activity(events)
        assert interp.purl in active and libc.purl in active
    finally:
        proc.kill()
        proc.wait()


def load_one(candidates: list[tuple[Package, str]]) -> tuple[Package, str, subprocess.Popen[str]]:
    """A child process that maps the first of these libraries that loads alone."""
    code = "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); print('ok', flush=True); time.sleep(60)"
    for pkg, path in candidates:
        proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True,
                                stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() == "ok":
            return pkg, path, proc
        proc.wait()  # this one does not load alone (missing symbols): try the next
    pytest.fail("none of the dormant libraries could be loaded")


def test_dormant_library_turns_active_then_inactive(monitor: PackageMonitor) -> None:
    monitor.start()
    pkgs = host_packages(monitor)
    active_now = set(monitor.scopes["host"].usage.users)
    scope = monitor.scopes["host"].scope
    # A library package no process maps now: dormant.
    libdir = "/usr/lib/x86_64-linux-gnu"
    candidates: list[tuple[Package, str]] = []
    for name in sorted(os.listdir(libdir)):
        if not re.fullmatch(r"lib[a-zA-Z0-9_+-]+\.so\.\d+", name):
            continue
        path = os.path.realpath(f"{libdir}/{name}")
        owner = scope.owner(path)
        if owner is not None and owner.purl not in active_now and owner.name.startswith("lib"):
            candidates.append((owner, path))
    assert candidates, "no dormant library package on this machine"
    pkg, path, proc = load_one(candidates[:20])
    try:
        assert pkgs[pkg.name].purl == pkg.purl
        active, inactive = activity(monitor.cycle())
        assert pkg.purl in active and pkg.purl not in inactive
        use = active[pkg.purl]
        ref = next(r for r in use.processes if r.pid == proc.pid)  # type: ignore[attr-defined]
        assert ref.key == process_key(monitor.host.boot_id, proc.pid, ProcFS().stat(proc.pid).start_ticks)
        assert ref.exe == os.path.realpath(sys.executable)
        assert path in use.files  # type: ignore[attr-defined]
    finally:
        proc.kill()
        proc.wait()
    active, inactive = activity(monitor.cycle())
    assert pkg.purl in inactive and pkg.purl not in monitor.scopes["host"].usage.users


def test_exec_in_place_is_seen(monitor: PackageMonitor) -> None:
    busybox = "/bin/busybox"
    if not os.path.exists(busybox) or not owner_of(busybox):
        pytest.skip("busybox is not installed from a package")
    monitor.start()
    pkgs = host_packages(monitor)
    bb = pkgs[owner_of(busybox)]
    if bb.purl in monitor.scopes["host"].usage.users:
        pytest.skip("busybox is in use by another process right now")
    # sh first, then the same process (same pid and key) becomes busybox
    proc = subprocess.Popen(["/bin/sh", "-c", f"echo ok; read x; exec {busybox} sleep 60"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        monitor.cycle()
        sh = pkgs[owner_of(os.path.realpath("/bin/sh"))]
        assert sh.purl in monitor.packages_of(proc.pid)
        assert bb.purl not in monitor.packages_of(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{proc.pid}/exe") != os.path.realpath(busybox) and time.monotonic() < deadline:
            time.sleep(0.01)
        active, _ = activity(monitor.cycle())
        assert bb.purl in active
        assert bb.purl in monitor.packages_of(proc.pid) and sh.purl not in monitor.packages_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_cycle_reads_only_new_processes(monitor: PackageMonitor) -> None:
    monitor.start()
    known = set(monitor.watcher.known)
    maps_before = monitor.reader.maps_read
    proc = spawn([sys.executable, "-c", "import time; print('ok', flush=True); time.sleep(60)"])
    try:
        monitor.cycle()
        new = set(monitor.watcher.known) - known
        assert proc.pid in new
        assert 1 <= monitor.reader.maps_read - maps_before <= len(new)
        maps_before = monitor.reader.maps_read
        monitor.cycle()
        new2 = set(monitor.watcher.known) - known - new
        assert monitor.reader.maps_read - maps_before <= len(new2)
    finally:
        proc.kill()
        proc.wait()


def test_a_container_gone_or_not_yet_pivoted_is_skipped_and_counted(host: Host) -> None:
    mon = PackageMonitor(host, PackageConfig(), rescan_per_cycle=0)
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert mon._new_scope("a" * 64, gone.pid) is None  # exited before its root could be opened
        assert mon.health.get("package.procfs.containers_skipped") == 1
        # a process in a container's cgroup whose root is still the host's (runc init before pivot_root)
        assert mon._new_scope("b" * 64, os.getpid()) is None
        assert mon.health.get("package.procfs.containers_deferred") == 1
    finally:
        mon.close()


def test_refused_scopes_are_bounded(monitor: PackageMonitor, monkeypatch: pytest.MonkeyPatch) -> None:
    import heron.agent.sources.package.scan as scan
    monkeypatch.setattr(scan, "MAX_REFUSED", 8)
    for i in range(100):  # containers not watched (containers=False): each id is refused once
        assert not monitor._wanted(f"container-{i:064x}")
    assert 0 < len(monitor.refused) <= 8
    assert monitor._wanted("host")
