"""Enrichment: user names, container identity, parent chain, from caches not syscalls.

Network and file events name a pid (and a process key when the collector can read it); their
process is filled from the process table. Such an event can arrive before its process's exec
(the collectors are separate threads with their own batching), so an event whose process is
not in the table yet is held back for up to ``hold_s`` and retried; past that, /proc is read
once for that pid (the only per-event syscall, on misses only), and if the process is gone too
the event goes out with what the collector knew (counted as ``enrich.unresolved``).
"""

from __future__ import annotations

import os
import pwd
import time
from collections import deque
from collections.abc import Sequence

from heron.agent.linux.cgroups import container_of
from heron.agent.linux.procfs import ProcessGone, ProcFS
from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import (
    DnsQuery,
    Event,
    FileChange,
    NetFlow,
    NetListen,
    Process,
    ProcessExec,
    ProcessExit,
    ProcessRef,
)

# Executables whose writes are package installs/updates (compared by basename): a file change by
# one of them, or by a process below one, is tagged with it instead of looking unexplained.
PACKAGE_MANAGERS = {
    "dpkg": "dpkg", "apt": "apt", "apt-get": "apt", "aptitude": "apt", "unattended-upgrade": "apt",
    "rpm": "rpm", "dnf": "dnf", "yum": "yum", "microdnf": "dnf", "zypper": "zypper", "apk": "apk",
    "pacman": "pacman", "snapd": "snap",
}


class UserNames:
    """uid -> name, re-read only when /etc/passwd changes (checked at most every 10 s)."""

    def __init__(self, passwd: str = "/etc/passwd") -> None:  # noqa: S107 (a path, not a secret)
        self.passwd = passwd
        self.cache: dict[int, str | None] = {}
        self._mtime = 0.0
        self._checked = 0.0

    def name(self, uid: int | None) -> str | None:
        if uid is None or uid < 0:
            return None
        now = time.monotonic()
        if now - self._checked > 10:
            self._checked = now
            try:
                mtime = os.stat(self.passwd).st_mtime
            except OSError:
                mtime = 0.0
            if mtime != self._mtime:
                self._mtime = mtime
                self.cache.clear()
        if uid not in self.cache:
            try:
                self.cache[uid] = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                self.cache[uid] = None
        return self.cache[uid]


RefEvent = FileChange | NetFlow | NetListen | DnsQuery


class Enricher:
    def __init__(self, table: ProcessTable, users: UserNames | None = None, boot_id: str = "",
                 proc_root: str = "/proc", hold_s: float = 0.3) -> None:
        self.table = table
        self.users = users or UserNames()
        self.boot_id = boot_id
        self.procfs = ProcFS(proc_root)
        self.hold_ns = int(hold_s * 1e9)
        self.held: deque[tuple[int, RefEvent]] = deque()  # (deadline ns, event), oldest first
        self.unresolved = 0  # events that went out without their process's details
        self.from_proc = 0  # processes read from /proc after a table miss

    def process(self, p: Process) -> None:
        """Fill what the collector did not: user names, container, parent chain."""
        if p.user is None:
            p.user = self.users.name(p.uid)
        if p.login_user is None and p.auid is not None:
            p.login_user = self.users.name(p.auid)
        if p.cgroup and p.container_id is None:
            ref = container_of(p.cgroup)
            if ref is not None:
                p.container_id = ref.id
                p.container_runtime = ref.runtime
                p.pod_uid = ref.pod_uid
                p.cgroup = ref.path
            elif "\n" in p.cgroup:
                p.cgroup = None  # host process: the raw multi-line text says nothing useful
        self.table.add(p)

    def ref(self, r: ProcessRef) -> tuple[bool, str | None]:
        """Fill a network/file event's process from the table: (found, package manager). The
        package manager is a basename match on the process or one of its ancestors."""
        entry = self.table.resolve(r.pid, r.key)
        if entry is None:
            return False, None
        r.key = entry.key
        r.pid = entry.pid
        r.ppid = r.ppid or entry.ppid
        r.exe = r.exe or entry.exe
        r.comm = r.comm or entry.comm
        if r.uid < 0:
            r.uid = entry.uid
        if r.auid is None:
            r.auid = entry.auid
        if r.container_id is None:
            r.container_id = entry.container_id
        if r.parent_exe is None and entry.ancestors:
            r.parent_exe = entry.ancestors[0].exe
        if r.user is None:
            r.user = self.users.name(r.uid)
        if r.login_user is None and r.auid is not None:
            r.login_user = self.users.name(r.auid)
        for exe in (entry.exe, *(a.exe for a in entry.ancestors)):
            pm = PACKAGE_MANAGERS.get(exe.rsplit("/", 1)[-1])
            if pm is not None:
                return True, pm
        return True, None

    def _resolve(self, ev: RefEvent) -> bool:
        if ev.process is None:
            return True
        found, pm = self.ref(ev.process)
        if found and isinstance(ev, FileChange) and ev.package_manager is None:
            ev.package_manager = pm
        return found

    def _last_resort(self, ev: RefEvent) -> None:
        """After the hold: read /proc once for the pid (the process may have exited, or a forked
        child that never exec'd is not in the table); else keep what the collector knew."""
        r = ev.process
        if r is None:
            return
        if r.pid > 0 and not r.key:
            try:
                p = self.procfs.process(r.pid, self.boot_id, argv_limit=4096)
            except (ProcessGone, OSError, ValueError, IndexError):
                p = None
            if p is not None:
                self.from_proc += 1
                self.process(p)
                if self._resolve(ev):
                    return
        self.unresolved += 1
        if r.user is None:
            r.user = self.users.name(r.uid)

    def release(self, now_ns: int, everything: bool = False) -> list[Event]:
        """Held events whose process is now known, or whose hold is over (oldest first)."""
        out: list[Event] = []
        if not self.held:
            return out
        still: deque[tuple[int, RefEvent]] = deque()
        for deadline, ev in self.held:
            if self._resolve(ev):
                out.append(ev)
            elif everything or now_ns >= deadline:
                self._last_resort(ev)
                out.append(ev)
            else:
                still.append((deadline, ev))
        self.held = still
        return out

    def load_snapshot(self, procs: Sequence[Process]) -> None:
        # Parents first, so children find their parent's chain.
        for p in sorted(procs, key=lambda p: p.start_ticks):
            self.process(p)

    def __call__(self, events: Sequence[Event], now_ns: int = 0) -> list[Event]:
        """Enriches in place; returns the events ready to go on (held ones come from release)."""
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, (FileChange, NetFlow, NetListen, DnsQuery)):
                if self._resolve(ev):
                    out.append(ev)
                elif self.hold_ns > 0:
                    self.held.append((now_ns + self.hold_ns, ev))
                else:
                    self._last_resort(ev)
                    out.append(ev)
                continue
            out.append(ev)
            if isinstance(ev, ProcessExec):
                self.process(ev.process)
            elif isinstance(ev, ProcessExit):
                entry = self.table.remove(ev.pid, ev.key if ev.key else None)
                if entry is not None:
                    if not ev.exe:
                        ev.exe = entry.exe
                    if not ev.comm:
                        ev.comm = entry.comm
                    if ev.container_id is None:
                        ev.container_id = entry.container_id
        return out
