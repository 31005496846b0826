"""Active packages: the installed packages whose files running processes execute or map.

What is seen: /proc/PID/exe and every file-backed mapping in /proc/PID/maps (executables, shared
libraries, Python extension modules, Node.js native addons, mmapped data such as locale archives
and fonts). Each path is looked up in the scope's ownership index (``inventory.Scope.owner``).
What is not: files a process reads and closes (pure Python modules, JavaScript, scripts run by
an interpreter -- the interpreter's package is active, the script's is not), and a library
loaded and unloaded between two cycles. A mapping of a file replaced since (" (deleted)": the
process still runs the old code of an upgraded package) is never credited to the path's current
owner (the new version): the package version the process was credited with before stays active
(listed with the suffix in ``PackageUse.files``); a process first seen after the upgrade gets
nothing for that file (limit: the old version is not known then).

Cost: each cycle lists /proc and reads one symlink per known process (its exe: an exec or a
reused pid shows there); only new processes (and those whose exe changed) have their stat,
cgroup and maps read, plus a bounded number of known ones re-read round-robin
(``rescan_per_cycle``) to catch libraries loaded after the first look. The state is per
process key the set of packages it uses, so nothing grows with file opens. A pid reused for the
same executable between two cycles is missed until its round-robin re-read (its key stays stale).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from heron.agent.linux.procfs import ProcessGone, ProcFS, decode
from heron.schema.events import Package, PackageUse, ProcessRef, process_key

MAPS_MAX_BYTES = 32 << 20
_DELETED = " (deleted)"
SAMPLE = 8  # processes and files per PackageUse (the schema allows 64)


def parse_maps(raw: bytes) -> list[str]:
    """File paths of the mappings in /proc/PID/maps text, each once, in order."""
    seen: dict[str, None] = {}
    for line in raw.split(b"\n"):
        # "start-end perms offset dev inode      /path": fields before the path hold no "/".
        i = line.find(b" /")
        if i < 0:
            continue
        seen.setdefault(sys.intern(decode(line[i + 1:])), None)
    return list(seen)


@dataclass
class ProcInfo:
    pid: int
    key: str
    comm: str
    exe: str  # as the kernel names it: inside the process's root (a container's, for its processes)
    cgroup: str
    files: tuple[str, ...]  # exe first, then mapped files
    argv: list[str] = field(default_factory=list)  # read only for the interpreters ``details`` wants
    cwd: str = ""

    def ref(self, container_id: str | None) -> ProcessRef:
        return ProcessRef(key=self.key, pid=self.pid, exe=self.exe, comm=self.comm, container_id=container_id)


class ProcessReader:
    """Reads what activity needs about one process from /proc."""

    def __init__(self, proc_root: str, boot_id: str, details: Callable[[str], bool] = lambda _exe: False) -> None:
        self.proc_root = proc_root
        self.procfs = ProcFS(proc_root)
        self.boot_id = boot_id
        self.details = details
        self.maps_read = 0
        self.maps_bytes = 0

    def exe(self, pid: int) -> str | None:
        """The exe link ("" for kernel threads), None when the process is gone."""
        try:
            return decode(os.readlink(f"{self.proc_root}/{pid}/exe".encode()))
        except FileNotFoundError:
            return "" if os.path.exists(f"{self.proc_root}/{pid}") else None
        except OSError:
            return ""

    def maps(self, pid: int) -> list[str]:
        try:
            with open(f"{self.proc_root}/{pid}/maps", "rb") as f:
                raw = f.read(MAPS_MAX_BYTES)
        except OSError:
            return []
        self.maps_read += 1
        self.maps_bytes += len(raw)
        return parse_maps(raw)

    def read(self, pid: int) -> ProcInfo | None:
        try:
            st = self.procfs.stat(pid)
            exe = self.exe(pid)
            if exe is None:
                return None
            cgroup = self.procfs.cgroup(pid)
            mapped = self.maps(pid) if exe else []
            argv: list[str] = []
            cwd = ""
            if exe and self.details(exe):
                argv, _ = self.procfs.cmdline(pid, 16 << 10)
                cwd = self.procfs.cwd(pid)
            if self.procfs.stat(pid).start_ticks != st.start_ticks:
                return None  # the pid was reused while we read it
        except (ProcessGone, OSError, ValueError, IndexError):
            return None
        plain = exe.removesuffix(" (deleted)")
        files = tuple([exe, *(m for m in mapped if m != exe and m != plain)]) if exe else ()
        return ProcInfo(pid=pid, key=process_key(self.boot_id, pid, st.start_ticks), comm=st.comm,
                        exe=sys.intern(exe), cgroup=cgroup, files=files, argv=argv, cwd=cwd)


class ProcessWatcher:
    """Which processes are new, changed (exec) or gone since the last poll."""

    def __init__(self, reader: ProcessReader, rescan_per_cycle: int = 16) -> None:
        self.reader = reader
        self.known: dict[int, ProcInfo] = {}
        self.rescan_per_cycle = rescan_per_cycle
        self._rescan_queue: list[int] = []
        self.scanned = 0  # processes whose maps were read (new, changed, re-read)

    def poll(self) -> tuple[list[ProcInfo], list[ProcInfo]]:
        """(new or changed processes, gone ones). A changed process keeps its key; a reused pid
        appears as the old process gone and a new one."""
        try:
            pids = {int(n) for n in os.listdir(self.reader.proc_root) if n.isdigit()}
        except OSError:
            return [], []
        gone = [self.known.pop(pid) for pid in list(self.known) if pid not in pids]
        changed: list[ProcInfo] = []
        for pid in sorted(pids):
            old = self.known.get(pid)
            if old is not None:
                exe = self.reader.exe(pid)
                if exe is None:
                    gone.append(self.known.pop(pid))
                    continue
                if exe == old.exe:
                    continue
            self._read(pid, old, changed, gone)
        self._rescan(changed, gone)
        return changed, gone

    def _read(self, pid: int, old: ProcInfo | None, changed: list[ProcInfo], gone: list[ProcInfo]) -> None:
        info = self.reader.read(pid)
        self.scanned += 1
        if old is not None and (info is None or info.key != old.key):
            gone.append(self.known.pop(pid))
        if info is None:
            return
        if old is None or info.files != old.files or info.key != old.key:
            changed.append(info)
        self.known[pid] = info

    def _rescan(self, changed: list[ProcInfo], gone: list[ProcInfo]) -> None:
        if self.rescan_per_cycle <= 0:
            return
        done = {p.pid for p in changed}
        n = 0
        refilled = False
        while n < self.rescan_per_cycle:
            if not self._rescan_queue:
                if refilled:
                    return  # one whole round in this cycle: nothing more worth re-reading
                self._rescan_queue = sorted(self.known, reverse=True)
                refilled = True
                if not self._rescan_queue:
                    return
            pid = self._rescan_queue.pop()
            old = self.known.get(pid)
            if old is None or pid in done or not old.exe:
                continue
            n += 1
            self._read(pid, old, changed, gone)


def owned_files(info: ProcInfo, owner: Callable[[str], Package | None],
                before: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """purl -> the process's files it owns (up to SAMPLE per package).

    A " (deleted)" mapping is the code of a file replaced since the process mapped it: the
    path's current owner (after an upgrade, the new version) is NOT what runs. It is credited
    to the package the process was already credited with (``before``) under the same purl
    without its version -- the old version stays active while the process runs it -- and to
    nothing when the process was not seen before (the old version is not known).
    """
    out: dict[str, list[str]] = {}
    for path in info.files:
        pkg = owner(path)
        if pkg is None:
            continue
        purl = pkg.purl
        if path.endswith(_DELETED) and purl not in before:
            unversioned = purl.partition("@")[0] + "@"
            purl = next((p for p in sorted(before) if p.startswith(unversioned)), "")
            if not purl:
                continue
        files = out.setdefault(purl, [])
        if len(files) < SAMPLE:
            files.append(path)
    return out


class Usage:
    """Who uses which package, in one scope: purl -> {process key: files}."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, list[str]]] = {}
        self.procs: dict[str, tuple[ProcessRef, frozenset[str]]] = {}
        self.last_used: dict[str, int] = {}

    def record(self, ref: ProcessRef, owned: dict[str, list[str]], ts: int) -> tuple[set[str], set[str]]:
        """Record what one process uses now: (purls newly active, purls newly inactive)."""
        _, before = self.procs.get(ref.key, (ref, frozenset()))
        after = frozenset(owned)
        self.procs[ref.key] = (ref, after)
        activated: set[str] = set()
        for purl in after:
            users = self.users.setdefault(purl, {})
            if not users:
                activated.add(purl)
            users[ref.key] = owned[purl]
            self.last_used[purl] = ts
        return activated, self._release(ref.key, before - after)

    def drop(self, key: str) -> set[str]:
        """A process is gone: the purls nobody uses any more."""
        entry = self.procs.pop(key, None)
        if entry is None:
            return set()
        return self._release(key, entry[1])

    def _release(self, key: str, purls: frozenset[str]) -> set[str]:
        inactive: set[str] = set()
        for purl in purls:
            users = self.users.get(purl)
            if users is None:
                continue
            users.pop(key, None)
            if not users:
                del self.users[purl]
                self.last_used.pop(purl, None)
                inactive.add(purl)
        return inactive

    def active(self) -> list[str]:
        return sorted(self.users)

    def keys(self) -> list[str]:
        return list(self.procs)

    def of(self, key: str) -> frozenset[str]:
        entry = self.procs.get(key)
        return entry[1] if entry is not None else frozenset()

    def use(self, purl: str) -> PackageUse:
        """A bounded sample of the processes using a package, and their files of it."""
        users = self.users.get(purl, {})
        refs: list[ProcessRef] = []
        files: list[str] = []
        for key, paths in users.items():
            if len(refs) < SAMPLE:
                refs.append(self.procs[key][0])
            for p in paths:
                if len(files) < SAMPLE and p not in files:
                    files.append(p)
            if len(refs) >= SAMPLE and len(files) >= SAMPLE:
                break
        return PackageUse(purl=purl, processes=refs, files=files, last_used_ts=self.last_used.get(purl, 0))
