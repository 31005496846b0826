"""The package capability by reading files: inventories of the host and every running container,
and which of their packages running processes use (``heron.agent.packages``).

Timeline of ``PackageSource.run``:
- start: every process is read once (stat, exe, cgroup, maps); each scope (the host, and each
  container with a running process, seen through /proc/PID/root of its lowest pid) reads its
  databases and the language trees its processes use; then one full ``package.inventory`` and
  one full ``package.activity`` per scope;
- every ``activity_interval_s``: new/changed/gone processes only (``activity.ProcessWatcher``):
  ``package.activity`` with newly active packages and the purls whose last user exited; a new
  container gets its full inventory and activity first; a container whose last process exited
  gets a last activity record marking all its packages inactive and is no longer reported (the
  platform learns the container is gone from its processes' exits);
- every ``check_interval_s``: each scope stats its databases' files and re-reads only the
  changed ones: a ``package.inventory`` diff (an upgrade is the old version removed plus the new
  one added), then the usage of that scope is re-resolved against the new ownership.

A container that exits while it is being read is skipped and counted
(``package.procfs.containers_skipped``). Host processes with a root of their own (chroot, some
sandboxes) are matched against the host's packages and mostly match nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from heron.agent.config import PackageConfig
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.linux.cgroups import container_of
from heron.agent.packages.activity import ProcessReader, ProcessWatcher, ProcInfo, Usage, owned_files
from heron.agent.packages.inventory import SOURCE, Change, Scope
from heron.agent.packages.npm import is_node, process_trees
from heron.agent.packages.python import is_python, process_site_dirs
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.schema.events import Event, PackageActivity

NAME = "package.procfs"
HOST = "host"
MAX_REFUSED = 4096  # remembered refused scopes: bounded, a busy host starts containers forever


@dataclass
class ScopeState:
    scope: Scope
    usage: Usage = field(default_factory=Usage)
    pids: set[int] = field(default_factory=set)
    resolved_generation: int = 0


class PackageMonitor:
    """Scopes, their inventories and usage; produces the capability's events. Not thread-safe:
    one thread drives it (the source's, or the CLI's)."""

    def __init__(self, host: Host, config: PackageConfig | None = None, health: Health | None = None,
                 host_root: str = "/", scope_filter: Callable[[str], bool] | None = None,
                 rescan_per_cycle: int = 16, settle_max_s: float | None = None) -> None:
        self.host = host
        self.config = config or PackageConfig()
        self.health = health or Health()
        self.host_root = host_root
        self.scope_filter = scope_filter or (lambda _name: True)
        self.settle_max_s = settle_max_s
        self.reader = ProcessReader(host.proc_root, host.boot_id, details=self._wants_details)
        self.watcher = ProcessWatcher(self.reader, rescan_per_cycle)
        self.scopes: dict[str, ScopeState] = {}
        self.pid_scope: dict[int, str] = {}
        self.refused: set[str] = set()  # scopes the filter or config leave out (not re-asked)

    def _wants_details(self, exe: str) -> bool:
        return self.config.languages and (is_python(exe) or is_node(exe))

    def close(self) -> None:
        for st in self.scopes.values():
            st.scope.close()
        self.scopes.clear()

    # -- scopes ------------------------------------------------------------------------------
    def _scope_of(self, info: ProcInfo) -> str:
        ref = container_of(info.cgroup)
        return HOST if ref is None else ref.id

    def _new_scope(self, name: str, pid: int) -> ScopeState | None:
        kw: dict[str, Any] = {"languages": self.config.languages}
        if self.settle_max_s is not None:
            kw["settle_max_s"] = self.settle_max_s
        try:
            if name == HOST:
                scope = Scope(HOST, self.host_root, **kw)
            else:
                root = f"{self.host.proc_root}/{pid}/root"
                st, host_st = os.stat(root), os.stat(self.host_root)
                if (st.st_dev, st.st_ino) == (host_st.st_dev, host_st.st_ino):
                    # A runtime helper (runc init) in the container's cgroup before its pivot_root:
                    # not the container's file system yet. The process comes back once it execs.
                    self.health.add(f"{NAME}.containers_deferred")
                    return None
                scope = Scope(name, root, container_id=name, **kw)
            scope.load()
        except OSError:
            self.health.add(f"{NAME}.containers_skipped")  # it exited while we opened it
            return None
        self.health.add(f"{NAME}.scopes_opened")
        return ScopeState(scope)

    def _wanted(self, name: str) -> bool:
        if name in self.refused:
            return False
        ok = self.scope_filter(name) and (name == HOST or self.config.containers)
        if not ok:
            if len(self.refused) >= MAX_REFUSED:  # container ids come and go: forget, re-ask later
                self.refused.clear()
            self.refused.add(name)
        return ok

    # -- cycles ------------------------------------------------------------------------------
    def start(self) -> list[Event]:
        """Full inventory and full activity of every scope."""
        changed, _ = self.watcher.poll()
        if self._wanted(HOST) and HOST not in self.scopes:
            st = self._new_scope(HOST, 1)
            if st is not None:
                self.scopes[HOST] = st
        events: list[Event] = []
        self._place(changed, events, emit_new=False)
        for st in self.scopes.values():
            self._observe_languages(st, [i for i in changed if i.pid in st.pids])
        ts = time.time_ns()
        for st in self.scopes.values():
            events.append(st.scope.full_event(ts))
        for name, st in self.scopes.items():
            self._resolve(st, [i for i in changed if i.pid in st.pids], ts)
            st.resolved_generation = st.scope.generation
            events.append(self._activity(name, st, set(), full=True, ts=ts))
        self._count()
        return events

    def cycle(self) -> list[Event]:
        """New, changed and gone processes since the last cycle: activity changes (and the
        inventories of new containers and newly used language trees)."""
        changed, gone = self.watcher.poll()
        ts = time.time_ns()
        events: list[Event] = []
        before = {name: set(st.usage.users) for name, st in self.scopes.items()}
        for info in gone:
            name = self.pid_scope.pop(info.pid, None)
            st = self.scopes.get(name) if name is not None else None
            if st is not None:
                st.pids.discard(info.pid)
                st.usage.drop(info.key)
        fresh = self._place(changed, events, emit_new=True)
        for name, st in self.scopes.items():
            if name in fresh:
                continue
            mine = [i for i in changed if i.pid in st.pids]
            diff = self._observe_languages(st, mine)
            ev = st.scope.diff_event(diff, ts)
            if ev is not None:
                events.append(ev)
            if st.scope.generation != st.resolved_generation:
                self._resolve(st, self._infos(st), ts)  # ownership changed: everyone again
                st.resolved_generation = st.scope.generation
            else:
                self._resolve(st, mine, ts)
        for name in list(self.scopes):
            st = self.scopes[name]
            if name in fresh:
                events.append(self._activity(name, st, set(), full=True, ts=ts))
                continue
            if name != HOST and not st.pids:
                events.append(self._activity(name, st, before.get(name, set()), ts=ts, gone=True))
                st.scope.close()
                del self.scopes[name]
                self.health.add(f"{NAME}.scopes_gone")
                continue
            act = self._activity(name, st, before.get(name, set()), ts=ts)
            if act.active or act.inactive:
                events.append(act)
        self._count()
        return events

    def check(self) -> list[Event]:
        """Re-read the package databases that changed; re-resolve usage where ownership did."""
        ts = time.time_ns()
        events: list[Event] = []
        for name, st in self.scopes.items():
            before = set(st.usage.users)
            change = st.scope.check()
            ev = st.scope.diff_event(change, ts)
            if ev is not None:
                events.append(ev)
                self.health.add(f"{NAME}.inventory_changes")
            if st.scope.generation != st.resolved_generation:
                self._resolve(st, self._infos(st), ts)
                st.resolved_generation = st.scope.generation
                act = self._activity(name, st, before, ts=ts)
                if act.active or act.inactive:
                    events.append(act)
        self._count()
        return events

    # -- helpers -----------------------------------------------------------------------------
    def _place(self, changed: list[ProcInfo], events: list[Event], emit_new: bool) -> set[str]:
        """Assign processes to scopes, opening scopes of new containers; returns the new scopes."""
        fresh: set[str] = set()
        for info in sorted(changed, key=lambda i: i.pid):
            name = self.pid_scope.get(info.pid) or self._scope_of(info)
            if name not in self.scopes:
                if not self._wanted(name):
                    continue
                st = self._new_scope(name, info.pid)
                if st is None:
                    continue
                self.scopes[name] = st
                fresh.add(name)
            self.pid_scope[info.pid] = name
            self.scopes[name].pids.add(info.pid)
        if emit_new:
            ts = time.time_ns()
            for name in sorted(fresh):
                st = self.scopes[name]
                self._observe_languages(st, [i for i in changed if i.pid in st.pids])
                events.append(st.scope.full_event(ts))
                self._resolve(st, [i for i in changed if i.pid in st.pids], ts)
                st.resolved_generation = st.scope.generation
        return fresh

    def _infos(self, st: ScopeState) -> list[ProcInfo]:
        return [self.watcher.known[p] for p in st.pids if p in self.watcher.known]

    def _observe_languages(self, st: ScopeState, infos: list[ProcInfo]) -> Change:
        change = Change()
        if not self.config.languages:
            return change
        for info in infos:
            if is_python(info.exe):
                argv0 = info.argv[0] if info.argv else ""
                sites = process_site_dirs(st.scope.fs, info.exe, argv0, info.cwd, list(info.files))
                Scope._merge(change, st.scope.observe(sites, []))
            elif is_node(info.exe):
                trees = process_trees(st.scope.fs, info.argv, info.cwd, list(info.files))
                Scope._merge(change, st.scope.observe([], trees))
            elif any("/site-packages/" in f or "/node_modules/" in f for f in info.files):
                # an embedded interpreter (uwsgi, an app linking libpython/libnode)
                sites = process_site_dirs(st.scope.fs, "", "", "", list(info.files))
                trees = process_trees(st.scope.fs, [], "", list(info.files))
                Scope._merge(change, st.scope.observe(sites, trees))
        return change

    def _resolve(self, st: ScopeState, infos: list[ProcInfo], ts: int) -> None:
        cid = st.scope.container_id
        for info in infos:
            if not info.files:
                continue
            st.usage.record(info.ref(cid), owned_files(info, st.scope.owner, st.usage.of(info.key)), ts)

    def _activity(self, name: str, st: ScopeState, before: set[str], ts: int, full: bool = False,
                  gone: bool = False) -> PackageActivity:
        now = set() if gone else set(st.usage.users)
        active = sorted(now) if full else sorted(now - before)
        inactive = sorted(before - now)
        return PackageActivity(ts=ts, source=SOURCE, scope=name, container_id=st.scope.container_id, full=full,
                               active=[st.usage.use(p) for p in active], inactive=inactive)

    def _count(self) -> None:
        h = self.health
        h.set(f"{NAME}.scopes", len(self.scopes))
        h.set(f"{NAME}.processes", len(self.watcher.known))
        h.set(f"{NAME}.processes_scanned", self.watcher.scanned)
        h.set(f"{NAME}.maps_read", self.reader.maps_read)
        h.set(f"{NAME}.db_errors", sum(len(st.scope.errors()) for st in self.scopes.values()))

    # -- queries (tests, CLI) ----------------------------------------------------------------
    def packages_of(self, pid: int) -> set[str]:
        """purls the process with this pid uses (as of the last cycle)."""
        name = self.pid_scope.get(pid)
        info = self.watcher.known.get(pid)
        if name is None or info is None or name not in self.scopes:
            return set()
        return set(self.scopes[name].usage.of(info.key))


class PackageSource:
    capability: ClassVar[str] = "package"
    mechanism: ClassVar[str] = "procfs"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        if not os.path.isdir(f"{host.proc_root}/self"):
            return ProbeResult.no(f"{host.proc_root} is not a mounted procfs")
        return ProbeResult.yes("package databases re-read when they change; /proc/PID/maps of new processes")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        config = ctx.options.get("config")
        self.config = config if isinstance(config, PackageConfig) else PackageConfig()
        self.monitor: PackageMonitor | None = None

    def snapshot(self) -> list[Any]:
        return []

    def run(self, stop: threading.Event) -> None:
        self.monitor = mon = PackageMonitor(self.ctx.host, self.config, self.ctx.health)
        try:
            self._emit(mon.start())
            now = time.monotonic()
            next_activity = now + self.config.activity_interval_s
            next_check = now + self.config.check_interval_s
            while not stop.wait(max(0.0, min(next_activity, next_check) - time.monotonic())):
                now = time.monotonic()
                events: list[Event] = []
                if now >= next_activity:
                    events += mon.cycle()
                    next_activity = max(next_activity + self.config.activity_interval_s, now + 0.1)
                if now >= next_check:
                    events += mon.check()
                    next_check = max(next_check + self.config.check_interval_s, now + 0.1)
                self._emit(events)
        finally:
            self.close()

    def _emit(self, events: list[Event]) -> None:
        if events:
            self.ctx.emit(events)

    def close(self) -> None:
        mon, self.monitor = self.monitor, None
        if mon is not None:
            mon.close()


class ScopeNotFound(LookupError):
    """No running container matches the id asked for (or more than one does)."""


def local_report(container: str | None = None, host: Host | None = None,
                 config: PackageConfig | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One inventory and one activity scan of one scope (the host, or the running container
    whose id starts with ``container``), without an agent or a platform: (scope facts, packages)."""
    from heron.agent.host import detect_host

    host = host or detect_host()
    base = config or PackageConfig()
    if container is None:
        cfg = PackageConfig(containers=False, languages=base.languages)

        def wanted(name: str) -> bool:
            return name == HOST
    else:
        prefix = container.lower()
        cfg = PackageConfig(containers=True, languages=base.languages)

        def wanted(name: str) -> bool:
            return name != HOST and name.startswith(prefix)

    mon = PackageMonitor(host, cfg, scope_filter=wanted, rescan_per_cycle=0)
    try:
        mon.start()
        if len(mon.scopes) != 1:
            what = "no running container" if not mon.scopes else "more than one container"
            raise ScopeNotFound(f"{what} matches {container!r}" if container else "the host cannot be read")
        name, st = next(iter(mon.scopes.items()))
        scope = st.scope
        facts = {"scope": name, "container_id": scope.container_id, "distro": scope.os.label,
                 "errors": scope.errors()}
        rows: list[dict[str, Any]] = []
        for p in sorted(scope.packages(), key=lambda p: (p.manager, p.name, p.version, p.arch, p.location)):
            use = st.usage.use(p.purl) if p.purl in st.usage.users else None
            rows.append({
                "name": p.name, "version": p.version, "ecosystem": p.ecosystem, "purl": p.purl,
                "manager": p.manager, "active": use is not None, "scope": name,
                "container_id": scope.container_id, "arch": p.arch, "source_name": p.source_name,
                "source_version": p.source_version, "distro": p.distro, "location": p.location,
                "processes": [{"pid": r.pid, "exe": r.exe} for r in use.processes] if use else [],
            })
        return facts, rows
    finally:
        mon.close()
