"""File changes from fanotify in FID mode: the first rung of the file ladder; names the writer's pid.

One notification group (FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME, plus FID and TARGET_FID where the
kernel has them), a bounded kernel queue: on overflow (FAN_Q_OVERFLOW, counted as ``overflows``)
the policy roots are rescanned, so a change is reported late and without its writer rather than
lost. The queue is not unlimited on purpose: FAN_UNLIMITED_QUEUE would let a storm pin kernel
memory without bound.

Marks (``ctx.options["fanotify_marks"]``):
- ``"inode"`` (default): one inode mark per watched directory (FAN_EVENT_ON_CHILD), placed by
  walking the policy like inotify does; new directories are marked when their creation is read,
  and their content listed to close the race (``common.close_race``). Each mark's handle is
  remembered (name_to_handle_at) so records resolve from the cache, also on overlayfs whose
  handles cannot be opened. Cost grows with the size of the policy, not with unrelated activity:
  events come only from watched directories. Measured here (bench/file_storm.py --marks): the
  default policy is ~7,600 directories (/usr/lib dominates), 0.2-0.4 s to place (0.8 s inside the
  agent), ~0.7 MB of kernel slab for the marks, and each mark keeps its directory's inode and
  dentry in memory (~1 KiB each); 20,000 operations elsewhere on the filesystem cost nothing.
- ``"filesystem"``: one FAN_MARK_FILESYSTEM mark per filesystem holding a root. Nothing to walk,
  no race for new directories, renames from anywhere on the filesystem have both names; but every
  change on those filesystems (logs, databases, package caches) is queued, read and thrown away
  here unless the policy covers it: 20,000 unrelated operations were 16,000 events read and
  0.004 CPU-s per 1,000 operations, and the cost follows the whole filesystem's write rate (and
  a busy filesystem overflows the queue, which costs a rescan). Hence inode marks by default.

FAN_RENAME (5.17+) reports a rename as one event with both names; on older kernels
FAN_MOVED_FROM/TO carry no cookie, so they are paired per process within one read (best effort:
the kernel may merge a move into an earlier event for the same name); an unpaired "from" is a
move out of view, an unpaired "to" a move in (``old_path`` absent).

What fanotify cannot say: the writer's uid (the enricher fills user, exe, container and
package manager from the process table; nothing is read from /proc per event), and writes through
a shared writable mmap (only the close is seen). Marks are on inodes, so a change made through
another mount of the same filesystem (a bind mount, a container volume) is seen and reported under
the watched path. Overlayfs (a container's root): marks on the merged directories see changes made
through the overlay, under the merged path (tested); marks on the host filesystem holding the
upper directory see the same writes as changes in the upper directory (a copy-up is a create
there), with the container process's pid. A path longer than PATH_MAX cannot be marked or
resolved (counted in ``walk_errors``/``unresolved``); the scan, which walks by descriptor, covers it.

Options: ``fanotify_marks`` ("inode" | "filesystem"), ``fanotify_rename`` (bool, default True:
use FAN_RENAME when the kernel has it; False exercises the FROM/TO pairing).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux import fanotify as fan
from heron.agent.linux.caps import effective_mask
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.file.common import FileCore, drain_queue, entry_path, iter_watch_dirs, watch_plan
from heron.schema.events import Process

log = logging.getLogger(__name__)

NAME = "file.fanotify"
POLL_TIMEOUT_S = 0.25
# After a drain, let events gather this long: fewer wake-ups, more merging in the kernel.
MIN_CYCLE_S = 0.01
_CAP_DAC_READ_SEARCH = 2
_CAP_SYS_ADMIN = 21
_RELEVANCE_MAX = 65_536

BASE_MASK = (fan.FAN_CREATE | fan.FAN_DELETE | fan.FAN_ATTRIB | fan.FAN_CLOSE_WRITE | fan.FAN_MODIFY
             | fan.FAN_DELETE_SELF | fan.FAN_ONDIR)
MOVE_MASK = fan.FAN_MOVED_FROM | fan.FAN_MOVED_TO
FAN_OPEN = 0x20  # on the few files a rule asks reads of (their own inode marks)


# Action names of an event's bits, in the order assumed when the kernel merged several (it keeps
# no order): create, modify, attrib, delete. Cached per bit combination.
_ACTION_BITS = (fan.FAN_CREATE | fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE | fan.FAN_ATTRIB | fan.FAN_DELETE
                | fan.FAN_DELETE_SELF)
_ACTIONS: dict[int, tuple[str, ...]] = {}


def _actions_of(bits: int) -> tuple[str, ...]:
    out: list[str] = []
    if bits & fan.FAN_CREATE:
        out.append("create")
    if bits & (fan.FAN_MODIFY | fan.FAN_CLOSE_WRITE):
        out.append("modify")
    if bits & fan.FAN_ATTRIB:
        out.append("attrib")
    if bits & (fan.FAN_DELETE | fan.FAN_DELETE_SELF):
        out.append("delete")
    return tuple(out)


class FanotifyFileSource:
    capability: ClassVar[str] = "file"
    mechanism: ClassVar[str] = "fanotify"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        caps = effective_mask()
        if not caps >> _CAP_SYS_ADMIN & 1:
            return ProbeResult.no("needs CAP_SYS_ADMIN (fanotify with file handles)")
        if not caps >> _CAP_DAC_READ_SEARCH & 1:
            return ProbeResult.no("needs CAP_DAC_READ_SEARCH (open_by_handle_at)")
        why = fan.try_init(fan.FAN_CLASS_NOTIF | fan.FAN_REPORT_DFID_NAME)
        if why:
            return ProbeResult.no(f"fanotify_init with FAN_REPORT_DFID_NAME failed ({why}; needs Linux 5.9+)")
        return ProbeResult.yes("fanotify FID mode: every change with the writing process's pid")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = NAME
        self.core = FileCore(ctx, self.mechanism)
        marks = str(ctx.options.get("fanotify_marks", "inode"))
        if marks not in ("inode", "filesystem"):
            raise ValueError(f"fanotify_marks must be 'inode' or 'filesystem', not {marks!r}")
        self.filesystem_marks = marks == "filesystem"
        self.want_rename = bool(ctx.options.get("fanotify_rename", True))
        self.group: fan.Fanotify | None = None
        self.resolver = fan.HandleResolver()
        self.use_rename = False
        self.dir_mask = 0
        self.me = os.getpid()
        self.marked = 0
        self._relevant: dict[bytes, bool] = {}  # dir handle -> may an entry in it be covered?
        self._fsids: dict[int, bytes] = {}  # st_dev -> fsid of the filesystems with marks
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Creates the group and places the marks (idempotent): called from snapshot() so that the
        watches exist before the agent reports itself running."""
        with self._lock:
            if self.group is not None:
                return
            flags = fan.supported_init_flags()
            if not flags:
                raise OSError("fanotify FID mode unavailable")
            group = fan.Fanotify(fan.FAN_CLASS_NOTIF | flags)
            try:
                self.core.open()
                self.use_rename = self.want_rename and fan.rename_supported(group, b"/")
                mask = BASE_MASK | (fan.FAN_RENAME if self.use_rename else MOVE_MASK)
                self.dir_mask = mask | fan.FAN_EVENT_ON_CHILD
                t0 = time.monotonic()
                self._place_marks(group, mask)
                self.ctx.health.set(f"{self.name}.marks", self.marked)
                self.ctx.health.set(f"{self.name}.mark_ms", int((time.monotonic() - t0) * 1000))
            except BaseException:
                group.close()
                self.core.close()
                raise
            self.group = group

    def _place_marks(self, group: fan.Fanotify, mask: int) -> None:
        plan, missing = watch_plan(self.core.policy)
        for root in missing:
            self.core.count("roots_missing")
            log.debug("%s: policy root %r missing; watching its parent for it", self.name, root)
        for root, recursive in plan:
            try:
                dev = os.lstat(root).st_dev
                if dev not in self._fsids:
                    self._fsids[dev] = self.resolver.add_filesystem(root)
                    if self.filesystem_marks:
                        group.mark(root, mask, fan.FAN_MARK_FILESYSTEM)
                        self.marked += 1
            except OSError as e:
                self._mark_failed(root, e)
                continue
            if not self.filesystem_marks:
                self._mark_tree(group, root, recursive)
        for path in self.core.policy.read_paths():
            try:
                group.mark(path, FAN_OPEN, fan.FAN_MARK_DONT_FOLLOW)
            except OSError as e:
                self._mark_failed(path, e)
                continue
            self.marked += 1
            self.core.count("read_marks")

    def _fsid(self, path: bytes) -> bytes | None:
        try:
            dev = os.lstat(path).st_dev
            fsid = self._fsids.get(dev)
            if fsid is None:
                fsid = self._fsids[dev] = self.resolver.add_filesystem(path)
        except OSError:
            return None
        return fsid

    def _mark_tree(self, group: fan.Fanotify, root: bytes, recursive: bool,
                   known: set[bytes] | None = None, fresh: list[bytes] | None = None) -> list[bytes]:
        """Marks root (and the covered directories below it) and remembers each one's handle: the
        records then resolve from the cache, also where handles cannot be opened (overlayfs).
        With ``known`` (handles marked before), the directories not among them go to ``fresh``."""
        done: list[bytes] = []
        errors = [0]
        fsid = self._fsid(root)
        remember = self.resolver.remember
        for d in iter_watch_dirs(root, recursive, self.core.policy, errors=errors):
            try:
                group.mark(d, self.dir_mask, fan.FAN_MARK_ONLYDIR | fan.FAN_MARK_DONT_FOLLOW)
            except OSError as e:
                self._mark_failed(d, e)
                continue
            done.append(d)
            if fsid is not None:
                try:
                    key = fan.file_handle(d, fsid)
                except OSError:
                    self.core.count("handle_errors")
                    key = None
                if key is not None:
                    remember(key, d)
                if fresh is not None and known is not None and key not in known:
                    fresh.append(d)
        self.marked += len(done)
        self.resolver.max_entries = max(self.resolver.max_entries, 2 * self.marked)
        if errors[0]:
            self.core.count("walk_errors", errors[0])
        return done

    def _mark_failed(self, path: bytes, e: OSError) -> None:
        self.core.count("mark_errors")
        if self.ctx.health.get(f"{self.name}.mark_errors") <= 3:
            self.ctx.health.note(f"{self.name}: cannot watch {path!r}: {e}")

    def snapshot(self) -> list[Process]:
        self.start()
        return []

    def close(self) -> None:
        with self._lock:
            group, self.group = self.group, None
        if group is not None:
            group.close()
        self.resolver.close()
        self.core.close()

    def run(self, stop: threading.Event) -> None:
        self.start()
        group = self.group
        assert group is not None
        try:
            self.core.start_threads(stop)
            poller = select.poll()
            poller.register(group.fd, select.POLLIN)
            while not stop.is_set():
                due = self.core.next_due_in(time.monotonic_ns())
                timeout = POLL_TIMEOUT_S if due is None else min(POLL_TIMEOUT_S, due)
                if poller.poll(int(timeout * 1000) + 1) and self.read_once() and not stop.is_set():
                    stop.wait(MIN_CYCLE_S)
                self.core.pump(time.monotonic_ns())
            self.read_once()
        finally:
            try:
                self.core.finish()
            finally:
                self.close()

    # -- the hot path ----------------------------------------------------------------------
    def read_once(self) -> int:
        """Reads what the queue holds (bounded per cycle) and feeds it to the core."""
        src = self.group
        if src is None:
            return 0
        return drain_queue(src.read, fan.parse_events, self.handle, self.core)

    def _dir(self, key: bytes) -> bytes | None:
        return self.resolver.path(key)

    def _relevant_dir(self, key: bytes, path: bytes) -> bool:
        r = self._relevant.get(key)
        if r is None:
            pol = self.core.policy
            r = pol.covers_dir(path) or pol.match(path) is not None
            if len(self._relevant) >= _RELEVANCE_MAX:
                self._relevant.clear()
            self._relevant[key] = r
        return r

    def handle(self, events: list[fan.RawEvent], ts: int, mono: int) -> None:
        core = self.core
        add = core.add
        new_dirs: list[bytes] = []
        froms: dict[int, list[tuple[bytes | None, bool]]] = {}
        unresolved = own = early = 0
        for ev in events:
            mask = ev.mask
            if mask & fan.FAN_Q_OVERFLOW:
                core.count("overflows")
                core.request_rescan()
                self._repair(mono)
                continue
            if ev.pid == self.me:
                own += 1
                continue
            is_dir = bool(mask & fan.FAN_ONDIR)
            if mask & fan.FAN_RENAME:
                self._rename(ev, ts, mono, new_dirs)
                continue
            key = ev.dir if ev.dir is not None else ev.fid
            d = self._dir(key) if key is not None else None
            if key is None or d is None:
                unresolved += 1
                continue
            if not self._relevant_dir(key, d):
                early += 1
                continue
            path = entry_path(d, ev.name or b"") if ev.dir is not None else d
            if mask & FAN_OPEN and not is_dir:
                core.add_read(path, ts, mono, ev.pid)
                if not mask & ~FAN_OPEN & ~fan.FAN_ONDIR:
                    continue
            if mask & MOVE_MASK:
                if mask & fan.FAN_MOVED_TO:
                    src = froms.get(ev.pid)
                    old = src.pop(0)[0] if src else None
                    self._moved(old, path, is_dir, ev.pid, ts, mono, new_dirs)
                if mask & fan.FAN_MOVED_FROM:
                    froms.setdefault(ev.pid, []).append((path, is_dir))
            if not core.wanted(path):
                if is_dir and mask & fan.FAN_CREATE and core.policy.covers_dir(path):
                    new_dirs.append(path)
                early += 1
                continue
            acts = _ACTIONS.get(mask & _ACTION_BITS)
            if acts is None:
                acts = _ACTIONS[mask & _ACTION_BITS] = _actions_of(mask & _ACTION_BITS)
            if acts:
                add(path, acts, ts, mono, ev.pid, is_dir)
                if "create" in acts and not is_dir:
                    self._mark_read(path)
            if is_dir and mask & fan.FAN_CREATE and not self.filesystem_marks and core.policy.covers_dir(path):
                new_dirs.append(path)
            if mask & fan.FAN_DELETE_SELF or (is_dir and mask & fan.FAN_DELETE):
                self.resolver.forget_path(path)
        for pid, left in froms.items():  # moved out of view (fallback pairing only)
            for old, is_dir in left:
                if old is not None and core.wanted(old):
                    add(old, "moved_out", ts, mono, pid, is_dir)
        if unresolved:
            core.count("unresolved", unresolved)
        if own:
            core.count("own", own)
        if early:
            core.count("filtered", early)
        if new_dirs and not self.filesystem_marks:
            self._watch_new(new_dirs, mono)

    def _rename(self, ev: fan.RawEvent, ts: int, mono: int, new_dirs: list[bytes]) -> None:
        newd = self._dir(ev.dir) if ev.dir is not None else None
        oldd = self._dir(ev.old_dir) if ev.old_dir is not None else None
        new = entry_path(newd, ev.name) if newd is not None and ev.name else None
        old = entry_path(oldd, ev.old_name) if oldd is not None and ev.old_name else None
        if new is None and old is None:
            self.core.count("unresolved")
            return
        self._moved(old, new, bool(ev.mask & fan.FAN_ONDIR), ev.pid, ts, mono, new_dirs)

    def _moved(self, old: bytes | None, new: bytes | None, is_dir: bool, pid: int, ts: int, mono: int,
               new_dirs: list[bytes]) -> None:
        core = self.core
        if is_dir:
            self._relevant.clear()
            if old is not None and new is not None:
                self.resolver.moved(old, new)
            elif old is not None:
                self.resolver.forget_path(old)
        want_old = old is not None and core.wanted(old)
        if new is not None and core.wanted(new, old):
            core.add(new, "rename", ts, mono, pid, is_dir, old)
        if new is not None and not is_dir:
            self._mark_read(new)
        elif old is not None and want_old:
            core.add(old, "moved_out", ts, mono, pid, is_dir)
        if (is_dir and new is not None and not self.filesystem_marks and core.policy.covers_dir(new)
                and not (old is not None and core.policy.covers_dir(old))):
            new_dirs.append(new)  # moved in from outside the watched tree: watch it, list it

    def _mark_read(self, path: bytes) -> None:
        """A file created or renamed onto a read-watched path is a new inode (useradd and passwd
        replace /etc/shadow by rename): the old inode's mark went with it, so mark the new one."""
        group = self.group
        if group is None or not self.core.policy.read_rules or self.core.policy.match_read(path) is None:
            return
        try:
            group.mark(path, FAN_OPEN, fan.FAN_MARK_DONT_FOLLOW)
        except OSError as e:
            self._mark_failed(path, e)
            return
        self.core.count("read_marks")

    def _repair(self, mono: int) -> None:
        """After a queue overflow: renames and new directories may have been lost. Cached paths and
        relevance are dropped (handles resolve afresh), the watch plan is walked again (marking is
        idempotent; each mark's handle is remembered under its current path) and the directories
        not marked before are listed like any new directory (``close_race``)."""
        self._relevant.clear()
        known = set(self.resolver.cache)
        self.resolver.cache.clear()
        group = self.group
        if group is None or self.filesystem_marks:
            return
        plan, _ = watch_plan(self.core.policy)
        before, self.marked = self.marked, 0
        fresh: list[bytes] = []
        for root, recursive in plan:
            self._mark_tree(group, root, recursive, known, fresh)
        self.marked = max(self.marked, before)  # marks on directories gone since stay until the kernel drops them
        self.ctx.health.set(f"{self.name}.marks", self.marked)
        self.core.close_race(fresh, mono)

    def _watch_new(self, directories: list[bytes], mono: int) -> None:
        group = self.group
        if group is None:
            return
        marked: list[bytes] = []
        for d in directories:
            marked += self._mark_tree(group, d, True)
        self.ctx.health.set(f"{self.name}.marks", self.marked)
        self.core.close_race(marked, mono)
