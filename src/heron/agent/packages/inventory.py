"""One scope's inventory: its package databases, their last good reads, diffs and file ownership.

A scope is a root path: the host "/" or a container's /proc/PID/root (a directory fd is held, so
the view survives the exit of the process it was opened through). Its databases: dpkg, rpm and
apk always (absent ones cost a stat per check), the system-wide Python site directories and
global npm trees, plus the virtualenvs and node_modules trees running processes use
(``observe``).

Change detection: every check stats each database's watched files (inode, size, mtime, ctime)
and re-reads only a database whose stats changed: no parsing on a timer.

Trust, per database:
- a read that fails or is corrupt keeps the last good read (nothing reported removed) and puts
  the reason in ``errors``; with no good read yet (agent start), whatever it read is used;
- an *unsettled* read (an upgrade in progress) is held back for up to ``settle_max_s`` while
  the database keeps changing, and accepted after that (a package stuck half-installed is real);
- removals are confirmed with the reader (dpkg: a removed package has no file list left);
- a vanished OS database keeps its last read (an error); a vanished language tree is removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from heron.agent.packages import DbRead, Reader, ScopeEnv, os_info, usr_merge_normalizer
from heron.agent.packages.apk import ApkReader
from heron.agent.packages.dpkg import DpkgReader
from heron.agent.packages.npm import NpmReader, global_trees
from heron.agent.packages.python import PythonSiteReader, standard_site_dirs
from heron.agent.packages.rootfs import RootFS
from heron.agent.packages.rpm import RpmReader
from heron.schema.events import Package, PackageInventory

SOURCE = "package.procfs"
OS_MANAGERS = frozenset({"dpkg", "rpm", "apk"})
SETTLE_MAX_S = 300.0
MAX_PACKAGES = 200_000  # per database: far above any real system, bounds a hostile one
MAX_LANGUAGE_DBS = 256  # per scope: virtualenvs and node_modules trees of running processes
OWNER_CACHE_MAX = 50_000
_DELETED = " (deleted)"

Signature = tuple[tuple[int, int, int, int, int] | None, ...]


def _identity(p: Package) -> tuple[str, str]:
    return p.purl, p.location


@dataclass
class DbState:
    reader: Reader
    signature: Signature | None = None
    good: DbRead | None = None  # the last read trusted (or the first one)
    error: str = ""  # why the current on-disk state is not what ``good`` says
    pending: DbRead | None = None  # an unsettled read waiting to be accepted
    unsettled_since: float | None = None
    reads: int = 0


@dataclass
class Change:
    """What one check found in a scope."""

    added: list[Package] = field(default_factory=list)
    removed: list[Package] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class Scope:
    def __init__(self, name: str, root: str, container_id: str | None = None, languages: bool = True,
                 clock: Callable[[], float] = time.monotonic, settle_max_s: float = SETTLE_MAX_S,
                 os_readers: list[Reader] | None = None) -> None:
        self.name = name
        self.container_id = container_id
        self.root = root
        self.languages = languages
        self.clock = clock
        self.settle_max_s = settle_max_s
        self.fs = RootFS(root)
        self.os = os_info(self.fs)
        self.env = ScopeEnv(self.fs, self.os, usr_merge_normalizer(self.fs), os_owned=self.os_owned)
        self.dbs: dict[str, DbState] = {}
        readers: list[Reader] = os_readers if os_readers is not None else [DpkgReader(), RpmReader(), ApkReader()]
        for r in readers:
            self.dbs[r.key] = DbState(r)
        if languages:
            for site in standard_site_dirs(self.fs):
                self._add_reader(PythonSiteReader(site))
            for tree in global_trees(self.fs):
                self._add_reader(NpmReader(tree))
        self._owner_cache: dict[str, Package | None] = {}
        self._reported_errors: list[str] = []
        self.generation = 0  # bumped whenever the inventory changes (ownership may have too)

    def close(self) -> None:
        self.fs.close()

    def _add_reader(self, reader: Reader) -> bool:
        if reader.key in self.dbs:
            return False
        self.dbs[reader.key] = DbState(reader)
        return True

    # -- reading ---------------------------------------------------------------------------
    def signature(self, reader: Reader) -> Signature:
        out: list[tuple[int, int, int, int, int] | None] = []
        for path in reader.watch():
            st = self.fs.stat(path)
            out.append(None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

    def _read(self, st: DbState) -> DbRead:
        st.signature = self.signature(st.reader)  # before the read: a change during it is seen next time
        st.reads += 1
        return st.reader.read(self.env)

    def load(self) -> list[Package]:
        """Read every database (OS ones first: language readers skip what they own)."""
        for st in self._ordered():
            self._apply(st, self._read(st))
        return self.packages()

    def _ordered(self) -> list[DbState]:
        return sorted(self.dbs.values(), key=lambda s: s.reader.manager not in OS_MANAGERS)

    def check(self) -> Change:
        """Re-read the databases whose files changed; accept unsettled reads that waited long enough."""
        change = Change()
        for st in self._ordered():
            if st.signature != self.signature(st.reader):
                self._merge(change, self._apply(st, self._read(st)))
            elif st.pending is not None and self._settled_enough(st):
                self._merge(change, self._apply(st, st.pending))
        return change

    def observe(self, site_dirs: list[str], trees: list[str]) -> Change:
        """Language databases running processes use: new ones are read now."""
        change = Change()
        if not self.languages:
            return change
        readers: list[Reader] = [PythonSiteReader(d) for d in site_dirs]
        readers += [NpmReader(t) for t in trees]
        for r in readers:
            if len(self.dbs) >= MAX_LANGUAGE_DBS + 3:
                break
            if self._add_reader(r):
                self._merge(change, self._apply(self.dbs[r.key], self._read(self.dbs[r.key])))
        return change

    @staticmethod
    def _merge(into: Change, c: Change) -> None:
        into.added += c.added
        into.removed += c.removed

    def _settled_enough(self, st: DbState) -> bool:
        return st.unsettled_since is not None and self.clock() - st.unsettled_since >= self.settle_max_s

    def _apply(self, st: DbState, new: DbRead) -> Change:
        manager = st.reader.manager
        if len(new.packages) > MAX_PACKAGES:
            new = DbRead(packages=new.packages[:MAX_PACKAGES], owners=new.owners,
                         error=f"{manager}: more than {MAX_PACKAGES} packages, the rest skipped")
        old = st.good.packages if st.good is not None else []
        if new.absent:
            if manager in OS_MANAGERS and old:
                st.error = f"{manager}: the database disappeared; keeping its last inventory"
                return Change()
            new = DbRead()  # a language tree that went away: its packages are gone
        if new.error:
            st.error = new.error
            st.pending = None
            if st.good is not None:
                return Change()
            return self._accept(st, new, keep_error=True)  # nothing better yet: what we could read
        if new.unsettled:
            if st.good is None:
                st.error = new.unsettled
                return self._accept(st, new, keep_error=True)
            if st.unsettled_since is None:
                st.unsettled_since = self.clock()
            if not self._settled_enough(st):
                st.pending = new
                st.error = f"{new.unsettled}; keeping the last inventory"
                return Change()
        names_before = {(p.name, p.arch) for p in old if p.manager in OS_MANAGERS}
        names_after = {(p.name, p.arch) for p in new.packages}
        gone = names_before - names_after
        if gone:
            why = st.reader.confirm_removed(self.env, gone)
            if why:
                st.error = why
                st.pending = None
                return Change()
        keep_error = bool(new.unsettled)
        if keep_error:
            st.error = f"{new.unsettled} (accepted after {self.settle_max_s:.0f} s)"
        return self._accept(st, new, keep_error=keep_error)

    def _accept(self, st: DbState, new: DbRead, keep_error: bool) -> Change:
        old = {_identity(p): p for p in st.good.packages} if st.good is not None else {}
        cur = {_identity(p): p for p in new.packages}
        change = Change(added=[p for k, p in cur.items() if k not in old],
                        removed=[p for k, p in old.items() if k not in cur])
        st.good = new
        st.pending = None
        st.unsettled_since = None
        if not keep_error:
            st.error = ""
        self._owner_cache.clear()
        if change:
            self.generation += 1
        return change

    # -- views -------------------------------------------------------------------------------
    def packages(self) -> list[Package]:
        out: list[Package] = []
        for st in self._ordered():
            if st.good is not None:
                out += st.good.packages
        return out

    def errors(self) -> list[str]:
        return [st.error for st in self.dbs.values() if st.error]

    def errors_changed(self) -> bool:
        """True once per change of the error list (so an unchanged error is not re-sent)."""
        now = self.errors()
        if now == self._reported_errors:
            return False
        self._reported_errors = now
        return True

    def full_event(self, ts: int | None = None) -> PackageInventory:
        self._reported_errors = self.errors()
        return PackageInventory(ts=ts or time.time_ns(), source=SOURCE, scope=self.name,
                                container_id=self.container_id, distro=self.os.label, full=True,
                                added=self.packages(), errors=self._reported_errors[:1000])

    def diff_event(self, change: Change, ts: int | None = None) -> PackageInventory | None:
        """The record for a change (or for a changed error list); None when there is nothing to say."""
        if not change and not self.errors_changed():
            return None
        self._reported_errors = self.errors()
        return PackageInventory(ts=ts or time.time_ns(), source=SOURCE, scope=self.name,
                                container_id=self.container_id, distro=self.os.label, full=False,
                                added=change.added, removed=change.removed, errors=self._reported_errors[:1000])

    # -- ownership ---------------------------------------------------------------------------
    def owner(self, path: str) -> Package | None:
        """The package owning a file, ``path`` as the kernel names it for this scope's processes
        (/proc/PID/maps, /proc/PID/exe; a " (deleted)" suffix is ignored)."""
        hit = self._owner_cache.get(path)
        if hit is not None or path in self._owner_cache:
            return hit
        plain = path.removesuffix(_DELETED)
        found: Package | None = None
        for st in self.dbs.values():
            good = st.good
            if good is None or good.owners is None:
                continue
            idx = good.owners.owner(plain)
            if idx is not None and idx < len(good.packages):
                found = good.packages[idx]
                break
        if len(self._owner_cache) >= OWNER_CACHE_MAX:
            self._owner_cache.clear()
        self._owner_cache[path] = found
        return found

    def os_owned(self, path: str) -> bool:
        norm = self.env.norm(path)
        for st in self.dbs.values():
            if st.reader.manager in OS_MANAGERS and st.good is not None and st.good.owners is not None \
                    and st.good.owners.owner(norm) is not None:
                return True
        return False


def read_scope(root: str = "/", languages: bool = True) -> tuple[list[Package], list[str]]:
    """Every package of one root path, and the databases that could not be read as a whole."""
    scope = Scope("host" if os.path.realpath(root) == "/" else root, root, languages=languages)
    try:
        return scope.load(), scope.errors()
    finally:
        scope.close()
